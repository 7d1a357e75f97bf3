"""The Python SDK: publish usage (to Kafka, or over the api) and subscribe to budget alerts.

``SpendLedgerProducer`` (asyncio) and ``SyncProducer`` / ``publish_usage`` (scripts) write
to the ``usage`` topic; ``HttpUsagePublisher`` posts to ``/v1/usage``; ``subscribe_alerts``
yields typed ``BudgetAlert`` records through a consumer group of its own.
"""

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
    "HttpUsagePublisher",
    "InvalidUsageEvent",
    "PublishUnconfirmed",
    "Published",
    "SpendLedgerProducer",
    "SyncProducer",
    "publish_usage",
    "subscribe_alerts",
    "validated_events",
]
