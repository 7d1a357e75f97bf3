"""Restore: live state rebuilt from the DuckDB store when the log is gone (DESIGN section 7)."""
