"""The server's traced query encoders give the eager model's embeddings, and fall back to it."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unifashion_core.checkpoint import load_checkpoint
from unifashion_core.models.traced import QueryEncoders


@pytest.fixture(scope="module")
def model(tiny_phase1: Path):
    return load_checkpoint(tiny_phase1 / "phase1", heads=()).model


def _images(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(count)
    return [Image.fromarray(rng.integers(0, 255, (40 + 8 * i, 32, 3), dtype=np.uint8)) for i in range(count)]


def _eager(model, texts: list[str], images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from unifashion_core.models.vision import preprocess

    tokens = model.image_tokens(preprocess(images, model.vision))
    return (model.embed_texts(texts).numpy(), model.embed_images(tokens).numpy(),
            model.embed_composed(tokens, texts).numpy())


@pytest.mark.parametrize("count", [1, 4])
def test_traced_encoders_match_the_eager_model_on_new_shapes(model, count: int) -> None:
    encoders = QueryEncoders(model)
    assert encoders.fallbacks == {}
    assert all(isinstance(e, torch.jit.ScriptModule) for e in (encoders._text, encoders._image, encoders._composed))
    texts = ["a long red and white striped long-sleeve cotton shirt with a collar", "dress", "blue", "skirt"][:count]
    images = _images(count)
    texts_e, images_e, composed_e = _eager(model, texts, images)
    np.testing.assert_allclose(encoders.texts(texts), texts_e, atol=1e-5)
    np.testing.assert_allclose(encoders.images(images), images_e, atol=1e-5)
    np.testing.assert_allclose(encoders.composed(images, texts), composed_e, atol=1e-5)


def test_an_encoder_that_cannot_be_traced_stays_eager(model, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise RuntimeError("not traceable")

    monkeypatch.setattr(torch.jit, "trace", refuse)
    encoders = QueryEncoders(model)
    assert set(encoders.fallbacks) == {"text", "image", "composed"}
    assert "not traceable" in encoders.fallbacks["text"]
    texts, images = ["red shirt", "blue dress"], _images(2)
    texts_e, images_e, composed_e = _eager(model, texts, images)
    np.testing.assert_allclose(encoders.texts(texts), texts_e, atol=1e-6)
    np.testing.assert_allclose(encoders.images(images), images_e, atol=1e-6)
    np.testing.assert_allclose(encoders.composed(images, texts), composed_e, atol=1e-6)


def test_a_graph_that_disagrees_with_the_model_is_not_used(model, monkeypatch: pytest.MonkeyPatch) -> None:
    real_trace = torch.jit.trace

    def wrong(module, example, **kwargs):  # a graph that gives another answer than the module
        traced = real_trace(module, example, **kwargs)
        return lambda *inputs: traced(*inputs) + 0.01

    monkeypatch.setattr(torch.jit, "trace", wrong)
    encoders = QueryEncoders(model)
    assert set(encoders.fallbacks) == {"text", "image", "composed"}
    assert "differs" in encoders.fallbacks["image"]
    np.testing.assert_allclose(encoders.texts(["red shirt"]), model.embed_texts(["red shirt"]).numpy(), atol=1e-6)
