"""The registry's pages are agreements' (who holds access) and inference's (the kill switch)."""
