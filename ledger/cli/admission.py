"""Admission from the shell (DESIGN section 10): ``admit`` holds a call's estimated cost and
rate share, ``release`` frees a hold, ``admissions`` lists the open ones, and ``limits``
sets the models' TPM/RPM capacities (or imports them from a LiteLLM proxy config), the
priority reservation and a key's priority on the running api.

``admit`` exits 0 admitted, 1 over budget (402, as ``check`` does), 3 rate limited (429),
2 on errors.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from ledger.cli.common import console, fail
from ledger.cli.remote import JsonFlag, KeyOption, UrlOption, api_failure, open_client, print_json, time_text, usd_text
from ledger.cli.usage import EXIT_OVER_BUDGET
from ledger.domain.scopes import InvalidScope, parse_scope_key

if TYPE_CHECKING:  # the client (httpx) loads only when a command runs
    from ledger.client import Admitted, BudgetRefused, HoldInfo, LedgerClient, RateLimited
    from ledger.client.admission_calls import ScopeRoomInfo

Answer = TypeVar("Answer")
EXIT_RATE_LIMITED = 3
HOLDS_LISTED_MAX = 10_000  # what the api lists at most
REQUEST_ID_PREFIX = "cli-"

ApiKeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        help="bearer key (default: SPEND_LEDGER_MASTER_KEY, else SPEND_LEDGER_INGEST_KEY)",
        show_default=False,
    ),
]
AnswerJson = Annotated[bool, typer.Option("--json", help="print the api's answer as JSON")]
ModelArgument = Annotated[
    str, typer.Argument(metavar="MODEL", help="the model name, as calls name it", show_default=False)
]


# -- admit, release, admissions -----------------------------------------------------------------


def admit(
    model: Annotated[str, typer.Option(help="the model the call uses", show_default=False)],
    user: Annotated[str | None, typer.Option(help="user id")] = None,
    team: Annotated[str | None, typer.Option(help="team id")] = None,
    key: Annotated[
        str | None, typer.Option("--key", help="API key id (the key scope and rate share; not the bearer key)")
    ] = None,
    end_user: Annotated[str | None, typer.Option("--end-user", help="end user id")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="a tag (repeatable)", show_default=False)] = None,
    priority: Annotated[
        str | None, typer.Option(help="the call's priority (default: the key's), a name in the priority reservation")
    ] = None,
    prompt_tokens: Annotated[
        int | None, typer.Option("--prompt-tokens", help="the prompt's tokens (or give --message)", min=0)
    ] = None,
    message: Annotated[
        list[str] | None,
        typer.Option(
            "--message", help="a user message of the prompt, counted in tokens (repeatable)", show_default=False
        ),
    ] = None,
    max_tokens: Annotated[
        int | None,
        typer.Option(
            "--max-tokens", help="the reply's token cap (default: the api's admission_default_max_tokens)", min=0
        ),
    ] = None,
    cost: Annotated[
        str | None, typer.Option(help="the call's estimated cost in USD, instead of pricing its tokens")
    ] = None,
    request_id: Annotated[
        str | None,
        typer.Option("--request-id", help="the id the call's usage event will carry (default: a new cli-<uuid>)"),
    ] = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Admit a call: hold its estimated cost on every scope and its share of the model's TPM/RPM.

    Exit 0 admitted, 1 over budget (402), 3 rate limited (429), 2 on errors. The usage event
    with the same id settles the hold; `spend-ledger release ID` frees it; else it expires.
    """
    from ledger.client import BudgetRefused, LedgerClientError, RateLimited

    if prompt_tokens is not None and message:
        raise fail("give --prompt-tokens or --message, not both")
    call: dict[str, Any] = {
        "user": user,
        "team": team,
        "key": key,
        "end_user": end_user,
        "tags": tag or (),
        "priority": priority,
        "prompt_tokens": prompt_tokens,
        "messages": None if not message else [{"role": "user", "content": text} for text in message],
        "max_tokens": max_tokens,
        "cost": cost,
    }
    chosen_id = request_id if request_id is not None else f"{REQUEST_ID_PREFIX}{uuid.uuid4().hex}"
    try:
        with open_client(url, api_key) as client:
            admitted = client.admit(chosen_id, model, **call)
    except BudgetRefused as exc:
        _show_budget_refusal(exc, as_json)
        raise typer.Exit(code=EXIT_OVER_BUDGET) from exc
    except RateLimited as exc:
        _show_rate_refusal(exc, as_json)
        raise typer.Exit(code=EXIT_RATE_LIMITED) from exc
    except LedgerClientError as exc:
        raise api_failure(exc) from exc
    except ValueError as exc:  # --cost that is not an exact USD amount
        raise fail(escape(str(exc))) from exc
    if as_json:
        print_json(admitted.model_dump(mode="json"))
        return
    _show_admitted(admitted)


