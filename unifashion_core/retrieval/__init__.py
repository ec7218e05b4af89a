"""Retrieval: gallery embedding, the late-interaction index (``retrieval.index``) and search."""
