"""Where admitted rows go: the delivery protocol (``writer``), its store contract (``protocol``), ClickHouse, and
dead letters."""
