"""Turn images and texts into retrieval embeddings with a (loaded) model."""

import numpy as np
import torch

from unifashion_core.models.unifashion import UniFashion

MAX_QUERY_CHARS = 2000  # longer user texts are truncated (with a warning from the caller)


@torch.no_grad()
def embed_image_tokens(model: UniFashion, tokens: torch.Tensor) -> np.ndarray:
    """Vision tokens (B, T, C) -> normalised query embeddings (B, Q, D) float32."""
    return model.qformer.encode_image(tokens.float()).embeds.cpu().numpy()


@torch.no_grad()
def embed_pixels(model: UniFashion, pixels: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
    """Preprocessed images (B, 3, S, S) -> (vision tokens (B, T, C), query embeddings (B, Q, D))."""
    tokens = model.image_tokens(pixels)
    return tokens, embed_image_tokens(model, tokens)


@torch.no_grad()
def embed_texts(model: UniFashion, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Texts -> normalised text embeddings (M, D) float32 (text-only Q-Former mode)."""
    chunks = []
    for start in range(0, len(texts), batch_size):
        ids, mask = model.tokenize(texts[start : start + batch_size])
        chunks.append(model.qformer.encode_text(ids, mask).embeds.cpu().numpy())
    dim = model.qformer.embed_dim
    return np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)


@torch.no_grad()
def embed_composed(model: UniFashion, tokens: torch.Tensor, texts: list[str]) -> np.ndarray:
    """Reference image tokens + modification texts -> fused e_cls embeddings (B, D) (CIR query)."""
    ids, mask = model.tokenize(texts)
    return model.qformer.encode_multimodal(tokens.float(), ids, mask).embeds.cpu().numpy()
