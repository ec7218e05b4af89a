"""The whole model: frozen vision encoder + Q-Former, with optional caption and generation heads.

Every consumer (index build, search, the benches, validation, phase 2) embeds and captions
through the batched methods here: ``embed_images``, ``embed_texts``, ``embed_composed``,
``caption_images`` and ``source_queries``. They run the Q-Former (and captioner) in eval mode,
without gradients, and return CPU tensors.
"""

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from unifashion_core.batching import batch_slices
from unifashion_core.config import ModelConfig
from unifashion_core.progress import NullProgress, Progress

HEADS = ("caption", "generate")
EMBED_BATCH = 64
CAPTION_BATCH = 32


class UniFashion(nn.Module):
    """One Q-Former feeding retrieval, a captioner (LLM) and a generator (diffusion).

    The vision encoder is frozen and always runs in eval mode under ``no_grad``.

    Attributes:
        config: the recipe's ``model`` section the model was built from.
    """

    def __init__(
        self,
        config: ModelConfig,
        vision: nn.Module,
        qformer: nn.Module,
        tokenizer: object,
        captioner: nn.Module | None = None,
        generator: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.vision = vision.eval().requires_grad_(False)
        self.qformer = qformer
        self.tokenizer = tokenizer
        self.captioner = captioner
        self.generator = generator

    def train(self, mode: bool = True) -> "UniFashion":
        super().train(mode)
        self.vision.eval()
        return self

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the activations of the Q-Former, the LLM and the UNet in the backward pass
        instead of keeping them (recipe key ``train.gradient_checkpointing``): less memory for
        about a third more compute, the same gradients."""
        kwargs = {"use_reentrant": False}
        self.qformer.qformer.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        if self.captioner is not None:
            self.captioner.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        if self.generator is not None:
            self.generator.unet.enable_gradient_checkpointing()

    @property
    def device(self) -> torch.device:
        return self.qformer.query_tokens.device

    @contextmanager
    def _evaluating(self, *modules: nn.Module) -> Iterator[None]:
        """``modules`` in eval mode for the block, then back to the mode each was in."""
        # Only modules with a part in training mode are switched: ``train()`` walks every submodule,
        # which cost about 5 ms per query (twice) when a served model, already in eval mode, embeds one.
        training = [module for module in modules if any(part.training for part in module.modules())]
        modes = [module.training for module in training]
        for module in training:
            module.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            for module, mode in zip(training, modes, strict=True):
                module.train(mode)

    # --- encoders ------------------------------------------------------------------------

    @torch.no_grad()
    def image_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Frozen vision features: (B, 3, S, S) -> (B, N, C)."""
        return self.vision(pixel_values)

    def vision_top(self, features: torch.Tensor, batch_size: int = EMBED_BATCH) -> torch.Tensor:
        """Vision tokens (N, T, C) from cached features: the trunk's maps (N, C', H', W') through the
        top stages phase 1a trains (``model.vision.trainable_blocks``), or the tokens themselves
        when the encoder is frozen throughout."""
        num_top = self.config.vision.trainable_blocks
        if not num_top:
            return features
        with torch.no_grad():  # ``features`` may be rows on disk (``shards.Rows``), read a chunk at a time
            chunks = [features[rows] for rows in batch_slices(len(features), batch_size)]
            return torch.cat([self.vision.top(chunk.to(self.device).float(), num_top).to(chunk.dtype)
                              for chunk in chunks])

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> (input_ids, attention_mask) on the model's device, truncated to the tokenizer's
        ``model_max_length`` (the recipe's ``data.max_text_length``)."""
        from unifashion_core.models.qformer import tokenize

        input_ids, attention_mask = tokenize(self.tokenizer, texts, self.tokenizer.model_max_length)
        return input_ids.to(self.device), attention_mask.to(self.device)

    def null_image_tokens(self, batch_size: int) -> torch.Tensor:
        """The "no image" input for text-only generation: one all-zero token per example."""
        return torch.zeros(batch_size, 1, self.vision.num_channels, device=self.device)

    def generation_queries(
        self, image_tokens: torch.Tensor | None, texts: list[str] | None
    ) -> torch.Tensor:
        """Query outputs that condition the heads: (B, Q, H).

        Image only: image mode. Text only: multimodal mode over the null image. Both: multimodal.
        """
        if texts is None:
            if image_tokens is None:
                raise ValueError("need an image, a text, or both")
            return self.qformer.encode_image(image_tokens).query_output
        if image_tokens is None:
            image_tokens = self.null_image_tokens(len(texts))
        input_ids, attention_mask = self.tokenize(texts)
        return self.qformer.encode_multimodal(image_tokens, input_ids, attention_mask).query_output

    @staticmethod
    def query_source(image_tokens: torch.Tensor | None, texts: list[str] | None) -> str:
        """Which of the generator's ``QUERY_SOURCES`` :meth:`generation_queries` makes from these inputs."""
        if texts is None:
            return "image"
        return "text" if image_tokens is None else "multimodal"

    # --- batched work over many items ------------------------------------------------------

    def embed_images(self, image_tokens: torch.Tensor, batch_size: int = EMBED_BATCH) -> torch.Tensor:
        """Vision tokens (N, T, C) -> normalised image query embeddings (N, Q, D) float32 (CPU)."""
        with self._evaluating(self.qformer):
            chunks = [self.qformer.encode_image(image_tokens[rows].to(self.device).float()).embeds.cpu()
                      for rows in batch_slices(len(image_tokens), batch_size)]
        return torch.cat(chunks) if chunks else torch.zeros(0, self.qformer.num_query_tokens, self.qformer.embed_dim)

    def embed_texts(self, texts: list[str], batch_size: int = EMBED_BATCH) -> torch.Tensor:
        """Texts -> normalised text embeddings (M, D) float32 (CPU), the Q-Former's text mode."""
        with self._evaluating(self.qformer):
            chunks = [self.qformer.encode_text(*self.tokenize(texts[rows])).embeds.cpu()
                      for rows in batch_slices(len(texts), batch_size)]
        return torch.cat(chunks) if chunks else torch.zeros(0, self.qformer.embed_dim)

    def embed_composed(
        self, image_tokens: torch.Tensor, texts: list[str], batch_size: int = EMBED_BATCH
    ) -> torch.Tensor:
        """Reference image tokens (M, T, C) + modification texts -> fused e_cls (M, D) float32 (CPU)."""
        with self._evaluating(self.qformer):
            chunks = [
                self.qformer.encode_multimodal(image_tokens[rows].to(self.device).float(),
                                               *self.tokenize(texts[rows])).embeds.cpu()
                for rows in batch_slices(len(texts), batch_size)
            ]
        return torch.cat(chunks) if chunks else torch.zeros(0, self.qformer.embed_dim)

    def caption_images(
        self,
        image_tokens: torch.Tensor,
        style: str | None = None,
        max_new_tokens: int | None = None,
        num_beams: int = 1,
        batch_size: int = CAPTION_BATCH,
        progress: Progress = NullProgress(),
        task: str = "caption",
    ) -> list[str]:
        """Caption images from their vision tokens (N, T, C): image queries -> adapter -> LLM.

        Args:
            image_tokens: vision tokens of the N images (any float dtype).
            style: caption style (default: ``model.captioner.style``).
            max_new_tokens: length cap (default: ``model.captioner.max_new_tokens``).
            num_beams: beam width (1 = greedy).
            batch_size: images per ``generate`` call.
            progress: receives one ``task`` step per image.
            task: the progress task's name.

        Returns:
            N captions.
        """
        captioner = self.config.captioner
        style = style or captioner.style
        captions: list[str] = []
        progress.start(task, len(image_tokens))
        with self._evaluating(self.qformer, self.captioner):
            for rows in batch_slices(len(image_tokens), batch_size):
                queries = self.generation_queries(image_tokens[rows].to(self.device).float(), None)  # (b, Q, H)
                captions += self.captioner.generate(queries, style, max_new_tokens=max_new_tokens or
                                                    captioner.max_new_tokens, num_beams=num_beams)
                progress.advance(task, len(queries))
        return captions

    def source_queries(
        self, source: str, image_tokens: torch.Tensor, texts: list[str], batch_size: int = EMBED_BATCH
    ) -> torch.Tensor:
        """:meth:`generation_queries` of one source for N items, in batches: (N, Q, H) on the device.

        Args:
            source: "text" (``texts`` alone), "image" (``image_tokens`` alone) or "multimodal".
            image_tokens: (N, T, C) vision tokens of the items.
            texts: their N texts.
        """
        with self._evaluating(self.qformer):
            outputs = [
                self.generation_queries(None if source == "text" else image_tokens[rows].to(self.device).float(),
                                        None if source == "image" else texts[rows])
                for rows in batch_slices(len(texts), batch_size)
            ]
        return torch.cat(outputs) if outputs else torch.empty(0)

    def fingerprint(self) -> str:
        """SHA-256 (16 hex) of what determines retrieval embeddings: vision + Q-Former weights."""
        digest = hashlib.sha256()
        for prefix, module in (("vision.", self.vision), ("qformer.", self.qformer)):
            for name, tensor in sorted(module.state_dict().items()):
                digest.update((prefix + name).encode())
                digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]


def build_model(config: ModelConfig, max_text_length: int = 64, heads: tuple[str, ...] = HEADS) -> UniFashion:
    """Build the model a recipe's ``model`` section describes, with the requested heads.

    Args:
        config: the recipe's ``model`` section (weights come from the sources it names).
        max_text_length: the recipe's ``data.max_text_length`` (the tokenizer's truncation).
        heads: ``caption`` and/or ``generate``.
    """
    import dataclasses

    from unifashion_core.models.qformer import build_qformer
    from unifashion_core.models.vision import build_vision_encoder

    vision = build_vision_encoder(config.vision)
    qformer_cfg = config.qformer
    if qformer_cfg.init == "blip2" and not qformer_cfg.weights:  # one BLIP-2 checkpoint holds both
        qformer_cfg = dataclasses.replace(qformer_cfg, weights=config.vision.weights)
    qformer, tokenizer = build_qformer(qformer_cfg, vision.num_channels, max_text_length)
    captioner = generator = None
    if "caption" in heads:
        from unifashion_core.models.captioner import build_captioner

        captioner = build_captioner(config.captioner, qformer.hidden_size)
    if "generate" in heads:
        from unifashion_core.models.generator import build_generator

        generator = build_generator(config.generator, qformer.hidden_size, qformer.num_query_tokens)
    return UniFashion(config, vision, qformer, tokenizer, captioner, generator)
