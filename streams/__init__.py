"""The Faust app: topics, agents and tables that wire the ledger's domain to Kafka."""
