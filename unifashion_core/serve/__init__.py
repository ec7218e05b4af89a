"""`unifashion serve`: the catalogue search service (FastAPI; an optional extra)."""
