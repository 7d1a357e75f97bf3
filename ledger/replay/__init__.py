"""Replay: every budget recomputed from the store under any price book, set-based in
DuckDB, checked against the live fold (DESIGN sections 6 and 7)."""
