"""The lake with its data files on S3-compatible storage: moto's S3 server on loopback
(no AWS is reached). The writer commits, readers read (ad-hoc SQL's sandbox too, which may
read the lake's prefix and nothing else), and maintenance compacts, all through httpfs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from pyarrow import fs

from ledger.broker import free_port
from ledger.store.location import S3Access, StoreLocation
from ledger.store.maintenance import maintain
from ledger.store.schema import open_store
from ledger.store.sql import StatementNotAllowed, run_readonly_sql
from tests.stores import lake_at
from tests.unit.store_rows import at, build_store, entry

KEY_ID, SECRET, BUCKET = "test-key", "test-secret", "ledger-lake"
START_TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server on a free loopback port, with the bucket made; stopped by pid."""
    port = free_port()
    environment = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=log,
        env={**environment, "AWS_EC2_METADATA_DISABLED": "true"},
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, "moto's server exited"
            assert time.monotonic() < deadline, "moto's server did not answer"
            time.sleep(0.1)
        endpoint = f"127.0.0.1:{port}"
        bucket = fs.S3FileSystem(
            access_key=KEY_ID,
            secret_key=SECRET,
            region="us-east-1",
            endpoint_override=endpoint,
            scheme="http",
            allow_bucket_creation=True,
        )
        bucket.create_dir(BUCKET)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()


def lake_on_s3(folder: Path, endpoint: str) -> StoreLocation:
    local = lake_at(folder)
    access = S3Access(
        endpoint=endpoint, key_id=KEY_ID, secret=SECRET, region="us-east-1", url_style="path", use_ssl=False
    )
    return StoreLocation(catalog=local.catalog, data_path=f"s3://{BUCKET}/{folder.name}/", s3=access)


def test_a_lake_on_s3_takes_commits_answers_readers_and_compacts(tmp_path: Path, s3_endpoint: str) -> None:
    store = lake_on_s3(tmp_path, s3_endpoint)
    for commit in range(5):
        build_store(store, entries=[entry(100 * commit + n, "user:u", occurred_at=at(9 + commit)) for n in range(30)])
    expected = sum(100 * commit + n for commit in range(5) for n in range(30))
    with open_store(store, read_only=True) as connection:
        assert connection.execute("SELECT count(*), sum(cost_nanos) FROM ledger_entries").fetchone() == (150, expected)
        (files,) = connection.execute(
            "SELECT count(*) FROM glob(?)", [f"{store.data_path}**/*.parquet"]
        ).fetchone() or (0,)
    assert files >= 5

    result = run_readonly_sql(store, "SELECT count(*), sum(cost_nanos) FROM ledger_entries")
    assert result.rows == ((150, expected),)
    with pytest.raises(StatementNotAllowed, match="external access is off"):
        run_readonly_sql(store, "SELECT * FROM read_text('/etc/hostname')")
    with pytest.raises(StatementNotAllowed, match="external access is off"):
        run_readonly_sql(store, f"SELECT * FROM read_parquet('s3://{BUCKET}-other/x.parquet')")

    with open_store(store) as connection:
        report = maintain(connection, retention=timedelta(0), now=datetime.now(UTC) + timedelta(seconds=1))
    assert report.live_files_after < report.live_files_before
    assert run_readonly_sql(store, "SELECT count(*), sum(cost_nanos) FROM ledger_entries").rows == ((150, expected),)
