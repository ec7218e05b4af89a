"""Typed, strict, frozen recipes: YAML file + ``key=value`` overrides -> ``Recipe``.

Every field has a default, so a recipe lists only what differs. Unknown keys are errors with a
"did you mean" suggestion; values are converted to the field's type (YAML reads ``3e-4`` as a
string); cross-field rules live in ``__post_init__``.
"""

import dataclasses
import difflib
import functools
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from unifashion_core.errors import UserError

Preset = Literal["tiny", "small", "paper"]
Schedule = Literal["constant", "linear", "cosine", "onecycle"]
Phase1Stage = Literal["retrieval", "caption", "generate"]
PHASE1_STAGES: tuple[Phase1Stage, ...] = typing.get_args(Phase1Stage)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def choices(cls: type, name: str) -> tuple[Any, ...]:
    """The allowed values of a ``Literal`` field (or of the items of a ``tuple[Literal, ...]``)."""
    hint = _hints(cls)[name]
    if typing.get_origin(hint) is tuple:
        hint = typing.get_args(hint)[0]
    return typing.get_args(hint)


def _check_literal(where: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        raise UserError(f"{where} is {value!r}; choose one of {', '.join(map(str, allowed))}.")


# The allowed range (lowest, highest; None = open) of the numeric keys that have one, checked
# whoever builds the section. ``train.<stage>`` stands for every stage's optimiser section.
RANGES: dict[str, tuple[float | None, float | None]] = {
    "seed": (0, None),
    "data.max_text_length": (1, 4096),
    "model.vision.image_size": (16, 4096),
    **{f"model.qformer.{key}": (1, None) for key in (
        "num_hidden_layers", "cross_attention_frequency", "embed_dim", "hidden_size", "num_attention_heads",
        "intermediate_size")},
    "model.qformer.dropout": (0.0, 0.99),
    "model.captioner.lora_r": (0, None),  # 0 trains the whole LM
    "model.captioner.lora_dropout": (0.0, 0.99),
    "model.captioner.llm_hidden_size": (0, None),
    "model.captioner.llm_layers": (0, None),
    "model.captioner.max_caption_length": (1, 4096),
    "model.captioner.max_new_tokens": (1, 4096),
    "model.generator.resolution": (8, 4096),
    "model.generator.cfg_drop_prob": (0.0, 1.0),
    "model.generator.num_inference_steps": (1, 1000),
    "model.generator.guidance_scale": (0.0, 50.0),
    "model.zero_shot_image_weight": (0.0, 1.0),
    **{f"loss.{key}": (0.0, None) for key in ("itc_weight", "itm_weight", "cir_weight", "itg_weight", "q2i_weight")},
    "loss.label_smoothing": (0.0, 0.99),
    "data.image_flip": (0.0, 1.0),
    "train.grad_accum_steps": (1, None),
    "train.num_workers": (0, None),
    "train.eval_every": (0, None),
    "train.save_every": (0, None),
    "train.log_every": (1, None),
    "train.eval_max_items": (1, None),
    "train.eval_fid_items": (0, None),
    "train.<stage>.lr": (0.0, None),
    "train.<stage>.eps": (1e-12, None),
    "train.<stage>.weight_decay": (0.0, None),
    "train.<stage>.warmup_ratio": (0.0, 1.0),
}


def _check_range(where: str, value: Any) -> None:
    low, high = RANGES.get(where, (None, None))
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low} and {high}" if low is not None and high is not None else (
            f"at least {low}" if low is not None else f"at most {high}")
        raise UserError(f"{where} must be {bounds}, got {value!r}.")


class _Section:
    """Base of every recipe section: ``Literal`` fields are checked whoever builds the section.

    ``_key`` is the section's dotted recipe key, used in error messages.
    """

    _key = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            hint = _hints(type(self))[f.name]
            value = getattr(self, f.name)
            where = f"{self._key}.{f.name}".lstrip(".")
            _check_range(where, value)
            if typing.get_origin(hint) is Literal:
                _check_literal(where, value, typing.get_args(hint))
            elif typing.get_origin(hint) is tuple and typing.get_origin(typing.get_args(hint)[0]) is Literal:
                for entry in value:
                    _check_literal(f"{where} entry", entry, typing.get_args(typing.get_args(hint)[0]))
        self.check()

    def check(self) -> None:
        """Cross-field rules of the section (none by default)."""


