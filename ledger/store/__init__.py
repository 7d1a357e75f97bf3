"""The event store, a DuckLake (docs/decisions/0001-analytics-table-format.md): where it
is, its schema, the projector that fills it from the topics, its maintenance, and the
typed spend queries and ad-hoc SQL that read it (DESIGN section 7). No other package
opens DuckDB on the store or its catalog."""
