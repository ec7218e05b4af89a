"""Probe: does adding text->generated-caption similarity help text->image search?

Scores each text query t against gallery image i by ``max_q <z_iq, t> + w <c_i, t>``, where ``c_i``
embeds the checkpoint's own caption of image i (the composed score's "w/ cap" term, applied to text
search), and prints full-protocol mean R and short-query P@5 per shape for several ``w``.

Usage: python benchmarks/probes/caption_fused_search.py CHECKPOINT DATA [SPLIT]   (SPLIT: val)
"""

import sys

import numpy as np

from unifashion_core.checkpoint import load_checkpoint
from unifashion_core.data.manifest import load_dataset
from unifashion_core.evaluation import bench_queries as bq
from unifashion_core.features import feature_cache_dir, image_tokens
from unifashion_core.losses import max_sim
from unifashion_core.metrics.retrieval import paired_recalls

WEIGHTS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 2.0)


def main(checkpoint: str, data: str, split: str = "val") -> None:
    loaded = load_checkpoint(checkpoint, heads=("caption",))
    model, field = loaded.model, loaded.recipe.data.caption_field
    dataset = load_dataset(data)
    items, tokens, _ = image_tokens(model.vision, dataset, dataset.split(split), feature_cache_dir(None, dataset))
    texts = [item.text(field) for item in items]
    images, captions = model.embed_images(tokens), model.embed_texts(model.caption_images(tokens))
    paired = model.embed_texts(texts)
    image_scores = max_sim(images, paired).numpy()  # (N images, N texts)
    caption_scores = (captions @ paired.T).numpy()
    queries = bq.short_queries(items, bq.parse_shapes(bq.DEFAULT_SHAPES[dataset.report["dataset"]], items), 200, 0)
    embedded = model.embed_texts([q.text for q in queries])
    relevant = np.array([[q.matches(item) for item in items] for q in queries])
    query_images = max_sim(images, embedded).numpy().T  # (M, N)
    query_captions = (embedded @ captions.T).numpy()
    for w in WEIGHTS:
        recalls = paired_recalls(image_scores + w * caption_scores, texts)
        shapes = bq.summarise(queries, bq.score_queries(query_images + w * query_captions, relevant), relevant, "shape")
        figures = "  ".join(f"{shape} {values['P@5']:.3f}" for shape, values in shapes.items())
        print(f"w={w:<5g} mean R {recalls['mean_R']:.3f}  {figures}")


if __name__ == "__main__":
    main(*sys.argv[1:])
