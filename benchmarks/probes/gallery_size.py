"""Probe: how much of a split's full-protocol mean R is its gallery size?

Prints each split's full-protocol mean R, then the mean and standard deviation over 20 seeded
random 100-item sub-galleries (each item's own pair always among them), so a 200-item test split
can be compared with a 100-item val split at equal gallery size.

Usage: python benchmarks/probes/gallery_size.py CHECKPOINT DATA
"""

import sys

import numpy as np

from unifashion_core.checkpoint import load_checkpoint
from unifashion_core.data.manifest import load_dataset
from unifashion_core.features import feature_cache_dir, image_tokens
from unifashion_core.losses import max_sim
from unifashion_core.metrics.retrieval import paired_recalls

SIZE, DRAWS = 100, 20


def main(checkpoint: str, data: str) -> None:
    loaded = load_checkpoint(checkpoint)
    model, field = loaded.model, loaded.recipe.data.caption_field
    dataset = load_dataset(data)
    for split in ("val", "test"):
        items, tokens, _ = image_tokens(model.vision, dataset, dataset.split(split), feature_cache_dir(None, dataset))
        texts = [item.text(field) for item in items]
        sim = max_sim(model.embed_images(tokens), model.embed_texts(texts)).numpy()
        rng = np.random.default_rng(0)
        draws = [rng.choice(len(items), min(SIZE, len(items)), replace=False) for _ in range(DRAWS)]
        sub = [paired_recalls(sim[np.ix_(rows, rows)], [texts[i] for i in rows])["mean_R"] for rows in draws]
        print(f"{split}: {len(items)} items, full mean R {paired_recalls(sim, texts)['mean_R']:.3f}; "
              f"{SIZE}-item galleries {np.mean(sub):.3f} +- {np.std(sub):.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
