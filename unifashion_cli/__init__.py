"""The `unifashion` command line: parsing, progress and printing only (the work is in unifashion_core)."""
