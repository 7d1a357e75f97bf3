"""Adapters between other tools' budget and usage shapes and the ledger's domain."""
