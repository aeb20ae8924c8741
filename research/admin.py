"""Read-only admin views of findings, incidents and release decisions, for investigations."""
