"""``spend-ledger limits``: the models' TPM/RPM capacities (set, or imported from a LiteLLM
proxy config), the priority reservation and a key's priority on the running api
(DESIGN section 10)."""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ledger.cli.admission import AnswerJson, ModelArgument, call_api, not_applied
from ledger.cli.common import console, fail
from ledger.cli.remote import KeyOption, UrlOption, api_failure, open_client, print_json

if TYPE_CHECKING:
    from ledger.client import RateLimitsInfo
    from ledger.integrations.litellm_config import ConfigCapacities, ModelCapacity

limits_app = typer.Typer(
    help="Models' TPM/RPM capacities, the priority reservation and key priorities on the running api.",
    no_args_is_help=True,
)


@limits_app.command("set")
def limits_set(
    model: ModelArgument,
    tpm: Annotated[int | None, typer.Option(help="tokens a minute, shared by the keys that call it", min=1)] = None,
    rpm: Annotated[int | None, typer.Option(help="requests a minute, shared by the keys that call it", min=1)] = None,
    url: UrlOption = None,
    key: KeyOption = None,
    as_json: AnswerJson = False,
) -> None:
    """Set a model's TPM/RPM capacity, across all its deployments.

    Replaces both: a limit not given is removed (the model has no such limit).
    """
    if tpm is None and rpm is None:
        raise fail("give --tpm, --rpm or both (`spend-ledger limits delete MODEL` removes a model's limits)")
    written = call_api(url, key, lambda client: client.set_model_limits(model, tpm=tpm, rpm=rpm))
    if as_json:
        print_json(written.model_dump(mode="json"))
        return
    console.print(f"set {escape(written.model)}: {_capacity_text(written.tpm, written.rpm)}")
    if not written.applied:
        not_applied()


@limits_app.command("show")
def limits_show(url: UrlOption = None, key: KeyOption = None, as_json: AnswerJson = False) -> None:
    """Every model's TPM/RPM capacity, the priority reservation, the saturation threshold and key priorities."""
    info = call_api(url, key, lambda client: client.rate_limits())
    if as_json:
        print_json(info.model_dump(mode="json"))
        return
    _show_rate_limits(info)


@limits_app.command("delete")
def limits_delete(
    model: ModelArgument, url: UrlOption = None, key: KeyOption = None, as_json: AnswerJson = False
) -> None:
    """Remove a model's TPM/RPM capacity: its calls are no longer rate limited."""
    written = call_api(url, key, lambda client: client.delete_model_limits(model))
    if as_json:
        print_json(written.model_dump(mode="json"))
        return
    console.print(f"removed the TPM/RPM limits of {escape(written.model)}")
    if not written.applied:
        not_applied()


@limits_app.command("import")
def limits_import(
    config: Annotated[
        Path,
        typer.Argument(metavar="CONFIG", help="a LiteLLM proxy config.yaml (its model_list)", show_default=False),
    ],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only print what would be set")] = False,
    url: UrlOption = None,
    key: KeyOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print what was (or would be) set as JSON")] = False,
) -> None:
    """Set each model's TPM/RPM from a LiteLLM proxy config: its deployments' capacities add up.

    A deployment's tpm/rpm is read where LiteLLM's router reads it (the model_list entry, its
    litellm_params, its model_info). A model_name that is an alias (team-gpt for gpt-4o) has
    its deployments' models recorded too, so admits naming it are priced as them. A
    model_name with neither is not imported; models absent from the config keep their limits.
    """
    capacities = _read_config(config)
    done: list[tuple[ModelCapacity, bool]] = []
    if not dry_run:
        from ledger.client import LedgerClientError

        try:
            with open_client(url, key) as client:
                for model in capacities.to_import:
                    written = client.set_model_limits(
                        model.model_name, tpm=model.tpm, rpm=model.rpm, models=model.alias_models
                    )
                    done.append((model, written.applied))
        except LedgerClientError as exc:
            if done and not as_json:
                console.print(_import_table(capacities, done, dry_run, f"{config}: set before the error"))
            raise api_failure(exc) from exc
    if as_json:
        applied = {model.model_name: was_applied for model, was_applied in done}
        print_json(
            {
                "config": str(config),
                "dry_run": dry_run,
                "models": [
                    {
                        "model": model.model_name,
                        "tpm": model.tpm,
                        "rpm": model.rpm,
                        "models": model.alias_models,
                        "deployments": model.deployments,
                        "set": model.model_name in applied,
                        "applied": applied.get(model.model_name, False),
                    }
                    for model in capacities.to_import
                ],
                "without_limits": list(capacities.without_limits),
            }
        )
        return
    if not capacities.models:
        console.print(f"{escape(str(config))}: model_list has no models; nothing to import")
        return
    console.print(_import_table(capacities, done, dry_run, str(config)))
    count = len(capacities.to_import)
    models = f"{count} model{'' if count == 1 else 's'}"
    if dry_run:
        console.print(f"dry run: would set {models}; nothing was sent")
    else:
        console.print(f"set the limits of {models}")
        if not all(applied for _, applied in done):
            not_applied()


