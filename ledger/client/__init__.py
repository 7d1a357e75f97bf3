"""A small client of the spend-ledger HTTP api, shared by the CLI and the SDK.

``LedgerClient`` is synchronous (httpx), ``AsyncLedgerClient`` its asyncio twin; both
build the same requests and decode the same answers (``calls``). Money goes out as exact
decimal text (a ``Decimal``, ``str`` or ``int`` of USD, never a float) and comes back as
integer ``*_nanos``. Every failure is a ``LedgerClientError``: ``LedgerApiError`` for an
error answer (built from ``{"error": {"message", "type", "fields"}}``),
``LedgerConnectionError`` when the api cannot be reached.
"""

from ledger.client.admission_calls import (
    AdmissionRefused,
    Admitted,
    BudgetRefused,
    HoldInfo,
    ModelLimitsInfo,
    RateLimited,
    RateLimitsInfo,
)
from ledger.client.answers import (
    AlertRecord,
    BudgetExceeded,
    BudgetInfo,
    BudgetWrite,
    CheckAnswer,
    LedgerApiError,
    LedgerClientError,
    LedgerConnectionError,
    LimitInfo,
    ModelLimit,
    Money,
    PublishFailed,
    PublishResult,
    ScopeCheckInfo,
    SpendReport,
    SpendRow,
    usd,
)
from ledger.client.calls import PUBLISH_BYTES_MAX, PUBLISH_EVENTS_MAX, usage_bodies, usd_text
from ledger.client.clients import TIMEOUT_S_DEFAULT, AsyncLedgerClient, LedgerClient

__all__ = [
    "PUBLISH_BYTES_MAX",
    "PUBLISH_EVENTS_MAX",
    "TIMEOUT_S_DEFAULT",
    "AdmissionRefused",
    "Admitted",
    "AlertRecord",
    "AsyncLedgerClient",
    "BudgetExceeded",
    "BudgetInfo",
    "BudgetRefused",
    "BudgetWrite",
    "CheckAnswer",
    "HoldInfo",
    "LedgerApiError",
    "LedgerClient",
    "LedgerClientError",
    "LedgerConnectionError",
    "LimitInfo",
    "ModelLimit",
    "ModelLimitsInfo",
    "Money",
    "PublishFailed",
    "PublishResult",
    "RateLimited",
    "RateLimitsInfo",
    "ScopeCheckInfo",
    "SpendReport",
    "SpendRow",
    "usage_bodies",
    "usd",
    "usd_text",
]
