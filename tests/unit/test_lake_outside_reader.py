"""The store read without our code and without DuckDB: the catalog's tables with psycopg,
the Parquet files with pyarrow, as any other engine would (docs/decisions/0001). The sum of
``cost_nanos`` must equal DuckDB's to the nano: over files, over rows a small commit left
in the catalog (inlined), and with rows deleted (delete files), before and after the
maintenance that merges files and flushes inlined rows (which writes deletes to files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ledger.store.location import StoreLocation
from ledger.store.schema import open_store
from tests.stores import lake_at
from tests.unit.store_rows import at, build_store, entry


def catalog_rows(store: StoreLocation, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(store.catalog) as connection:
        return connection.execute(sql, params).fetchall()  # type: ignore[arg-type]


def sum_without_duckdb(store: StoreLocation, table: str, column: str) -> int:
    """The sum of ``column`` over ``table``'s live rows at the latest snapshot: data files
    minus their deleted positions (in delete files, or a few inlined in the catalog), plus
    rows inlined in the catalog."""
    ((snapshot,),) = catalog_rows(store, "SELECT max(snapshot_id) FROM ducklake_snapshot")
    ((data_path,),) = catalog_rows(store, "SELECT value FROM ducklake_metadata WHERE key = 'data_path'")
    ((table_id, table_path, schema_path),) = catalog_rows(
        store,
        "SELECT t.table_id, t.path, s.path FROM ducklake_table t JOIN ducklake_schema s USING (schema_id) "
        "WHERE t.table_name = %s AND t.end_snapshot IS NULL",
        (table,),
    )
    live = "table_id = %s AND begin_snapshot <= %s AND (end_snapshot IS NULL OR end_snapshot > %s)"

    def resolve(path: str, relative: bool) -> str:
        return str(Path(data_path) / schema_path / table_path / path) if relative else path

    files = catalog_rows(
        store,
        f"SELECT data_file_id, path, path_is_relative FROM ducklake_data_file WHERE {live}",
        (table_id, snapshot, snapshot),
    )
    deleted: dict[int, set[int]] = {}
    for file_id, path, relative in catalog_rows(
        store,
        f"SELECT data_file_id, path, path_is_relative FROM ducklake_delete_file WHERE {live}",
        (table_id, snapshot, snapshot),
    ):
        positions = pq.read_table(resolve(path, relative), columns=["pos"]).column("pos").to_pylist()
        deleted.setdefault(file_id, set()).update(positions)
    inlined_deletes = f"ducklake_inlined_delete_{int(table_id)}"  # a few deleted rows: in the catalog
    if catalog_rows(store, "SELECT 1 FROM information_schema.tables WHERE table_name = %s", (inlined_deletes,)):
        for file_id, position in catalog_rows(
            store, f"SELECT file_id, row_id FROM {inlined_deletes} WHERE begin_snapshot <= %s", (snapshot,)
        ):
            deleted.setdefault(file_id, set()).add(position)
    total = 0
    for file_id, path, relative in files:
        values = pq.read_table(resolve(path, relative), columns=[column]).column(column)
        if file_id in deleted:
            values = values.filter([position not in deleted[file_id] for position in range(len(values))])
        total += int(pc.sum(values).as_py() or 0)
    for (inlined,) in catalog_rows(
        store, "SELECT table_name FROM ducklake_inlined_data_tables WHERE table_id = %s", (table_id,)
    ):
        ((inlined_sum,),) = catalog_rows(
            store,
            f'SELECT coalesce(sum({column}), 0) FROM "{inlined}" '
            "WHERE begin_snapshot <= %s AND (end_snapshot IS NULL OR end_snapshot > %s)",
            (snapshot, snapshot),
        )
        total += int(inlined_sum)
    return total


def duckdb_sum(store: StoreLocation) -> int:
    with open_store(store, read_only=True) as connection:
        (total,) = connection.execute("SELECT sum(cost_nanos) FROM ledger_entries").fetchone() or (0,)
        return int(total)


def test_a_reader_without_our_code_or_duckdb_sums_the_cost_to_the_nano(tmp_path: Path) -> None:
    store = lake_at(tmp_path)
    for commit in range(6):  # a file per commit
        costs = [10**9 * commit + 7 * n + 1 for n in range(25)]
        build_store(store, entries=[entry(cost, "user:u", occurred_at=at(9 + commit)) for cost in costs])
    expected = sum(10**9 * commit + 7 * n + 1 for commit in range(6) for n in range(25))
    assert duckdb_sum(store) == sum_without_duckdb(store, "ledger_entries", "cost_nanos") == expected

    # Rows inlined in the catalog and rows deleted: branches the projector's own writes never
    # make (its data tables write files at once and delete nothing), read all the same.
    with open_store(store) as connection:
        connection.execute("CALL lake.set_option('data_inlining_row_limit', 100, table_name => 'ledger_entries')")
    build_store(store, entries=[entry(1_000_003, "user:v", occurred_at=at(20))])  # inlined
    with open_store(store) as connection:
        connection.execute("DELETE FROM ledger_entries WHERE cost_nanos % 2 = 0")
    left = duckdb_sum(store)
    assert left < expected + 1_000_003
    assert sum_without_duckdb(store, "ledger_entries", "cost_nanos") == left
    assert catalog_rows(store, "SELECT count(*) FROM ducklake_inlined_data_tables")[0][0] > 0
    with open_store(store) as connection:  # inlining off: the next deletes go to a delete file
        connection.execute("CALL lake.set_option('data_inlining_row_limit', 0, table_name => 'ledger_entries')")
        connection.execute("DELETE FROM ledger_entries WHERE cost_nanos % 3 = 0")
    assert catalog_rows(store, "SELECT count(*) FROM ducklake_delete_file")[0][0] > 0
    left = duckdb_sum(store)
    assert sum_without_duckdb(store, "ledger_entries", "cost_nanos") == left

    with open_store(store) as connection:  # what the api's maintenance runs
        connection.execute("CALL ducklake_flush_inlined_data('lake')")
        connection.execute("CALL ducklake_merge_adjacent_files('lake')")
    assert duckdb_sum(store) == sum_without_duckdb(store, "ledger_entries", "cost_nanos") == left
