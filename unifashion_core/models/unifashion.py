"""The whole model: frozen vision encoder + Q-Former, with optional caption and generation heads."""

import hashlib

import torch
from torch import nn

from unifashion_core.config import Recipe

HEADS = ("caption", "generate")


class UniFashion(nn.Module):
    """One Q-Former feeding retrieval, a captioner (LLM) and a generator (diffusion).

    The vision encoder is frozen and always runs in eval mode under ``no_grad``.
    """

    def __init__(
        self,
        recipe: Recipe,
        vision: nn.Module,
        qformer: nn.Module,
        tokenizer: object,
        captioner: nn.Module | None = None,
        generator: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.recipe = recipe
        self.vision = vision.eval().requires_grad_(False)
        self.qformer = qformer
        self.tokenizer = tokenizer
        self.captioner = captioner
        self.generator = generator

    def train(self, mode: bool = True) -> "UniFashion":
        super().train(mode)
        self.vision.eval()
        return self

    # --- encoders ------------------------------------------------------------------------

    @torch.no_grad()
    def image_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Frozen vision features: (B, 3, S, S) -> (B, N, C)."""
        return self.vision(pixel_values)

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> (input_ids, attention_mask) on the model's device, truncated to ``data.max_text_length``."""
        from unifashion_core.models.qformer import tokenize

        input_ids, attention_mask = tokenize(self.tokenizer, texts, self.recipe.data.max_text_length)
        device = self.qformer.query_tokens.device
        return input_ids.to(device), attention_mask.to(device)

    def null_image_tokens(self, batch_size: int) -> torch.Tensor:
        """The "no image" input for text-only generation: one all-zero token per example."""
        channels = self.vision.num_channels
        return torch.zeros(batch_size, 1, channels, device=self.qformer.query_tokens.device)

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

    @torch.no_grad()
    def source_queries(
        self, source: str, image_tokens: torch.Tensor, texts: list[str], batch_size: int = 64
    ) -> torch.Tensor:
        """:meth:`generation_queries` of one source for N items, in batches: (N, Q, H).

        Args:
            source: "text" (``texts`` alone), "image" (``image_tokens`` alone) or "multimodal".
            image_tokens: (N, T, C) vision tokens of the items.
            texts: their N texts.
        """
        outputs = [
            self.generation_queries(None if source == "text" else image_tokens[i : i + batch_size].float(),
                                    None if source == "image" else texts[i : i + batch_size])
            for i in range(0, len(texts), batch_size)
        ]
        return torch.cat(outputs) if outputs else torch.empty(0)

    @staticmethod
    def query_source(image_tokens: torch.Tensor | None, texts: list[str] | None) -> str:
        """Which of the generator's ``QUERY_SOURCES`` :meth:`generation_queries` makes from these inputs."""
        if texts is None:
            return "image"
        return "text" if image_tokens is None else "multimodal"

    def fingerprint(self) -> str:
        """SHA-256 (16 hex) of what determines retrieval embeddings: vision + Q-Former weights."""
        digest = hashlib.sha256()
        for prefix, module in (("vision.", self.vision), ("qformer.", self.qformer)):
            for name, tensor in sorted(module.state_dict().items()):
                digest.update((prefix + name).encode())
                digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]


def build_model(recipe: Recipe, heads: tuple[str, ...] = HEADS) -> UniFashion:
    """Build the model a recipe describes, with the requested heads (weights from their sources)."""
    from unifashion_core.models.qformer import build_qformer
    from unifashion_core.models.vision import build_vision_encoder

    m = recipe.model
    vision = build_vision_encoder(m.vision.name, m.vision.weights, m.vision.image_size)
    qformer, tokenizer = build_qformer(
        m.qformer.init,
        m.qformer.weights or (m.vision.weights if m.qformer.init == "blip2" else ""),
        vision_width=vision.num_channels,
        num_query_tokens=m.qformer.num_query_tokens,
        num_hidden_layers=m.qformer.num_hidden_layers,
        cross_attention_frequency=m.qformer.cross_attention_frequency,
        embed_dim=m.qformer.embed_dim,
        hidden_size=m.qformer.hidden_size,
        num_attention_heads=m.qformer.num_attention_heads,
        intermediate_size=m.qformer.intermediate_size,
        max_text_length=recipe.data.max_text_length,
        text_pooling=m.qformer.text_pooling,
    )
    captioner = _build_captioner(recipe, qformer.hidden_size) if "caption" in heads else None
    generator = _build_generator(recipe, qformer) if "generate" in heads else None
    return UniFashion(recipe, vision, qformer, tokenizer, captioner, generator)


def _build_captioner(recipe: Recipe, query_width: int) -> nn.Module:
    from unifashion_core.models.captioner import build_captioner

    c = recipe.model.captioner
    return build_captioner(
        c.llm, query_width, lora_r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
        lora_target_modules=c.lora_target_modules, llm_hidden_size=c.llm_hidden_size or None,
        llm_layers=c.llm_layers or None, max_caption_length=c.max_caption_length,
    )


def _build_generator(recipe: Recipe, qformer: nn.Module) -> nn.Module:
    from unifashion_core.models.generator import build_generator

    g = recipe.model.generator
    return build_generator(
        g.preset, query_width=qformer.hidden_size, num_queries=qformer.num_query_tokens,
        unet=g.unet, vae=g.vae, resolution=g.resolution, inpainting=g.inpainting,
        use_sketch=g.use_sketch, prediction_type=g.prediction_type, pooled_conditioning=g.pooled_conditioning,
    )
