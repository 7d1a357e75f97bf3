"""``GET /v1/spend`` windows, filters and tokens, through a real api over a real worker and
broker: events posted over HTTP, read back from the store the api projects them into."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from ledger.broker import EmbeddedBroker
from tests.integration.builders import until
from tests.integration.conftest import ApiProcess, Ledger
from tests.stores import lake_at

MASTER_KEY = "spend-windows-master-key-0123"
AUTH = {"authorization": f"Bearer {MASTER_KEY}"}
TIMEOUT_S = 30.0
NEW_YORK = ZoneInfo("America/New_York")


def last_fall_back_day(today: date) -> date:
    """The latest first Sunday of November (New York's fall-back day) before ``today``: a
    recent day, so the api takes events on it as within its accepted past."""
    for year in (today.year, today.year - 1):
        first = date(year, 11, 1)
        sunday = first + timedelta(days=(6 - first.weekday()) % 7)
        if sunday < today:
            return sunday
    raise AssertionError("unreachable: last year's November is always past")


@pytest.fixture(scope="module")
def stack(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Ledger, ApiProcess]]:
    """One worker and one api; reported costs are trusted, so each test sets what a call costs."""
    folder = tmp_path_factory.mktemp("spend-windows")
    ledger = Ledger(broker, folder, trust_reported_cost="true")
    ledger.start_worker()
    api = ledger.start_api(lake_at(folder), master_key=MASTER_KEY)
    yield ledger, api
    ledger.stop_all()


def spend(api: ApiProcess, params: list[tuple[str, str]]) -> httpx.Response:
    return httpx.get(f"{api.url}/v1/spend", params=params, headers=AUTH, timeout=TIMEOUT_S)


def test_hour_and_day_windows_in_new_york_across_the_fall_back_change_with_filters_and_tokens(stack):
    _, api = stack
    team, other_team = f"dst-{uuid.uuid4().hex[:8]}", f"dst-{uuid.uuid4().hex[:8]}"
    day = last_fall_back_day(datetime.now(UTC).date())
    day_start = datetime(day.year, day.month, day.day, tzinfo=NEW_YORK)
    instants = [day_start.astimezone(UTC) + timedelta(minutes=30, hours=n) for n in range(25)]
    usage = {"prompt_tokens": 100, "completion_tokens": 20, "cache_read_tokens": 60, "cache_write_tokens": 10,
             "reasoning_tokens": 5}  # fmt: skip
    events: list[dict[str, Any]] = [
        {"event_id": f"{team}-{n}", "occurred_at": instant.isoformat(), "model": "gpt-4o", "team_id": team,
         "user_id": "ana", "reported_cost": "0.000001", "usage": usage}
        for n, instant in enumerate(instants)
    ]  # fmt: skip
    events.append(
        {"event_id": f"{other_team}-0", "occurred_at": instants[0].isoformat(), "model": "gpt-4o-mini",
         "team_id": other_team, "user_id": "ben", "reported_cost": "0.000002", "usage": usage}
    )  # fmt: skip
    posted = httpx.post(f"{api.url}/v1/usage", json={"events": events}, headers=AUTH, timeout=TIMEOUT_S)
    assert posted.status_code == 202, posted.text

    hourly = [("window", "hour"), ("tz", "America/New_York"), ("team", team)]
    rows = until(
        lambda: spend(api, hourly).json()["rows"], lambda found: len(found) == 25, "25 hourly windows in the store"
    )
    starts = [row["window_start"] for row in rows]
    iso_day = day.isoformat()
    assert starts[:3] == [f"{iso_day}T00:00:00-04:00", f"{iso_day}T01:00:00-04:00", f"{iso_day}T01:00:00-05:00"]
    assert starts[-1] == f"{iso_day}T23:00:00-05:00"
    assert [row["window_end"] for row in rows[:-1]] == starts[1:]
    assert {(row["spend_nanos"], row["entry_count"]) for row in rows} == {(1_000, 1)}

    daily = spend(api, [("window", "day"), ("tz", "America/New_York"), ("team", team)]).json()
    assert (daily["window"], daily["tz"]) == ("day", "America/New_York")
    (whole_day,) = daily["rows"]
    next_day = (day + timedelta(days=1)).isoformat()
    assert (whole_day["window_start"], whole_day["window_end"]) == (
        f"{iso_day}T00:00:00-04:00",
        f"{next_day}T00:00:00-05:00",
    )
    assert (whole_day["spend_nanos"], whole_day["entry_count"]) == (25_000, 25)
    tokens = ("prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
    assert [whole_day[name] for name in tokens] == [2_500, 500, 1_500, 250, 125]

    either_team = [("team", team), ("team", other_team), ("group_by", "team,model")]
    both = until(
        lambda: spend(api, either_team).json()["rows"], lambda found: len(found) == 2, "the other team's event"
    )
    by_team = sorted(((row["groups"], row["spend_nanos"]) for row in both), key=lambda found: found[0]["team"] != team)
    assert by_team == [  # rows come in group order, and the team names are random
        ({"team": team, "model": "gpt-4o"}, 25_000),
        ({"team": other_team, "model": "gpt-4o-mini"}, 2_000),
    ]
    ben_on_mini = spend(api, [*either_team, ("user", "ben"), ("model", "gpt-4o-mini")]).json()
    assert [(row["groups"]["team"], row["spend_nanos"]) for row in ben_on_mini["rows"]] == [(other_team, 2_000)]
    assert spend(api, [*either_team, ("user", "ben"), ("model", "gpt-4o")]).json()["rows"] == []


@pytest.mark.parametrize(
    ("params", "field", "message"),
    [
        ([("window", "fortnight")], "window", "Input should be 'hour', 'day', 'week' or 'month'"),
        ([("window", "day"), ("tz", "Mars/Olympus_Mons")], "tz", "unknown time zone 'Mars/Olympus_Mons'"),
        ([("tz", "UTC"), ("tz", "America/New_York")], "tz", "takes one value"),
        ([("window", "day"), ("tz", "x" * 65)], "tz", "at most 64 characters"),
    ],
)
def test_a_bad_window_or_time_zone_is_a_field_error_naming_it(stack, params, field, message):
    _, api = stack
    answer = spend(api, params)
    assert answer.status_code == 422, answer.text
    (error,) = answer.json()["error"]["fields"]
    assert error["loc"] == ["query", field]
    assert message in error["msg"]
