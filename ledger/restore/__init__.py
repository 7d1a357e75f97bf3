"""Restore: live state rebuilt from the store when the log is gone (DESIGN section 7).

``plan.plan_restore`` computes what to put back; ``run.restore_from_store`` plans and
publishes it (``spend-ledger restore``); ``run.wait_applied`` waits for the worker.
"""
