"""Test infrastructure shared by the integration tests (processes and transports, no assertions)."""