@dataclass(frozen=True)
class TextAugmentConfig(_Section):
    """Phase 1a: how each training text is varied, per example and per step (all 0 = the plain text).

    Applied in this order, each with its own probability: use the other text field, replace the
    text by a phrase of a random subset of the item's attributes, drop words, wrap the text in a
    shopper's phrasing (``train/text_augment.py``).
    """

    _key = "data.augment"
    other_field: float = 0.0  # the description in place of the caption (or the reverse)
    attribute_captions: float = 0.0  # "blue dress" from a random subset of the item's attributes
    word_dropout: float = 0.0  # each word dropped with this probability (one always stays)
    paraphrase: float = 0.0  # "i want ...", "find me ..." around the text

    def check(self) -> None:
        for f in dataclasses.fields(self):
            if not 0.0 <= getattr(self, f.name) <= 1.0:
                raise UserError(f"data.augment.{f.name} is a probability in [0, 1], got {getattr(self, f.name)}.")


@dataclass(frozen=True)
class DataConfig(_Section):
    _key = "data"
    path: str = ""  # prepared dataset directory; "" = the workspace's latest `prepare`
    caption_field: Literal["caption", "description"] = "caption"  # which text trains retrieval
    max_text_length: int = 32  # tokens; longer texts are truncated
    augment: TextAugmentConfig = field(default_factory=TextAugmentConfig)  # phase-1a training texts
    # phase 1a: the chance that a training image is seen mirrored left-right (the mirrored copies'
    # frozen features are computed once and cached beside the originals); 0 = never
    image_flip: float = 0.0


@dataclass(frozen=True)
class VisionConfig(_Section):
    _key = "model.vision"
    name: Literal["tiny", "efficientnet_lite0", "blip2"] = "tiny"
    weights: str = ""  # path, hub id or package:NAME; "" = the packaged default; random = architecture only
    image_size: int = 224
    # top stages trained with the Q-Former in phase 1a (EfficientNet: 1 = the head convolution,
    # 2 = also the last MBConv block, ...); 0 = frozen, as in the paper
    trainable_blocks: int = 0

    def check(self) -> None:
        if self.trainable_blocks < 0:
            raise UserError(f"model.vision.trainable_blocks must be >= 0, got {self.trainable_blocks}.")


@dataclass(frozen=True)
class QFormerConfig(_Section):
    _key = "model.qformer"
    init: Literal["random", "minilm", "blip2"] = "random"
    weights: str = ""
    num_query_tokens: int = 32
    num_hidden_layers: int = 6
    cross_attention_frequency: int = 2
    embed_dim: int = 256
    hidden_size: int = 384
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    text_pooling: Literal["cls", "mean"] = "cls"  # cls (BLIP-2) | mean (masked mean of token states; MiniLM's)
    dropout: float = 0.1  # hidden and attention dropout while the Q-Former trains (BLIP-2's 0.1)

    def check(self) -> None:
        if self.num_query_tokens < 1:
            raise UserError("model.qformer.num_query_tokens must be at least 1.")
        if self.hidden_size % self.num_attention_heads:
            raise UserError(f"model.qformer.hidden_size ({self.hidden_size}) must be a multiple of "
                            f"num_attention_heads ({self.num_attention_heads}).")


@dataclass(frozen=True)
class CaptionerConfig(_Section):
    _key = "model.captioner"
    llm: str = "tiny"  # tiny | small | a local directory or hub id (paper: Vicuna-7B)
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    llm_hidden_size: int = 0  # built-from-config LMs only; 0 = the preset's default (tiny 64, small 384)
    llm_layers: int = 0  # built-from-config LMs only; 0 = the preset's default (tiny 2, small 4)
    style: Literal["short", "professional", "detailed"] = "short"  # paper Table 7
    max_caption_length: int = 64
    max_new_tokens: int = 40


@dataclass(frozen=True)
class QueryMixConfig(_Section):
    """Phase 1b: relative weights of the query sources that condition the training examples."""

    _key = "model.generator.query_mix"
    text: float = 0.5  # text-only queries (multimodal mode over a null image)
    image: float = 0.5  # image-mode queries
    multimodal: float = 0.0  # image + its caption, what phase 2 and `generate --image --text` feed

    def check(self) -> None:
        weights = (self.text, self.image, self.multimodal)
        if min(weights) < 0 or sum(weights) <= 0:
            raise UserError(f"model.generator.query_mix weights must be >= 0 with a positive sum, got {weights}.")


# Where the generator's query outputs come from: text only, image only, or image + text (also
# phase 2's fused queries). One name per QueryMixConfig field, in the generator's buffer order.
QUERY_SOURCES = tuple(f.name for f in dataclasses.fields(QueryMixConfig))


