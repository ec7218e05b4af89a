"""The same-run baseline for retrieval: frozen vision features + MiniLM text embeddings + ridge map.

DESIGN's floor (docs/design.md section 4): image features are the mean-pooled tokens of a frozen
EfficientNet-Lite0 at 224 px (ImageNet weights), whatever the checkpoint's own encoder and image
size, so the baseline's figure depends only on the data and is comparable across runs; text
features are all-MiniLM-L6-v2 mean-pooled sentence embeddings; a ridge regression fitted on the
training split maps images into the text space. The trained model must beat this floor.
"""

from pathlib import Path

import numpy as np
import torch

from unifashion_core.batching import batch_slices
from unifashion_core.config import VisionConfig
from unifashion_core.data.manifest import Dataset, Item
from unifashion_core.errors import UserError
from unifashion_core.features import image_tokens
from unifashion_core.models.weights import MINILM, resolve_weights
from unifashion_core.progress import NullProgress, Progress

BASELINE_VISION = VisionConfig(name="efficientnet_lite0", image_size=224)


def baseline_tokens(
    vision: VisionConfig, dataset: Dataset, items: list[Item], cache_dir: Path | None,
    progress: Progress = NullProgress(),
) -> tuple[list[Item], torch.Tensor]:
    """The baseline encoder's frozen tokens of ``items`` (cached like the model's): kept items, (N, T, C)."""
    from unifashion_core.models.vision import build_vision_encoder

    encoder = build_vision_encoder(vision).eval()
    kept, tokens, _ = image_tokens(encoder, dataset, items, cache_dir, progress)
    return kept, tokens


@torch.no_grad()
def minilm_sentence_embeddings(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """all-MiniLM-L6-v2 mean-pooled, L2-normalised sentence embeddings (M, 384)."""
    from transformers import AutoModel, AutoTokenizer

    path = str(resolve_weights(MINILM))
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    chunks = []
    for rows in batch_slices(len(texts), batch_size):
        batch = tokenizer(texts[rows], padding=True, truncation=True,
                          max_length=64, return_tensors="pt")
        hidden = model(**batch).last_hidden_state  # (B, L, 384)
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        chunks.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(chunks)


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """Least-squares map W (with bias row) minimising |[x 1] W - y|^2 + alpha |W|^2."""
    x1 = np.concatenate([x, np.ones((len(x), 1), x.dtype)], axis=1).astype(np.float64)
    gram = x1.T @ x1 + alpha * np.eye(x1.shape[1])
    return np.linalg.solve(gram, x1.T @ y.astype(np.float64)).astype(np.float32)


def apply_ridge(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Map features with a fitted ridge map and L2-normalise the result."""
    mapped = np.concatenate([x, np.ones((len(x), 1), x.dtype)], axis=1) @ weights
    return mapped / np.maximum(np.linalg.norm(mapped, axis=1, keepdims=True), 1e-12)


def pooled_image_features(tokens: torch.Tensor) -> np.ndarray:
    """Mean-pooled frozen vision tokens: (N, T, C) -> (N, C)."""
    return tokens.float().mean(dim=1).numpy()


def baseline_similarity(
    train_tokens: torch.Tensor, train_texts: list[str], tokens: torch.Tensor, texts: list[str], alpha: float = 10.0
) -> np.ndarray:
    """Image x text cosine similarity (N, M) of the ridge baseline fitted on the training pairs."""
    x_train = pooled_image_features(train_tokens)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    weights = fit_ridge((x_train - mean) / std, minilm_sentence_embeddings(train_texts), alpha)
    images = apply_ridge((pooled_image_features(tokens) - mean) / std, weights)
    return images @ minilm_sentence_embeddings(texts).T


def split_baseline_similarity(
    dataset: Dataset, items: list[Item], texts: list[str], field: str, vision: VisionConfig = BASELINE_VISION,
    cache: Path | None = None, progress: Progress = NullProgress(),
) -> np.ndarray:
    """The ridge baseline's image x text similarity (N, M) over ``items``, fitted on the training split.

    Args:
        dataset: the prepared dataset (its ``train`` split fits the ridge map).
        items: the gallery items.
        texts: the query texts.
        field: the item text field the map is fitted on.
        vision: the baseline's frozen encoder.
        cache: where its frozen features are cached (None: not on disk).
        progress: progress events.

    Raises:
        UserError: no usable training item, or an item of ``items`` whose image cannot be read.
    """
    train_items, train_tokens = baseline_tokens(vision, dataset, dataset.split("train"), cache, progress)
    if not train_items:
        raise UserError(f"{dataset.root} has no usable training items to fit the ridge baseline on.")
    kept, test_tokens = baseline_tokens(vision, dataset, items, cache, progress)
    if len(kept) != len(items):
        raise UserError(f"{len(items) - len(kept)} images of the split could not be read for the baseline.")
    return baseline_similarity(train_tokens, [item.text(field) for item in train_items], test_tokens, texts)
