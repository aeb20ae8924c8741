"""Every read in research, scoped to what the user may see."""
