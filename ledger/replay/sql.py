"""The replay's SQL, statement by statement (see ``ledger.replay.engine`` for the plan).

Scope kinds map to the event columns they come from, so charges are placed on limits by
joins on those columns, never by unnesting every event's scope list.
"""

from __future__ import annotations

from ledger.replay.rates import RATE_KINDS

SCOPE_COLUMNS = {"user": "user_id", "team": "team_id", "key": "key_id", "end_user": "end_user"}

_UNITS_PER_NANO = 10**15
_UNITS_PER_FEMTO = 10**9  # 1e-15 USD
_FEMTOS_PER_NANO = _UNITS_PER_NANO // _UNITS_PER_FEMTO
_RATED = (*RATE_KINDS, "request")


# The rate each kind of token bills at: cache tokens without a cache rate bill as input,
# reasoning tokens without a reasoning rate as output (ledger.domain.pricing), no rate as 0.
_BILLED_AT = {
    "input": "input_units",
    "cache_read": "cache_read_units, input_units",
    "cache_write": "cache_write_units, input_units",
    "output": "output_units",
    "reasoning": "reasoning_units, output_units",
    "request": "request_units",
}


def _split(kind: str) -> str:
    """The rate a kind bills at, in 1e-24 USD (yoctos), as three BIGINT parts: nanos,
    femtos (1e-15 USD, < 1e6) and yoctos (< 1e9). Tokens times each part fits 64 bits
    (rates, tokens and parts are bounded: ledger.domain.prices.RATE_USD_MAX,
    ledger.domain.events.TOKENS_PER_FIELD_MAX), and BIGINT arithmetic is several times
    faster than HUGEINT; an overflow would be an error, never a wrong sum."""
    units = f"CAST(coalesce({_BILLED_AT[kind]}, 0) AS HUGEINT)"
    return (
        f"CAST({units} // {_UNITS_PER_NANO} AS BIGINT) AS {kind}_nanos, "
        f"CAST({units} % {_UNITS_PER_NANO} // {_UNITS_PER_FEMTO} AS BIGINT) AS {kind}_femtos, "
        f"CAST({units} % {_UNITS_PER_FEMTO} AS BIGINT) AS {kind}_yoctos"
    )


PRICES = f"""
CREATE OR REPLACE TEMP TABLE replay_prices AS
SELECT model, provider_key, utc_day, start_us, end_us, prompt_above, prompt_upto, priced,
       {", ".join(_split(kind) for kind in _RATED)}
FROM replay_prices_arrow
"""


def code(column: str) -> str:
    """A scope column as a 64-bit code (NULL stays NULL): per-event tables carry codes, not
    strings, as a temp table appends strings several times slower (checked by NAMES)."""
    return f"CASE WHEN {column} IS NOT NULL THEN hash({column}) END"


# Tokens of each kind (the request once per event).
_TOKENS = {
    "input": "prompt_tokens - cache_read_tokens - cache_write_tokens",
    "cache_read": "cache_read_tokens",
    "cache_write": "cache_write_tokens",
    "output": "completion_tokens - reasoning_tokens",
    "reasoning": "reasoning_tokens",
    "request": "1",
}


def _sum_of(part: str) -> str:
    """Sum over the kinds of tokens x that part of the rate they bill at."""
    return " + ".join(f"({tokens}) * {kind}_{part}" for kind, tokens in _TOKENS.items())


_PARTS = ("nanos", "femtos", "yoctos")
_RATE_COLUMNS = ", ".join(["p.priced", *(f"p.{kind}_{part}" for kind in _RATED for part in _PARTS)])
_STATUSES = ("price_book", "reported", "invalid_usage", "unpriced", "kept")
_STATUS_TYPE = f"ENUM({', '.join(repr(status) for status in _STATUSES)})"


def _status(status: str) -> str:
    assert status in _STATUSES
    return f"CAST('{status}' AS {_STATUS_TYPE})"


_CODED = {**SCOPE_COLUMNS, "model": "model"}
_CODES = ", ".join(f"{code('u.' + column)} AS {kind}_code" for kind, column in _CODED.items())
_CHARGED_BY_EVENT = "SELECT event_id, sum(cost_nanos)::BIGINT AS charged_nanos FROM ledger_entries GROUP BY event_id"


