"""Lakes for tests: one embedded catalog server per test session, a catalog database and
a data folder per store (``lake_at``), so each test's store is its own."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from pydantic import SecretStr

from ledger.store.catalog_server import CatalogServer
from ledger.store.location import StoreLocation

_server: CatalogServer | None = None


def catalog_server() -> CatalogServer:
    """The session's catalog server, started on first use (stopped by ``stop_catalog_server``)."""
    global _server
    if _server is None:
        root = Path(tempfile.mkdtemp(prefix=f"spend-ledger-test-catalog-{os.getpid()}-"))
        os.chmod(root, 0o755)
        server = CatalogServer(root)
        server.start()
        _server = server
    return _server


def stop_catalog_server() -> None:
    """Stop the session's server and remove its folder (its databases held a few GB)."""
    global _server
    if _server is not None:
        _server.stop()
        shutil.rmtree(_server.root, ignore_errors=True)
        _server = None


def lake_at(folder: Path) -> StoreLocation:
    """The store kept in ``folder`` (its data files) and in a catalog database named after
    it: the same folder gives the same store."""
    server = catalog_server()
    name = "lake_" + hashlib.blake2b(str(folder.resolve()).encode(), digest_size=10).hexdigest()
    server.ensure_database(name)
    return StoreLocation(catalog=server.dsn(name), data_path=f"{folder.resolve() / 'lake'}/")


def store_env(store: StoreLocation) -> dict[str, str]:
    """The environment that points a ``spend-ledger`` process at ``store``."""
    return {"SPEND_LEDGER_STORE_CATALOG": store.catalog, "SPEND_LEDGER_STORE_DATA_PATH": store.data_path}


def store_settings(store: StoreLocation) -> dict[str, object]:
    """The settings (for ``Settings.model_copy(update=...)``) that point at ``store``."""
    return {"store_catalog": SecretStr(store.catalog), "store_data_path": store.data_path}


def let_the_catalog_server_through(folder: Path) -> None:
    """As root, the embedded catalog server runs as another user (PostgreSQL refuses root),
    which must pass through every folder above the store: pytest makes its folders 0700.
    Adds the others' search bit (not read) on ``folder`` and the folders above it."""
    if os.geteuid() != 0:
        return
    for each in (folder.resolve(), *folder.resolve().parents):
        mode = each.stat().st_mode
        if not mode & 0o001:
            os.chmod(each, (mode & 0o7777) | 0o001)
