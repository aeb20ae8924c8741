"""The research part of the REST API (v1)."""