def costs(keeps_charged: bool) -> str:
    """The price of each counted event in nanos, one row per row of ``replay_events``, with
    its time and the codes of the columns its scopes come from (what the charges below
    read). Tokens x rates in 1e-24 USD, rounded half to even once per event
    (ledger.domain.pricing), in BIGINT parts (``_split``); an event no price row matches
    has NULL rates, so NULL parts: unpriced. Only events in [from, to) are
    priced anew; with ``keeps_charged`` (a range given) the others get what the ledger
    charged them in the same pass."""
    in_range = "($from_us IS NULL OR t_us >= $from_us) AND ($to_us IS NULL OR t_us < $to_us)"
    return f"""
CREATE OR REPLACE TEMP TABLE replay_costs AS
WITH rated AS (
    SELECT u.row_id, u.t_us, u.prompt_tokens, u.completion_tokens, u.cache_read_tokens, u.cache_write_tokens,
           u.reasoning_tokens, u.has_usage, u.tokens_estimated, u.reported_cost_nanos,
           {_CODES}, u.tags, {"k.charged_nanos" if keeps_charged else "NULL"} AS charged_nanos, {_RATE_COLUMNS}
    FROM replay_events u
    LEFT JOIN replay_prices p
      ON p.model = u.model AND p.provider_key = coalesce(u.provider, '') AND p.utc_day = u.t_us // 86400000000
     AND u.t_us >= p.start_us AND u.t_us < p.end_us
     AND u.prompt_tokens > p.prompt_above AND u.prompt_tokens <= p.prompt_upto
    {f"LEFT JOIN ({_CHARGED_BY_EVENT}) k ON k.event_id = u.event_id" if keeps_charged else ""}
),
parts AS (
    SELECT row_id, t_us, model_code, user_code, team_code, key_code, end_user_code, tags, charged_nanos,
           has_usage, tokens_estimated, reported_cost_nanos, priced,
           {_sum_of("nanos")} AS nanos, {_sum_of("femtos")} AS femtos, {_sum_of("yoctos")} AS yoctos
    FROM rated
),
-- nanos + (femtos x 1e9 + yoctos) / 1e15, rounded half to even: whole nanos (q) and the
-- remainder below one nano (r, in yoctos, 0 <= r < 1e15).
split AS (
    SELECT *, nanos + femtos // {_FEMTOS_PER_NANO} AS whole,
           femtos % {_FEMTOS_PER_NANO} * {_UNITS_PER_FEMTO} + yoctos AS rest
    FROM parts
),
floored AS (
    SELECT *, whole + rest // {_UNITS_PER_NANO} - CASE WHEN rest % {_UNITS_PER_NANO} < 0 THEN 1 ELSE 0 END AS q,
           rest % {_UNITS_PER_NANO} + CASE WHEN rest % {_UNITS_PER_NANO} < 0 THEN {_UNITS_PER_NANO} ELSE 0 END AS r
    FROM split
),
priced AS (
    SELECT row_id, t_us, model_code, user_code, team_code, key_code, end_user_code, tags, charged_nanos,
        CASE WHEN $trust AND reported_cost_nanos IS NOT NULL THEN {_status("reported")}
             WHEN NOT has_usage AND NOT tokens_estimated THEN {_status("invalid_usage")}
             WHEN priced IS NULL OR NOT priced THEN {_status("unpriced")}
             ELSE {_status("price_book")} END AS status,
        CASE WHEN $trust AND reported_cost_nanos IS NOT NULL THEN reported_cost_nanos
             WHEN NOT has_usage AND NOT tokens_estimated THEN NULL
             WHEN priced IS NULL OR NOT priced THEN NULL
             ELSE q + CASE WHEN 2 * r > {_UNITS_PER_NANO} OR (2 * r = {_UNITS_PER_NANO} AND q % 2 != 0)
                           THEN 1 ELSE 0 END END AS cost_nanos
    FROM floored
)
SELECT row_id, t_us, model_code, user_code, team_code, key_code, end_user_code, tags,
    CASE WHEN {in_range} THEN status ELSE {_status("kept")} END AS status,
    CASE WHEN {in_range} THEN cost_nanos ELSE charged_nanos END AS cost_nanos
FROM priced
"""


