"""The Python SDK: publish usage (to Kafka, or over the api) and subscribe to budget alerts.

``SpendLedgerProducer`` (asyncio) and ``SyncProducer`` / ``publish_usage`` (scripts) write
to the ``usage`` topic; ``HttpUsagePublisher`` posts to ``/v1/usage``; ``subscribe_alerts``
yields typed ``BudgetAlert`` records through a consumer group of its own.
``ledger.admission`` / ``ledger.admission_sync`` (module ``ledger.sdk.admission``, not
re-exported here so the name stays the module's) hold a call's estimate before it is made.
"""

from ledger.sdk.admission import AdmissionHold, RateLimitExceededError, SyncAdmissionHold
from ledger.sdk.alerts import subscribe_alerts
from ledger.sdk.producer import (
    HttpUsagePublisher,
    InvalidUsageEvent,
    Published,
    PublishUnconfirmed,
    SpendLedgerProducer,
    SyncProducer,
    publish_usage,
    validated_events,
)

__all__ = [
    "AdmissionHold",
    "HttpUsagePublisher",
    "InvalidUsageEvent",
    "PublishUnconfirmed",
    "Published",
    "RateLimitExceededError",
    "SpendLedgerProducer",
    "SyncAdmissionHold",
    "SyncProducer",
    "publish_usage",
    "subscribe_alerts",
    "validated_events",
]
