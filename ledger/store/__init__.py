"""The DuckDB event store: its schema, the projector that fills it from the topics, and
the typed spend queries that read it (DESIGN section 7)."""