# Nothing priced anew (an empty repricing range: a restore): every event keeps its charge.
KEPT_COSTS = f"""
CREATE OR REPLACE TEMP TABLE replay_costs AS
SELECT u.row_id, u.t_us, {_CODES}, u.tags, {_status("kept")} AS status, k.charged_nanos AS cost_nanos
FROM replay_events u LEFT JOIN ({_CHARGED_BY_EVENT}) k ON k.event_id = u.event_id
"""

# Events priced anew but not priced (the book has no price, or nothing to price) keep what
# the ledger charged them: never a $0 charge for a price that went missing.
KEEP_CHARGED = f"""
UPDATE replay_costs SET cost_nanos = kept.charged_nanos
FROM (
    SELECT c.row_id, k.charged_nanos
    FROM replay_costs c JOIN usage_events u ON u.rowid = c.row_id
    JOIN ({_CHARGED_BY_EVENT}) k ON k.event_id = u.event_id
    WHERE c.cost_nanos IS NULL AND c.status != 'kept'
) kept
WHERE replay_costs.row_id = kept.row_id
"""

CHARGED = """
CREATE OR REPLACE TEMP VIEW replay_charged AS
SELECT t_us, model_code, user_code, team_code, key_code, end_user_code, tags, cost_nanos, '*' AS global_id
FROM replay_costs
WHERE cost_nanos IS NOT NULL
"""

# The names behind the codes: every value of the coded columns in the events and the
# segments. A code two names share would merge their charges: NAMES_SHARING_A_CODE finds
# it (never seen: 64-bit codes, a chance of about n^2 / 2^65 for n names of a kind).
NAMES = f"""
CREATE OR REPLACE TEMP TABLE replay_names AS
SELECT DISTINCT kind, hash(name) AS code, name FROM (
    SELECT CASE {" ".join(f"WHEN GROUPING({column}) = 0 THEN '{kind}'" for kind, column in _CODED.items())} END AS kind,
           coalesce({", ".join(_CODED.values())}) AS name
    FROM replay_events
    GROUP BY GROUPING SETS ({", ".join(f"({column})" for column in _CODED.values())})
    UNION ALL
    SELECT scope_kind, scope_id FROM replay_segments WHERE scope_kind IN ({", ".join(map(repr, SCOPE_COLUMNS))})
    UNION ALL
    SELECT 'model', model FROM replay_segments
)
WHERE name IS NOT NULL
"""

NAMES_SHARING_A_CODE = "SELECT kind, list(name) FROM replay_names GROUP BY kind, code HAVING count(*) > 1"

_CODE_COLUMNS = {kind: f"{kind}_code" for kind in SCOPE_COLUMNS}

TOTALS = f"""
WITH sums AS (
    SELECT CASE {" ".join(f"WHEN GROUPING({column}) = 0 THEN '{kind}'" for kind, column in _CODE_COLUMNS.items())}
                ELSE 'global' END AS kind,
           coalesce({", ".join(_CODE_COLUMNS.values())}) AS code,
           sum(cost_nanos)::BIGINT AS total_nanos, count(*) AS entries, max(t_us) AS last_us
    FROM replay_charged
    GROUP BY GROUPING SETS ((), {", ".join(f"({column})" for column in _CODE_COLUMNS.values())})
)
SELECT CASE WHEN s.kind = 'global' THEN 'global:*' ELSE s.kind || ':' || n.name END, total_nanos, entries, last_us
FROM sums s LEFT JOIN replay_names n ON n.kind = s.kind AND n.code = s.code
WHERE entries > 0 AND (s.kind = 'global' OR s.code IS NOT NULL)
UNION ALL
SELECT 'tag:' || tag, sum(cost_nanos)::BIGINT, count(*), max(t_us)
FROM (SELECT unnest(tags) AS tag, cost_nanos, t_us FROM replay_charged WHERE len(tags) > 0)
GROUP BY tag
"""

