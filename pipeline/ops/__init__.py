"""Operations commands' logic: named queries, reports, retention audit, registry, erasure, dead letters, and the
worker's HTTP client."""
