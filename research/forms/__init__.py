"""Forms of the research pages."""
