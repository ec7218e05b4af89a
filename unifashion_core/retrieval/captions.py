"""Gallery captions for composed retrieval (DESIGN.md section 5, the "w/ cap" score).

Each gallery image is captioned by the checkpoint's own captioner (image queries -> adapter ->
LLM, in the recipe's caption style) and the caption is embedded with the Q-Former's text mode.
The composed score then adds ``w * <e_cls, c>`` to the image term.
"""

import numpy as np
import torch

from unifashion_core.models.unifashion import UniFashion
from unifashion_core.progress import NullProgress, Progress
from unifashion_core.retrieval.embed import embed_texts

TASK = "caption gallery"


@torch.no_grad()
def caption_tokens(
    model: UniFashion,
    tokens: torch.Tensor,
    batch_size: int = 32,
    progress: Progress = NullProgress(),
) -> list[str]:
    """Caption images from their vision tokens, greedily, in the recipe's style.

    Args:
        model: a model with a caption head.
        tokens: ``(N, T, C)`` vision tokens (any float dtype, on the model's device).
        batch_size: images per ``generate`` call.
        progress: receives one ``caption gallery`` step per image.

    Returns:
        N captions.
    """
    captioner = model.recipe.model.captioner
    was_training = model.qformer.training
    model.qformer.eval()
    captions: list[str] = []
    progress.start(TASK, len(tokens))
    for start in range(0, len(tokens), batch_size):
        queries = model.generation_queries(tokens[start : start + batch_size].float(), None)  # (b, Q, H)
        captions += model.captioner.generate(queries, captioner.style, max_new_tokens=captioner.max_new_tokens)
        progress.advance(TASK, len(queries))
    model.qformer.train(was_training)
    return captions


def caption_gallery(
    model: UniFashion, tokens: torch.Tensor, batch_size: int = 32, progress: Progress = NullProgress()
) -> tuple[list[str], np.ndarray]:
    """Captions of the gallery images and their text embeddings ``(N, D)`` float32."""
    captions = caption_tokens(model, tokens, batch_size, progress)
    return captions, embed_texts(model, captions)
