"""The replay's SQL, statement by statement (see ``ledger.replay.engine`` for the plan).

Scope kinds map to the event columns they come from, so charges are placed on limits by
joins on those columns, never by unnesting every event's scope list.
"""

from __future__ import annotations

SCOPE_COLUMNS = {"user": "user_id", "team": "team_id", "key": "key_id", "end_user": "end_user"}

PRICES = """
CREATE OR REPLACE TEMP TABLE replay_prices AS
SELECT model, provider_key, utc_day, start_us, end_us, priced, priced_as,
       CAST(input_units AS HUGEINT) AS input_units, CAST(cache_read_units AS HUGEINT) AS cache_read_units,
       CAST(cache_write_units AS HUGEINT) AS cache_write_units, CAST(output_units AS HUGEINT) AS output_units,
       CAST(reasoning_units AS HUGEINT) AS reasoning_units, CAST(request_units AS HUGEINT) AS request_units,
       CAST(input_tiers AS STRUCT(start BIGINT, units HUGEINT)[]) AS input_tiers,
       CAST(cache_read_tiers AS STRUCT(start BIGINT, units HUGEINT)[]) AS cache_read_tiers,
       CAST(cache_write_tiers AS STRUCT(start BIGINT, units HUGEINT)[]) AS cache_write_tiers,
       CAST(output_tiers AS STRUCT(start BIGINT, units HUGEINT)[]) AS output_tiers,
       CAST(reasoning_tiers AS STRUCT(start BIGINT, units HUGEINT)[]) AS reasoning_tiers
FROM replay_prices_arrow
"""


def _part(kind: str, tokens: str) -> str:
    """tokens x the kind's rate (its tier for the prompt size), 0 without a rate."""
    return f"""(CASE WHEN {kind}_units IS NULL OR {tokens} = 0 THEN CAST(0 AS HUGEINT)
          WHEN {kind}_tiers IS NULL THEN {tokens} * {kind}_units
          ELSE {tokens} * coalesce(list_last(list_filter({kind}_tiers, lambda x: prompt_tokens > x.start)).units,
                                    {kind}_units) END)"""


_RATE_COLUMNS = (
    "p.priced, p.priced_as, p.input_units, p.cache_read_units, p.cache_write_units, p.output_units, "
    "p.reasoning_units, p.request_units, p.input_tiers, p.cache_read_tiers, p.cache_write_tiers, "
    "p.output_tiers, p.reasoning_tiers"
)

