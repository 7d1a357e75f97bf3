"""The HTTP api (FastAPI): ingest, budgets, check, spend, replay, metrics."""
