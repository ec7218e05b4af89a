"""Metrics and bench reports for retrieval, captioning and generation."""