# The price of each event in nanos, one row per row of usage_events, with the event's time
# and the columns its scopes come from (the charges below read them here: a lake's scan
# order is not its row order, so no positional join with the table). Tokens x rates in
# 1e-24 USD, one half-to-even division (ledger.domain.pricing). Cache tokens without a
# cache rate bill as input, reasoning tokens without a reasoning rate as output. Only events in [from, to) are repriced.
COSTS = f"""
CREATE OR REPLACE TEMP TABLE replay_costs AS
WITH rated AS (
    SELECT u.rowid AS row_id, epoch_us(u.occurred_at) AS t_us, u.*, {_RATE_COLUMNS},
           epoch_us(u.occurred_at) <= $as_of_us
           AND (NOT $filter_scopes OR list_has_any(u.scope_keys, (SELECT list(scope_key) FROM replay_scopes)))
           AS counted
    FROM usage_events u
    LEFT JOIN replay_prices p
      ON p.model = u.model AND p.provider_key = coalesce(u.provider, '')
     AND p.utc_day = epoch_us(u.occurred_at) // 86400000000
     AND epoch_us(u.occurred_at) >= p.start_us AND epoch_us(u.occurred_at) < p.end_us
),
tokens AS (
    SELECT *,
           CASE WHEN cache_read_units IS NULL THEN 0 ELSE cache_read_tokens END AS cr,
           CASE WHEN cache_write_units IS NULL THEN 0 ELSE cache_write_tokens END AS cw,
           CASE WHEN reasoning_units IS NULL THEN 0 ELSE reasoning_tokens END AS rs
    FROM rated
),
units AS (
    SELECT row_id, t_us, model, user_id, team_id, key_id, end_user, tags,
           counted, has_usage, tokens_estimated, reported_cost_nanos, priced,
           {_part("input", "(prompt_tokens - cr - cw)")} + {_part("cache_read", "cr")}
           + {_part("cache_write", "cw")} + {_part("output", "(completion_tokens - rs)")}
           + {_part("reasoning", "rs")} + coalesce(request_units, CAST(0 AS HUGEINT)) AS cost_units
    FROM tokens
),
-- cost_units / 1e15 rounded half to even. HUGEINT division is slow, so the quotient is
-- estimated in DOUBLE and corrected by one step (exact below 4e15 nanos), and the
-- rare row still off goes through the exact division.
estimated AS (
    SELECT *, CAST(floor(CAST(cost_units AS DOUBLE) / 1e15) AS BIGINT) AS q0 FROM units
),
corrected AS (
    SELECT *,
        CASE WHEN r0 < 0 THEN q0 - 1 WHEN r0 >= 1000000000000000 THEN q0 + 1 ELSE q0 END AS q,
        CASE WHEN r0 < 0 THEN r0 + 1000000000000000 WHEN r0 >= 1000000000000000 THEN r0 - 1000000000000000
             ELSE r0 END AS r
    FROM (SELECT *, cost_units - CAST(q0 AS HUGEINT) * 1000000000000000 AS r0 FROM estimated)
),
priced AS (
    SELECT * EXCLUDE (q0, r0, q, r, cost_units, has_usage, tokens_estimated, reported_cost_nanos, priced),
        CASE WHEN $trust AND reported_cost_nanos IS NOT NULL THEN 'reported'
             WHEN NOT has_usage AND NOT tokens_estimated THEN 'invalid_usage'
             WHEN priced IS NULL OR NOT priced THEN 'unpriced'
             ELSE 'price_book' END AS status,
        CASE WHEN $trust AND reported_cost_nanos IS NOT NULL THEN reported_cost_nanos
             WHEN NOT has_usage AND NOT tokens_estimated THEN NULL
             WHEN priced IS NULL OR NOT priced THEN NULL
             WHEN r >= 0 AND r < 1000000000000000
             THEN q + CASE WHEN 2 * r > 1000000000000000 OR (2 * r = 1000000000000000 AND q % 2 = 1)
                           THEN 1 ELSE 0 END
             ELSE CAST(cost_units // 1000000000000000
                       + CASE WHEN 2 * (cost_units % 1000000000000000) > 1000000000000000
                                OR (2 * (cost_units % 1000000000000000) = 1000000000000000
                                    AND (cost_units // 1000000000000000) % 2 = 1)
                              THEN 1 ELSE 0 END AS BIGINT) END AS cost_nanos
    FROM corrected
)
SELECT row_id, t_us, model, user_id, team_id, key_id, end_user, tags,
    CASE WHEN NOT counted THEN 'not_counted'
         WHEN ($from_us IS NULL OR t_us >= $from_us) AND ($to_us IS NULL OR t_us < $to_us) THEN status
         ELSE 'kept' END AS status,
    CASE WHEN counted AND ($from_us IS NULL OR t_us >= $from_us) AND ($to_us IS NULL OR t_us < $to_us)
         THEN cost_nanos END AS cost_nanos
FROM priced
"""

# Events not priced anew (outside the range, or not priced by the book) keep what the
# ledger charged them: never a $0 charge for a price that went missing.
KEEP_CHARGED = """
UPDATE replay_costs SET cost_nanos = kept.charged_nanos
FROM (
    SELECT c.row_id, sum(l.cost_nanos)::BIGINT AS charged_nanos
    FROM replay_costs c JOIN usage_events u ON u.rowid = c.row_id JOIN ledger_entries l ON l.event_id = u.event_id
    WHERE c.cost_nanos IS NULL AND c.status != 'not_counted'
    GROUP BY c.row_id
) kept
WHERE replay_costs.row_id = kept.row_id
"""

CHARGED = """
CREATE OR REPLACE TEMP VIEW replay_charged AS
SELECT t_us, model, user_id, team_id, key_id, end_user, tags, cost_nanos, '*' AS global_id
FROM replay_costs
WHERE cost_nanos IS NOT NULL
"""

