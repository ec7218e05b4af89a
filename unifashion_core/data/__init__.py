"""Datasets: the shared manifest format, one adapter per dataset, image loading, the demo data."""