@dataclass(frozen=True)
class TryOnQueryMixConfig(QueryMixConfig):
    """Inpainting batches: relative weights of the query sources of the garment worn."""

    _key = "model.generator.tryon.query_mix"
    text: float = 0.0  # its text alone (design on a person, the MGD task)
    image: float = 1.0  # its in-shop image (virtual try-on)
    multimodal: float = 0.0  # image + text


@dataclass(frozen=True)
class TryOnConfig(_Section):
    """Generate stage (and phase 2's q2I): inpainting batches from items with person + mask extras
    (docs/design.md section 10)."""

    _key = "model.generator.tryon"
    fraction: float = 0.0  # share of batches that are inpainting batches (when the data has try-on items)
    resolution: int = 0  # side of the inpainting batches in pixels; 0 = model.generator.resolution
    query_mix: TryOnQueryMixConfig = field(default_factory=TryOnQueryMixConfig)

    def check(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise UserError(f"model.generator.tryon.fraction must be in [0, 1], got {self.fraction}.")
        if self.resolution < 0:
            raise UserError(f"model.generator.tryon.resolution must be >= 0, got {self.resolution}.")


@dataclass(frozen=True)
class GeneratorConfig(_Section):
    _key = "model.generator"
    preset: Preset = "tiny"  # tiny | small (pixel space) | paper (SD v1.4 latent)
    unet: str = ""  # paper: a local directory or hub id
    vae: str = ""
    resolution: int = 64
    inpainting: bool = False  # extra UNet inputs: masked image + mask (try-on); always on for paper
    use_sketch: bool = False  # one more UNet input: a sketch (design from a sketch)
    sketch_fraction: float = 0.0  # training examples given their sketch (file, or the target's edges)
    tryon: TryOnConfig = field(default_factory=TryOnConfig)
    # epsilon (the paper's q2I) | v_prediction | sample (x0; fastest from scratch)
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon"
    pooled_conditioning: bool = False  # tiny/small: mean context added to the timestep embedding too
    standardize_queries: bool = False  # per-source mean/std of the frozen Q-Former's outputs, set in phase 1b
    query_mix: QueryMixConfig = field(default_factory=QueryMixConfig)
    cfg_drop_prob: float = 0.1  # context -> learned null embedding, for classifier-free guidance
    num_inference_steps: int = 20
    sampler: Literal["dpm++", "plms", "ddim"] = "dpm++"
    guidance_scale: float = 5.0

    def check(self) -> None:
        if not 0.0 <= self.sketch_fraction <= 1.0:
            raise UserError(f"model.generator.sketch_fraction must be in [0, 1], got {self.sketch_fraction}.")
        if self.sketch_fraction > 0 and not self.use_sketch:
            raise UserError("model.generator.sketch_fraction needs model.generator.use_sketch: true.")
        if self.tryon.fraction > 0 and not (self.inpainting or self.preset == "paper"):
            raise UserError("model.generator.tryon.fraction needs model.generator.inpainting: true.")

    @property
    def tryon_resolution(self) -> int:
        """Side of try-on (inpainting) images: ``tryon.resolution``, else ``resolution``."""
        return self.tryon.resolution or self.resolution


@dataclass(frozen=True)
class ModelConfig(_Section):
    _key = "model"
    vision: VisionConfig = field(default_factory=VisionConfig)
    qformer: QFormerConfig = field(default_factory=QFormerConfig)
    captioner: CaptionerConfig = field(default_factory=CaptionerConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    # Composed search on a checkpoint without phase 2 (the zero-shot late fusion, metrics.cir):
    # weight of image->image similarity, text->image gets the rest (1 = image only, 0 = text only).
    # `search`, `serve` and `bench cir` use it unless told otherwise; choose it on val (bench cir).
    zero_shot_image_weight: float = 0.4


@dataclass(frozen=True)
class LossConfig(_Section):
    _key = "loss"
    itc_weight: float = 1.0
    itm_weight: float = 1.0
    itm_every: int = 1  # compute ITM on every n-th step only (a CPU budget knob)
    label_smoothing: float = 0.0  # BLIP-2 reference 0.1, UniFashion code 0
    itm_negatives: Literal["sample", "hardest"] = "hardest"  # sample (BLIP-2) | hardest (UniFashion code)
    gather_across_processes: bool = True  # only has an effect with world size > 1
    cir_weight: float = 1.0  # phase 2
    itg_weight: float = 1.0  # phase 2: fused queries -> frozen LLM -> target caption
    q2i_weight: float = 1.0  # phase 2: fused queries -> frozen UNet -> target image
    cir_variant: Literal["paper", "code"] = "paper"  # paper (e_cls, both directions) | code (released code)
    # phase 1a: per item and step, the chance that its text also brings a negative copy with one
    # attribute value swapped ("red dress" -> "green dress") into ITC's image->text softmax
    swap_negatives: float = 0.0
    swap_fields: tuple[str, ...] = ("colour", "baseColour")  # attribute fields whose values are swapped
    # phase 1a: each image is also classified among every value of these fields, the current text
    # embeddings of the bare values ("red", "green", ...) as the classifier (CLIP's zero-shot
    # classifier as a loss): every colour competes, not only the batch's texts
    attribute_weight: float = 0.0
    attribute_fields: tuple[str, ...] = ("colour", "baseColour")
    # phase 1a: this share of each batch is drawn as partners of the batch's first items: the same
    # category with another value of the first swap_fields field the items have (a red dress next
    # to a blue one), hard negatives for ITC and ITM in both directions
    sibling_batches: float = 0.0

    def check(self) -> None:
        if self.itm_every < 1:
            raise UserError("loss.itm_every must be at least 1.")
        if not 0.0 <= self.swap_negatives <= 1.0:
            raise UserError(f"loss.swap_negatives is a probability in [0, 1], got {self.swap_negatives}.")
        if self.attribute_weight < 0:
            raise UserError(f"loss.attribute_weight is a loss weight (>= 0), got {self.attribute_weight}.")
        if not 0.0 <= self.sibling_batches <= 0.5:
            raise UserError(f"loss.sibling_batches is a share of the batch in [0, 0.5] (at most one partner per "
                            f"anchor), got {self.sibling_batches}.")


@dataclass(frozen=True)
class OptimConfig(_Section):
    _key = "train.<stage>"
    max_steps: int = 100
    batch_size: int = 32
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    weight_decay: float = 0.05
    schedule: Schedule = "cosine"
    warmup_ratio: float = 0.03
    ema_decay: float = 0.0  # > 0: evaluate and save an exponential moving average of the weights

    def check(self) -> None:
        if self.max_steps < 0 or self.batch_size < 1:
            raise UserError("max_steps must be >= 0 and batch_size >= 1.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise UserError(f"ema_decay must be in [0, 1), got {self.ema_decay}.")


Phase2Module = Literal["qformer", "text_adapter", "image_adapter", "unet"]


@dataclass(frozen=True)
class Phase2Config(OptimConfig):
    _key = "train.phase2"
    # what phase 2 trains (docs/design.md section 3); the paper: the Q-Former and both adapters, the
    # UNet optionally. The vision encoder and the LLM stay frozen.
    trainable: tuple[Phase2Module, ...] = ("qformer", "text_adapter", "image_adapter")

    def check(self) -> None:
        super().check()
        if not self.trainable:
            raise UserError("train.phase2.trainable must name at least one of qformer, text_adapter, "
                            "image_adapter, unet.")


@dataclass(frozen=True)
class TrainConfig(_Section):
    _key = "train"
    stages: tuple[Phase1Stage, ...] = PHASE1_STAGES  # which phase-1 stages run, in this order
    init_checkpoint: str = ""  # phase 2: the phase-1 checkpoint to start from ("" = --checkpoint or the latest)
    grad_accum_steps: int = 1
    # autocast: bf16 on a GPU or a CPU with native bf16 (AVX512-BF16 / AMX; float32 on other CPUs),
    # fp16 on a GPU only (float32 on a CPU); the precision used is in each checkpoint's meta
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False  # recompute Q-Former, LLM and UNet activations in backward
    num_workers: int = 0  # DataLoader processes decoding images and reading features (0 = in the trainer)
    log_with: Literal["none", "tensorboard", "wandb"] = "none"  # an accelerate tracker as well as metrics.jsonl
    eval_every: int = 100  # steps between validation passes (0 = only at the end)
    save_every: int = 200  # steps between checkpoints (0 = only at the end)
    log_every: int = 10
    eval_max_items: int = 500  # validation gallery size cap, to keep evaluation cheap
    eval_fid_items: int = 0  # generate stage: FID/KID on this many validation captions per evaluation (0 = off)
    retrieval: OptimConfig = field(default_factory=OptimConfig)
    caption: OptimConfig = field(default_factory=OptimConfig)
    generate: OptimConfig = field(default_factory=OptimConfig)
    phase2: Phase2Config = field(default_factory=Phase2Config)


@dataclass(frozen=True)
class Recipe(_Section):
    name: str = "unnamed"
    preset: Preset = "tiny"  # documentation; the model section is explicit
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


# --- loading ---------------------------------------------------------------------------------


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else f" (valid keys: {', '.join(valid)})"


def _convert(value: Any, kind: Any, where: str) -> Any:
    """Convert a YAML value to a field type, or raise a UserError naming the key."""
    origin = typing.get_origin(kind)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise UserError(f"{where} must be a mapping of keys, got {value!r}.")
        return _build(kind, value, where + ".")
    if origin is tuple:
        items = value if isinstance(value, list | tuple) else [value]
        args = typing.get_args(kind)
        item_types = [args[0]] * len(items) if args[-1] is Ellipsis else list(args)
        if len(item_types) != len(items):
            raise UserError(f"{where} needs {len(item_types)} values, got {len(items)}.")
        return tuple(_convert(v, t, where) for v, t in zip(items, item_types, strict=True))
    if origin in (typing.Union, types.UnionType):
        return value
    if origin is Literal:
        allowed = typing.get_args(kind)
        if value is False and "no" in allowed:  # YAML 1.1 reads a bare `no` as false
            value = "no"
        _check_literal(where, value, allowed)
        return value
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "yes", "1", "on"):
                return True
            if str(value).lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is str:
            if isinstance(value, dict | list):
                raise ValueError
            return "" if value is None else str(value)
    except (TypeError, ValueError):
        raise UserError(f"{where} must be a {kind.__name__}, got {value!r}.") from None
    return value


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            full = [prefix + name for name in names]
            raise UserError(f"unknown recipe key {prefix + str(key)!r}{_suggest(prefix + str(key), full)}.")
        kwargs[key] = _convert(value, hints[key], prefix + key)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into (["a", "b", "c"], parsed value)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise UserError(f"override {text!r} is not of the form key=value (e.g. train.retrieval.lr=3e-4).")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def _check_key(path: list[str]) -> None:
    """Raise a UserError naming the first unknown segment of a dotted key and its closest match."""
    cls: Any = Recipe
    for depth, part in enumerate(path):
        if not dataclasses.is_dataclass(cls):
            raise UserError(f"unknown recipe key {'.'.join(path)!r}: {'.'.join(path[:depth])!r} is a value.")
        hints = {f.name: _hints(cls)[f.name] for f in dataclasses.fields(cls)}
        if part not in hints:
            prefix = ".".join(path[:depth] + [""])
            names = [prefix + name for name in hints]
            raise UserError(f"unknown recipe key {'.'.join(path)!r}{_suggest(prefix + part, names)}.")
        cls = hints[part]


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return the raw recipe mapping with ``key=value`` overrides applied (in place)."""
    for text in overrides:
        path, value = parse_override(text)
        _check_key(path)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override {text!r}: {part!r} is not a section.")
        node[path[-1]] = value
    return data


def packaged_recipes() -> dict[str, Path]:
    """The recipes shipped inside the package, by name (``demo``, ``tiny``, ``fashioniq``...)."""
    from importlib.resources import files

    folder = Path(str(files("unifashion_core") / "recipes"))
    return {path.stem: path for path in sorted(folder.glob("*.yaml"))}


def recipe_path(name_or_path: str | Path) -> Path:
    """A recipe file: an existing path, else a packaged recipe's name (``demo`` or ``demo.yaml``).

    Raises:
        UserError: neither a file nor a packaged recipe (the message lists the packaged ones).
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = packaged_recipes()
    name = path.name.removesuffix(".yaml")
    if len(path.parts) == 1 and name in packaged:
        return packaged[name]
    raise UserError(f"recipe {name_or_path} does not exist; give a YAML file or a packaged recipe "
                    f"({', '.join(packaged)}).")


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Load a YAML recipe (a file or a packaged recipe's name), apply ``key=value`` overrides, and
    return a frozen Recipe.

    Raises:
        UserError: no such recipe, unreadable file, bad YAML, unknown key (with the closest valid
            one), bad type.
    """
    path = recipe_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"recipe {path} does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read recipe {path}: {exc}.") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"recipe {path} is not valid YAML: {str(exc).splitlines()[0]}.") from None
    if not isinstance(data, dict):
        raise UserError(f"recipe {path} must be a mapping of keys at the top level.")
    return recipe_from_dict(apply_overrides(data, list(overrides)))


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (it would keep the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} appears twice in one mapping (line {key_node.start_mark.line + 1})",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    """Build a Recipe from a plain mapping (as stored in checkpoints' config.yaml)."""
    return _build(Recipe, data)


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain YAML-friendly data (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    return obj


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML text (what gets written next to every output)."""
    return yaml.safe_dump(to_dict(recipe), sort_keys=False)


def replace(recipe: Recipe, overrides: list[str]) -> Recipe:
    """A copy of ``recipe`` with ``key=value`` overrides applied (validated like a file)."""
    return recipe_from_dict(apply_overrides(to_dict(recipe), overrides))