@limits_app.command("reservation")
def limits_reservation(
    reservation: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="RESERVATION",
            help='LiteLLM\'s JSON, e.g. \'{"dev": 0, "prod": 1}\', or PRIORITY=FRACTION pairs: dev=0 prod=1',
            show_default=False,
        ),
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="back to the api's priority_reservation setting")] = False,
    url: UrlOption = None,
    key: KeyOption = None,
    as_json: AnswerJson = False,
) -> None:
    """Set the priority reservation: the fraction of every model's TPM/RPM each priority's keys share.

    Without arguments, print the one in force. A key without a priority weighs 1.
    """
    if clear and reservation:
        raise fail("give a reservation or --clear, not both")
    if not clear and not reservation:
        current = call_api(url, key, lambda client: client.rate_limits())
        if as_json:
            print_json({"priority_reservation": current.priority_reservation})
        else:
            console.print(f"priority reservation: {_reservation_text(current.priority_reservation)}")
        return
    fractions = None if clear else _parsed_reservation(reservation or [])
    answer = call_api(url, key, lambda client: client.set_priority_reservation(fractions))
    if as_json:
        print_json(answer)
        return
    console.print(f"priority reservation: {_reservation_text(answer.get('priority_reservation') or {})}")
    if not answer.get("applied", True):
        not_applied()


@limits_app.command("key-priority")
def limits_key_priority(
    key_id: Annotated[
        str, typer.Argument(metavar="KEY", help="the API key id (as admits name it)", show_default=False)
    ],
    priority: Annotated[
        str, typer.Argument(metavar="PRIORITY", help="a priority of the reservation, e.g. prod", show_default=False)
    ],
    url: UrlOption = None,
    key: KeyOption = None,
    as_json: AnswerJson = False,
) -> None:
    """Set the priority a key's calls have when an admit names none (its budgets stay)."""
    answer = call_api(url, key, lambda client: client.set_key_priority(key_id, priority))
    if as_json:
        print_json(answer)
        return
    console.print(f"key {escape(key_id)} calls with priority {escape(priority)} when an admit names none")
    if not answer.get("applied", True):
        not_applied()


def _read_config(config: Path) -> ConfigCapacities:
    """The config's capacities; its ``include`` files are read from its folder."""
    try:
        from ledger.integrations.litellm_config import LiteLLMConfigError, model_capacities
    except ImportError as exc:  # PyYAML
        raise fail(f"reading a LiteLLM config needs PyYAML ({exc}): pip install pyyaml") from exc

    def read_include(name: str) -> str:
        try:
            return (config.parent / name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise LiteLLMConfigError("include", f"cannot read {name!r}: {exc}") from exc

    try:
        return model_capacities(config.read_text(encoding="utf-8"), read_include)
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"cannot read {escape(str(config))}: {escape(str(exc))}") from exc
    except LiteLLMConfigError as exc:
        raise fail(f"{escape(str(config))}: {escape(str(exc))}") from exc


