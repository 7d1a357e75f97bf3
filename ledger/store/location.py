"""Where the store is: the lake's catalog database and the folder of its data files
(docs/decisions/0001-analytics-table-format.md).

Settings name it: ``SPEND_LEDGER_STORE_CATALOG`` (a libpq connection string of the
PostgreSQL database holding the catalog) and ``SPEND_LEDGER_STORE_DATA_PATH`` (where the
Parquet files go). With no catalog set, the catalog is the embedded PostgreSQL server on
``<store_path>/catalog`` (``ledger.store.catalog_server``), database ``ledger``: started
here if none runs, and stopped again when the caller is done; with no data path set, the
files go to ``<store_path>/data/``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ledger.settings import Settings

EMBEDDED_DATABASE = "ledger"


@dataclass(frozen=True, slots=True)
class S3Access:
    """How DuckDB reaches a lake's files on S3-compatible storage."""

    endpoint: str | None  # host:port; None: AWS itself
    key_id: str | None
    secret: str | None
    region: str
    url_style: str  # "vhost" or "path"
    use_ssl: bool


@dataclass(frozen=True, slots=True)
class StoreLocation:
    """A lake: its catalog database and the folder (or object-store prefix) of its files."""

    catalog: str  # libpq connection string of the PostgreSQL catalog database
    data_path: str  # a local folder or an s3:// prefix, ending in "/"
    s3: S3Access | None = None  # for an s3:// data path

    def __str__(self) -> str:
        return f"the lake at {self.data_path} (catalog {self.catalog})"


def data_path_of(settings: Settings) -> str:
    """The data files' folder the settings name, ending in "/"."""
    path = settings.store_data_path or str((settings.store_path / "data").absolute())
    return path if path.endswith("/") else f"{path}/"


@contextmanager
def store_location(settings: Settings) -> Iterator[StoreLocation]:
    """The store the settings name, its catalog reachable while the block runs.

    An embedded catalog server this call had to start stops when the block ends; one that
    was running already (the dev stack's, the api's) is left to its owner."""
    data_path, s3 = data_path_of(settings), s3_access_of(settings)
    if settings.store_catalog:
        yield StoreLocation(settings.store_catalog.get_secret_value(), data_path, s3)
        return
    from ledger.store.catalog_server import CatalogServer

    with CatalogServer(settings.store_path.absolute() / "catalog") as server:
        server.ensure_database(EMBEDDED_DATABASE)
        yield StoreLocation(server.dsn(EMBEDDED_DATABASE), data_path, s3)


def s3_access_of(settings: Settings) -> S3Access | None:
    """The S3 access the settings give, for an s3:// data path (None for a local one)."""
    if not data_path_of(settings).startswith("s3://"):
        return None
    return S3Access(
        endpoint=settings.store_s3_endpoint,
        key_id=settings.store_s3_key_id,
        secret=settings.store_s3_secret.get_secret_value() if settings.store_s3_secret else None,
        region=settings.store_s3_region,
        url_style=settings.store_s3_url_style,
        use_ssl=settings.store_s3_use_ssl,
    )