_ON_SEGMENT = "c.t_us >= s.start_us AND c.t_us < s.end_us AND (s.model IS NULL OR s.model_code = c.model_code)"
_WINDOW_US = """CASE WHEN s.rule_id IS NOT NULL THEN greatest(s.anchor_us, b.start_us)
            WHEN s.step_us IS NULL THEN s.anchor_us
            ELSE s.anchor_us + ((c.t_us - s.anchor_us) // s.step_us) * s.step_us END"""
_ON_BOUNDARY = (
    "s.rule_id = b.rule_id AND b.utc_day = c.t_us // 86400000000 AND c.t_us >= b.start_us AND c.t_us < b.end_us"
)


def _placed(charges: str, on_segment: str) -> str:
    """Spend and points per (segment, window) of the charges on the segments they join."""
    return f"""
SELECT s.segment_id, {_WINDOW_US} AS window_us, sum(c.cost_nanos) AS spend_nanos, count(*) AS points
FROM {charges} c JOIN replay_segments s ON {on_segment}
LEFT JOIN replay_boundaries b ON {_ON_BOUNDARY}
GROUP BY ALL"""


def _windows() -> str:
    """Each charge on each limit segment of each scope it charges, added up per window:
    a kind at a time (small hash tables), then together."""
    parts = [_placed("replay_charged", f"s.scope_kind = 'global' AND s.scope_id = c.global_id AND {_ON_SEGMENT}")]
    for kind, column in _CODE_COLUMNS.items():
        on_scope = f"s.scope_kind = '{kind}' AND s.scope_code = c.{column}"
        parts.append(_placed("replay_charged", f"{on_scope} AND {_ON_SEGMENT}"))
    tagged = "(SELECT *, unnest(tags) AS tag FROM replay_charged WHERE len(tags) > 0)"
    parts.append(_placed(tagged, f"s.scope_kind = 'tag' AND s.scope_id = c.tag AND {_ON_SEGMENT}"))
    # A limit changed in place is checked at the command's own time, with what its window
    # has spent so far (a point of no cost).
    checks = "(SELECT segment_id, start_us AS t_us, 0 AS cost_nanos FROM replay_segments)"
    parts.append(_placed(checks, "s.segment_id = c.segment_id AND s.checks_at_start AND s.start_us <= $as_of_us"))
    return "\nUNION ALL\n".join(parts)


# Spend per (segment, window), then cumulated over a window's segments in time order.
# Within a window spend only grows (replayed costs are never negative), so a threshold of
# a segment was crossed exactly when the window's spend at the segment's end passes it and
# the segment has a point in that window (a charge, or its own check).
WINDOWS = f"""
CREATE OR REPLACE TEMP TABLE replay_segment_windows AS
SELECT segment_id, window_us, sum(spend_nanos)::BIGINT AS spend_nanos, sum(points)::BIGINT AS points
FROM ({_windows()})
GROUP BY ALL;

CREATE OR REPLACE TEMP TABLE replay_window_spend AS
SELECT s.scope_key, s.limit_name, s.series, w.window_us, w.segment_id, s.max_nanos, s.soft_nanos, w.points,
       sum(w.spend_nanos) OVER (
           PARTITION BY s.scope_key, s.limit_name, s.series, w.window_us
           ORDER BY s.start_us ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
       ) AS running_nanos,
       sum(w.spend_nanos) OVER (PARTITION BY s.scope_key, s.limit_name, s.series, w.window_us) AS spend_nanos
FROM replay_segment_windows w JOIN replay_segments s USING (segment_id);

CREATE OR REPLACE TEMP TABLE replay_crossings AS
SELECT DISTINCT scope_key, limit_name, window_us, 'exceeded' AS kind, max_nanos AS threshold_nanos
FROM replay_window_spend WHERE points > 0 AND max_nanos IS NOT NULL AND running_nanos > max_nanos
UNION
SELECT DISTINCT scope_key, limit_name, window_us, 'soft-threshold', soft_nanos
FROM replay_window_spend WHERE points > 0 AND soft_nanos IS NOT NULL AND running_nanos >= soft_nanos
"""