def _import_table(
    capacities: ConfigCapacities, done: list[tuple[ModelCapacity, bool]], dry_run: bool, title: str
) -> Table:
    table = Table(title=title, caption="capacities a minute, each model_name's deployments added up")
    for column in ("model", "tpm", "rpm", "priced as", "deployments", "status"):
        table.add_column(column, justify="right" if column in ("tpm", "rpm", "deployments") else "left")
    set_now = {model.model_name for model, _ in done}
    for model in capacities.models:
        if not model.has_limits and not model.is_alias:
            status = "no limits (not imported)"
        elif dry_run:
            status = "would set"
        else:
            status = "set" if model.model_name in set_now else "not set"
        table.add_row(
            model.model_name,
            "-" if model.tpm is None else str(model.tpm),
            "-" if model.rpm is None else str(model.rpm),
            escape(", ".join(model.alias_models or ())) or "itself",
            _deployments_text(model),
            status,
        )
    return table


def _deployments_text(model: ModelCapacity) -> str:
    """How many deployments, and which gave no capacity (LiteLLM counts them as adding nothing)."""
    gaps = [
        f"{dimension} from {count}"
        for dimension, count, total in (
            ("tpm", model.tpm_deployments, model.tpm),
            ("rpm", model.rpm_deployments, model.rpm),
        )
        if total is not None and count < model.deployments
    ]
    return str(model.deployments) + (f" ({', '.join(gaps)})" if gaps else "")


def _show_rate_limits(info: RateLimitsInfo) -> None:
    if info.models:
        table = Table(title="Model capacities", caption="a minute, shared by the keys active in it")
        for column in ("model", "tpm", "rpm", "priced as"):
            table.add_column(column, justify="right" if column in ("tpm", "rpm") else "left")
        for model in info.models:
            table.add_row(
                model.model,
                "-" if model.tpm is None else str(model.tpm),
                "-" if model.rpm is None else str(model.rpm),
                escape(", ".join(model.models or ())) or "itself",
            )
        console.print(table)
    else:
        console.print("no model has TPM/RPM limits")
    console.print(f"priority reservation: {_reservation_text(info.priority_reservation)}")
    console.print(
        f"saturation: {info.saturation:g} (below it a key may borrow unused capacity; at or above, shares are strict)"
    )
    if info.key_priorities:
        keys = Table(title="Key priorities")
        keys.add_column("key")
        keys.add_column("priority")
        for key_id, priority in info.key_priorities.items():
            keys.add_row(key_id, priority)
        console.print(keys)


def _parsed_reservation(texts: list[str]) -> dict[str, str]:
    """``{"dev": 0, "prod": 1}`` or ``dev=0 prod=1``: each priority's fraction as exact text."""
    if len(texts) == 1 and texts[0].lstrip().startswith("{"):
        try:
            found = json.loads(texts[0], parse_float=Decimal, parse_int=Decimal)
        except json.JSONDecodeError as exc:
            raise fail(f"the reservation is not JSON: {escape(str(exc))}") from exc
        if not isinstance(found, dict) or not all(isinstance(value, Decimal) for value in found.values()):
            raise fail('the reservation maps each priority to a fraction, e.g. {"dev": 0, "prod": 1}')
        return {name: str(value) for name, value in found.items()}
    fractions: dict[str, str] = {}
    for text in texts:
        name, sep, value = text.partition("=")
        if not sep or not name:
            raise fail(f"{escape(text)!r}: expected PRIORITY=FRACTION, e.g. prod=1, or the JSON of LiteLLM")
        if name in fractions:
            raise fail(f"the reservation names {escape(name)!r} twice")
        try:
            fractions[name] = str(Decimal(value))
        except InvalidOperation as exc:
            raise fail(f"{escape(text)!r}: {escape(value)!r} is not a number from 0 to 1") from exc
    return fractions


def _reservation_text(reservation: dict[str, float]) -> str:
    if not reservation:
        return "none (every key weighs 1)"
    return ", ".join(f"{escape(name)} {value:g}" for name, value in reservation.items())


def _capacity_text(tpm: int | None, rpm: int | None) -> str:
    return f"{'no' if tpm is None else tpm} TPM, {'no' if rpm is None else rpm} RPM limit"
