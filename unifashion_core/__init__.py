"""UniFashion core: models, data, training, retrieval and evaluation (no CLI code here)."""

__version__ = "0.1.0"