TOTALS = f"""
SELECT CASE WHEN GROUPING(user_id) = 0 THEN 'user:' || user_id
            WHEN GROUPING(team_id) = 0 THEN 'team:' || team_id
            WHEN GROUPING(key_id) = 0 THEN 'key:' || key_id
            WHEN GROUPING(end_user) = 0 THEN 'end_user:' || end_user
            ELSE 'global:*' END AS scope_key,
       sum(cost_nanos)::BIGINT, count(*), max(t_us)
FROM replay_charged
GROUP BY GROUPING SETS ((), {", ".join(f"({column})" for column in SCOPE_COLUMNS.values())})
HAVING count(*) > 0
   AND (GROUPING(user_id) + GROUPING(team_id) + GROUPING(key_id) + GROUPING(end_user) = 4
        OR coalesce(user_id, team_id, key_id, end_user) IS NOT NULL)
UNION ALL
SELECT 'tag:' || tag, sum(cost_nanos)::BIGINT, count(*), max(t_us)
FROM (SELECT unnest(tags) AS tag, cost_nanos, t_us FROM replay_charged WHERE len(tags) > 0)
GROUP BY tag
"""

_ON_SEGMENT = "c.t_us >= s.start_us AND c.t_us < s.end_us AND (s.model IS NULL OR s.model = c.model)"
_PLACED_COLUMNS = "s.segment_id, s.anchor_us, s.step_us, s.rule_id, c.t_us, c.cost_nanos, 1 AS points"


def _placed() -> str:
    """Each charge on each limit segment of each scope it charges, at its time."""
    parts = [
        f"SELECT {_PLACED_COLUMNS} FROM replay_charged c "
        f"JOIN replay_segments s ON s.scope_kind = 'global' AND s.scope_id = c.global_id AND {_ON_SEGMENT}"
    ]
    for kind, column in SCOPE_COLUMNS.items():
        parts.append(
            f"SELECT {_PLACED_COLUMNS} FROM replay_charged c "
            f"JOIN replay_segments s ON s.scope_kind = '{kind}' AND s.scope_id = c.{column} AND {_ON_SEGMENT}"
        )
    parts.append(
        f"SELECT {_PLACED_COLUMNS} FROM (SELECT *, unnest(tags) AS tag FROM replay_charged WHERE len(tags) > 0) c "
        f"JOIN replay_segments s ON s.scope_kind = 'tag' AND s.scope_id = c.tag AND {_ON_SEGMENT}"
    )
    # A limit changed in place is checked at the command's own time, with what its window
    # has spent so far (a point of no cost).
    parts.append(
        "SELECT s.segment_id, s.anchor_us, s.step_us, s.rule_id, s.start_us, 0, 1 FROM replay_segments s "
        "WHERE s.checks_at_start AND s.start_us <= $as_of_us"
    )
    return "\nUNION ALL\n".join(parts)


# Spend per (segment, window), then cumulated over a window's segments in time order.
# Run with the join-order optimizer off: the joins are written with the small side
# (segments, boundaries) to build on, which DuckDB cannot tell across a positional scan.
# Within a window spend only grows (replayed costs are never negative), so a threshold of
# a segment was crossed exactly when the window's spend at the segment's end passes it and
# the segment has a point in that window (a charge, or its own check).
WINDOWS = f"""
CREATE OR REPLACE TEMP TABLE replay_segment_windows AS
SELECT p.segment_id,
       CASE WHEN p.rule_id IS NOT NULL THEN greatest(p.anchor_us, b.start_us)
            WHEN p.step_us IS NULL THEN p.anchor_us
            ELSE p.anchor_us + ((p.t_us - p.anchor_us) // p.step_us) * p.step_us END AS window_us,
       sum(p.cost_nanos)::BIGINT AS spend_nanos, sum(p.points)::BIGINT AS points
FROM ({_placed()}) p
LEFT JOIN replay_boundaries b
  ON p.rule_id = b.rule_id AND b.utc_day = p.t_us // 86400000000 AND p.t_us >= b.start_us AND p.t_us < b.end_us
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