def release(
    request_id: Annotated[str, typer.Argument(metavar="REQUEST_ID", help="the hold's request id", show_default=False)],
    url: UrlOption = None,
    key: KeyOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Release an open hold (the call failed or was not made): its estimate is freed at once."""
    hold = call_api(url, key, lambda client: client.release(request_id))
    if as_json:
        print_json(hold.model_dump(mode="json"))
        return
    console.print(
        f"released {escape(hold.request_id)}: {usd_text(hold.estimate_cost_nanos)} USD and"
        f" {hold.estimated_tokens} tokens no longer held on {escape(', '.join(hold.scope_keys))}"
    )


def admissions(
    scope: Annotated[
        str | None, typer.Option("--scope", help="only holds on this scope key, e.g. team:ml or key:key-1")
    ] = None,
    limit: Annotated[int, typer.Option(help="list at most this many", min=1, max=HOLDS_LISTED_MAX)] = 1_000,
    url: UrlOption = None,
    key: KeyOption = None,
    as_json: JsonFlag = False,
) -> None:
    """The open holds (admitted, not yet settled, released or expired), oldest first."""
    if scope is not None:
        try:
            parse_scope_key(scope)
        except InvalidScope as exc:
            raise fail(escape(str(exc))) from exc
    holds = call_api(url, key, lambda client: client.admissions(scope, limit))
    if as_json:
        print_json([hold.model_dump(mode="json") for hold in holds])
        return
    if not holds:
        console.print("no open holds" + (f" on {escape(scope)}" if scope else ""))
        return
    console.print(_holds_table(holds, f"{len(holds)} open holds" + (f" on {scope}" if scope else "")))


def _show_admitted(admitted: Admitted) -> None:
    again = " (already open: the same hold, answered again)" if admitted.repeated else ""
    console.print(
        f"[green]admitted[/green] {escape(admitted.request_id)} for {escape(admitted.model)}"
        f" (rate key {escape(admitted.rate_key or '-')}"
        + (f", priority {escape(admitted.priority)}" if admitted.priority else "")
        + f"){again}"
    )
    console.print(
        f"holds {usd_text(admitted.estimate_cost_nanos)} USD and {admitted.estimated_tokens} tokens"
        f" until {time_text(admitted.expires_at)} UTC"
    )
    if admitted.scopes:
        console.print(_rooms_table(admitted.scopes))
    rates = Table(title="Rate share this minute")
    for column in ("limit", "key's share", "key remaining", "model remaining", "active keys"):
        rates.add_column(column, justify="left" if column == "limit" else "right")
    for name, share in (("TPM", admitted.tpm), ("RPM", admitted.rpm)):
        if share is not None:
            rates.add_row(
                name, str(share.limit), str(share.remaining), str(share.model_remaining), str(share.active_keys)
            )
    if rates.row_count:
        console.print(rates)
    else:
        console.print(f"{escape(admitted.model)} has no TPM/RPM limits")
    console.print(
        "settle it with a usage event whose event_id is the request id,"
        f" or free it with `spend-ledger release {escape(admitted.request_id)}`"
    )


def _show_budget_refusal(refused: BudgetRefused, as_json: bool) -> None:
    if as_json:
        print_json({"admitted": False, "status": refused.status, **refused.detail})
        return
    console.print(f"[red]refused[/red] (over budget) by {escape(refused.scope or '?')}: {escape(refused.message)}")
    if refused.scopes:
        console.print(_rooms_table(refused.scopes))


def _show_rate_refusal(refused: RateLimited, as_json: bool) -> None:
    if as_json:
        print_json(
            {
                "admitted": False,
                "status": refused.status,
                "retry_after_s": refused.retry_after_s,
                "headers": refused.headers,
                **refused.detail,
            }
        )
        return
    console.print(f"[red]refused[/red] (rate limited): {escape(refused.message)}")
    console.print(f"retry after {refused.retry_after_s} s")


def _rooms_table(rooms: list[ScopeRoomInfo]) -> Table:
    table = Table(caption="amounts in USD; held: the open holds before this call; remaining: after its estimate")
    for column in ("scope", "spent", "held", "max", "remaining"):
        table.add_column(column, justify="left" if column == "scope" else "right", overflow="fold")
    for room in rooms:
        table.add_row(
            room.scope_key,
            usd_text(room.spend_nanos),
            usd_text(room.held_nanos),
            usd_text(room.max_budget_nanos),
            usd_text(room.remaining_budget_nanos, "no budget"),
        )
    return table


def _holds_table(holds: list[HoldInfo], title: str) -> Table:
    table = Table(title=title, caption="amounts in USD, times in UTC")
    for column in ("request id", "model", "rate key", "scopes", "estimate", "tokens", "expires at"):
        table.add_column(
            column,
            justify="right" if column in ("estimate", "tokens") else "left",
            overflow="fold",
            no_wrap=column in ("request id", "expires at"),
        )
    for hold in holds:
        table.add_row(
            hold.request_id,
            hold.model,
            (hold.rate_key or "-") + (f" ({hold.priority})" if hold.priority else ""),
            ", ".join(hold.scope_keys),
            usd_text(hold.estimate_cost_nanos),
            str(hold.estimated_tokens),
            time_text(hold.expires_at),
        )
    return table


def call_api(url: str | None, key: str | None, request: Callable[[LedgerClient], Answer]) -> Answer:
    from ledger.client import LedgerClientError

    try:
        with open_client(url, key) as client:
            return request(client)
    except LedgerClientError as exc:
        raise api_failure(exc) from exc


def not_applied() -> None:
    console.print(
        "[yellow]note:[/yellow] the api has not applied it yet (is the broker slow?); it applies once the api reads it"
    )
