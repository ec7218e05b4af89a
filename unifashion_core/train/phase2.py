"""Phase 2: composed image retrieval training on (reference, text, target) triplets (paper
section 3.3, Eq. 10-12; docs/design.md sections 2-3).

Each micro-batch of triplets runs the Q-Former's multimodal pass on (reference image,
modification text) and minimises::

    cir_weight * CIR(e_cls, Z_T, Z_C [+ ITM])                       Eq. 10, loss.cir_variant
  + itg_weight * ITG(fused queries -> frozen captioner -> target caption)
  + q2i_weight * q2I(fused queries -> frozen generator -> target image)

``train.phase2.trainable`` lists what trains (:func:`trainable_modules`): by default, as in the
paper, the Q-Former and both adapters (the caption head's query -> LLM adapter, the generate
head's query -> UNet adapter); ``unet`` adds the generator's UNet. The vision encoder and the LLM
(with its LoRA) are always frozen. ITG needs the phase-1 checkpoint's caption head and q2I its
generate head: a term whose weight is 0, or whose head is absent, is not computed. That is how
the Base / +LLM / +diffusion ablations run (ablation.py). The Q-Former is shared, so phase 2 also
moves its text-only and image-mode outputs; with ``model.generator.standardize_queries`` the final
checkpoint's generator gets their statistics retaken from the trained Q-Former
(:func:`retake_query_statistics`).
The ITM term of CIR is on when ``loss.itm_weight > 0`` (every ``loss.itm_every`` steps); Eq. 10
sums the CIR terms unweighted.

Training text: Fashion-IQ's two texts are paraphrases of one change, so each step picks one of
"c1 and c2", "c2 and c1", c1, c2 (docs/design.md section 6); other datasets' ``texts`` are different changes
that must all be kept, so their evaluation ``text`` is used as is. Target captions are in the
recipe's caption style; targets without one (Fashion-IQ) are captioned once by the frozen
captioner before training.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unifashion_core.batching import batch_slices
from unifashion_core.checkpoint import checkpoint_dir, persistent_state, read_meta, read_weights, save_checkpoint
from unifashion_core.config import Recipe
from unifashion_core.data.adapters.fashioniq import query_text
from unifashion_core.data.images import pixel_values
from unifashion_core.data.manifest import Dataset, Item, SkipLog, Triplet, load_dataset
from unifashion_core.data.tryon import has_tryon, load_tryon, stack_tryon
from unifashion_core.distributed import BatchShard
from unifashion_core.errors import UserError
from unifashion_core.features import cached_tokens, feature_cache_dir
from unifashion_core.losses import TokensFn, cir_loss
from unifashion_core.metrics import cir
from unifashion_core.models.qformer import MultimodalOutput
from unifashion_core.models.unifashion import EMBED_BATCH, UniFashion, build_model
from unifashion_core.progress import NullProgress, Progress
from unifashion_core.shards import Rows
from unifashion_core.train.data import Batch, ExampleData, rows_per_piece
from unifashion_core.train.loop import run_stage
from unifashion_core.train.runlog import RunLog
from unifashion_core.train.setup import TrainResult, build_accelerator, prepare_run_dir, start_run_dir
from unifashion_core.train.stages import Stage, inpainting_loss, scope, tokens_lookup

STAGE = "phase2"
TERMS = ("cir", "itg", "q2i")


@dataclass
class TripletData:
    """Triplets as rows into the vision tokens of their items.

    Attributes:
        items: the items whose tokens are held, in row order.
        tokens: ``(N, T, C)`` float16 vision tokens of ``items``, read from the feature cache as needed.
        triplets: the usable triplets (reference and target both in ``items``).
        references: ``(M,)`` token rows of the reference images.
        targets: ``(M,)`` token rows of the target images.
        texts: per triplet, the modification texts one training step chooses from.
        captions: per triplet, the target caption ("" until :func:`target_captions` fills it).
    """

    items: list[Item]
    tokens: Rows
    triplets: list[Triplet]
    references: torch.Tensor
    targets: torch.Tensor
    texts: list[list[str]]
    captions: list[str]


def training_texts(triplet: Triplet, paraphrases: bool) -> list[str]:
    """The texts a training step may use for ``triplet``.

    With ``paraphrases`` (Fashion-IQ: two descriptions of one change): "C1 and c2", "C2 and c1",
    "C1", "C2", without duplicates or empty ones. Otherwise the evaluation text alone.
    """
    if not paraphrases or len(triplet.texts) != 2:
        return [triplet.text]
    first, second = triplet.texts
    options = [query_text(parts) for parts in ([first, second], [second, first], [first], [second])]
    return list(dict.fromkeys(option for option in options if option)) or [triplet.text]


def load_triplets(
    model: UniFashion, dataset: Dataset, split: str, items: list[Item], paraphrases: bool,
    skipped: SkipLog, cache_dir: Path | None = None, progress: Progress = NullProgress(), num_workers: int = 0,
) -> TripletData:
    """Vision tokens of ``items`` and the split's triplets whose two images are among them.

    Unreadable images and triplets that cannot be used (no target, reference or target missing)
    go to ``skipped``.
    """
    kept, tokens, unreadable = cached_tokens(model.vision, dataset, items, cache_dir, progress,
                                             num_workers=num_workers)
    skipped.entries += unreadable.entries
    rows = {item.id: row for row, item in enumerate(kept)}
    usable = []
    for triplet in dataset.split_triplets(split):
        status = cir.triplet_status(triplet, rows)
        if status == "ok":
            usable.append(triplet)
        else:
            skipped.add(triplet.id, status, kind="triplet")
    return TripletData(
        kept, tokens, usable,
        torch.tensor([rows[t.reference] for t in usable], dtype=torch.long),
        torch.tensor([rows[t.target] for t in usable], dtype=torch.long),
        [training_texts(t, paraphrases) for t in usable], [""] * len(usable),
    )


def target_captions(model: UniFashion, data: TripletData, style: str, progress: Progress = NullProgress()) -> list[str]:
    """Each triplet's target caption in ``style``; targets without one are captioned by the model.

    Raises:
        UserError: targets without a caption and no caption head to caption them.
    """
    targets = data.targets.tolist()
    texts = [data.items[row].caption_target(style) for row in targets]
    missing = sorted({row for row, text in zip(targets, texts, strict=True) if not text})
    if not missing:
        return texts
    if model.captioner is None:
        raise UserError(f"{len(missing)} target images have no caption and the checkpoint has no caption head "
                        "to caption them; train phase 1 with the caption stage.")
    captions = model.caption_images(data.tokens.select(missing), style, progress=progress, task="caption targets")
    generated = dict(zip(missing, captions, strict=True))
    return [text or generated[row] for row, text in zip(targets, texts, strict=True)]


def active_terms(model: UniFashion, recipe: Recipe) -> tuple[str, ...]:
    """The loss terms that run: weight > 0 and, for ITG / q2I, the head present."""
    loss = recipe.loss
    on = {"cir": loss.cir_weight > 0, "itg": loss.itg_weight > 0 and model.captioner is not None,
          "q2i": loss.q2i_weight > 0 and model.generator is not None}
    return tuple(term for term in TERMS if on[term])


def _choose(options: list[str], generator: torch.Generator) -> str:
    if len(options) == 1:
        return options[0]
    return options[int(torch.randint(len(options), (1,), generator=generator))]


def cir_term(
    model: UniFashion, recipe: Recipe, fused: MultimodalOutput, target_tokens: TokensFn, input_ids: torch.Tensor,
    attention_mask: torch.Tensor, captions: list[str], generator: torch.Generator, step: int, shard: BatchShard,
) -> torch.Tensor:
    """Eq. 10 on one batch: ``ITC(e, Z_T) + ITC(e, Z_C) [+ ITM(text, Z_T)]`` via ``losses.cir_loss``.

    ``input_ids``, ``attention_mask``, ``captions`` and ``target_tokens`` (positions -> tokens) are
    those of the whole batch of G triplets; this process's are ``shard.rows``.
    """
    loss_cfg, qformer = recipe.loss, model.qformer
    local = torch.arange(shard.size)[shard.rows]
    target_embeds = qformer.encode_image(target_tokens(local)).embeds  # (B, Q, D) Z_T
    caption_embeds = qformer.encode_text(*model.tokenize(captions[shard.rows])).embeds  # (B, D) Z_C
    fused_queries = None
    if loss_cfg.cir_variant == "code":
        fused_queries = F.normalize(qformer.vision_projection(fused.query_output), dim=-1)  # (B, Q, D)
    use_itm = loss_cfg.itm_weight > 0 and step % loss_cfg.itm_every == 0 and shard.size > 1
    return cir_loss(
        fused.embeds, target_embeds, caption_embeds, qformer.temperature(), variant=loss_cfg.cir_variant,
        fused_query_embeds=fused_queries, label_smoothing=loss_cfg.label_smoothing,
        gather=loss_cfg.gather_across_processes, itm_logits_fn=qformer.itm_logits if use_itm else None,
        target_image_tokens=target_tokens, input_ids=input_ids, attention_mask=attention_mask,
        strategy=loss_cfg.itm_negatives, generator=generator, texts=captions,
        shard=shard if loss_cfg.gather_across_processes else None,
    )


def q2i_term(
    model: UniFashion, recipe: Recipe, dataset: Dataset, query_output: torch.Tensor, pixels: torch.Tensor,
    targets: list[Item], generator: torch.Generator, shard: BatchShard,
) -> torch.Tensor:
    """q2I from the fused queries (B, Q, H) of this process's ``shard.rows``: their target garments'
    images ``pixels`` (B, 3, R, R), or, for a share ``model.generator.tryon.fraction`` of the
    batches whose G ``targets`` (the whole batch's target items) all carry a try-on example, the
    people wearing them filling their masks (paper Eq. 12, the generate stage's path)."""
    g = recipe.model.generator
    if g.tryon.fraction > 0 and all(has_tryon(item) for item in targets) and \
            float(torch.rand((), generator=generator)) < g.tryon.fraction:
        inputs = stack_tryon([load_tryon(dataset, item, g.tryon_resolution) for item in targets[shard.rows]])
        return inpainting_loss(model.generator, g, query_output, inputs, "multimodal", generator, shard)
    return model.generator.loss(query_output, pixels.to(query_output.device), drop_prob=g.cfg_drop_prob,
                                generator=generator, source="multimodal", shard=shard)


def trainable_modules(model: UniFashion, names: tuple[str, ...]) -> dict[str, nn.Module]:
    """The modules phase 2 trains: those of ``names`` (``train.phase2.trainable``) the model has.

    ``text_adapter`` belongs to the caption head, ``image_adapter`` and ``unet`` to the generate
    head; a name whose head the checkpoint lacks is left out.
    """
    captioner, generator = model.captioner, model.generator
    available = {"qformer": model.qformer,
                 "text_adapter": captioner.adapter if captioner is not None else None,
                 "image_adapter": generator.adapter if generator is not None else None,
                 "unet": generator.unet if generator is not None else None}
    return {name: available[name] for name in names if available[name] is not None}


def phase2_stage(
    model: UniFashion, recipe: Recipe, dataset: Dataset, train: TripletData, val: TripletData | None = None,
) -> Stage:
    """The phase-2 stage: the trainable modules (those with ``requires_grad``) learn from ``train``
    triplets; validation is CIR R@10/50 on ``val``.

    The loss is ``sum(weight * term)`` over :func:`active_terms`; the logs hold each unweighted term.
    A batch streams each triplet's reference and target tokens (and its target image for q2I).
    """
    qformer, loss_cfg = model.qformer, recipe.loss
    terms = active_terms(model, recipe)
    weights = {"cir": loss_cfg.cir_weight, "itg": loss_cfg.itg_weight, "q2i": loss_cfg.q2i_weight}
    style, size = recipe.model.captioner.style, recipe.model.generator.resolution
    targets = train.targets.tolist()
    fields = {"reference_tokens": lambda i: train.tokens[int(train.references[i])],
              "target_tokens": lambda i: train.tokens[targets[i]]}
    if "q2i" in terms:
        fields["target_pixels"] = lambda i: pixel_values([dataset.image_path(train.items[targets[i]])], size)[0]

    def loss_fn(batch: Batch, generator: torch.Generator, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        indices, shard = scope(batch, loss_cfg.gather_across_processes)  # (G,) triplets a loss sees whole
        rows = indices.tolist()
        references = batch.fields["reference_tokens"].float()  # (B, T, C)
        captions = [train.captions[i] for i in rows]
        all_ids, all_mask = model.tokenize([_choose(train.texts[i], generator) for i in rows])  # (G, L)
        ids, mask = all_ids[shard.rows], all_mask[shard.rows]  # (B, L)
        fused = qformer.encode_multimodal(references, ids, mask)  # embeds (B, D), query_output (B, Q, H)
        parts: dict[str, torch.Tensor] = {}
        if "cir" in terms:
            target_tokens = tokens_lookup(batch.fields["target_tokens"].float(), train.tokens,
                                          train.targets[indices], shard)
            parts["cir"] = cir_term(model, recipe, fused, target_tokens, all_ids, all_mask, captions, generator,
                                    step, shard)
        if "itg" in terms:
            parts["itg"] = model.captioner.loss(fused.query_output, captions[shard.rows], style)
        if "q2i" in terms:
            parts["q2i"] = q2i_term(model, recipe, dataset, fused.query_output, batch.fields["target_pixels"],
                                    [train.items[targets[i]] for i in batch.indices.tolist()], generator, batch.shard)
        loss = sum(weights[name] * value for name, value in parts.items())
        return loss, {name: float(value.detach()) for name, value in parts.items()}

    def eval_fn() -> dict[str, float]:
        fused = model.embed_composed(val.tokens[val.references], [t.text for t in val.triplets])  # (M, D)
        allowed = torch.ones(len(val.triplets), len(val.items), dtype=torch.bool)
        ranks, _ = cir.rank_targets(fused, model.embed_images(val.tokens), val.targets, allowed)
        return {f"val_cir_{name}": value for name, value in cir.recalls(ranks).items()}

    trained = nn.ModuleDict(trainable_modules(model, recipe.train.phase2.trainable))
    params = [p for p in trained.parameters() if p.requires_grad]
    return Stage(STAGE, trained, params, recipe.train.phase2, ExampleData(len(train.triplets), fields), loss_fn,
                 eval_fn if val is not None and val.triplets else None, qformer.clamp_temperature_)


def check_init_checkpoint(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """The phase-1 checkpoint directory phase 2 starts from, and its meta.

    Raises:
        UserError: a path that does not exist, or not a phase-1 checkpoint.
    """
    if not Path(path).exists():
        raise UserError(f"--checkpoint {path} does not exist; give a phase-1 run directory or its checkpoint/.")
    path = checkpoint_dir(path)
    meta = read_meta(path)
    if meta.get("phase", 1) != 1:
        raise UserError(f"--checkpoint {path} is a phase-{meta['phase']} checkpoint; phase 2 starts from a "
                        f"phase-1 checkpoint (this one started from {meta.get('init_checkpoint', '?')}).")
    return path, meta


def load_weights(model: UniFashion, path: Path) -> None:
    """Load a checkpoint's weights into a model built from the phase-2 recipe.

    Raises:
        UserError: the recipe's model section builds other shapes than the checkpoint holds.
    """
    modules = ("vision", "qformer", *(name for name in ("captioner", "generator") if getattr(model, name) is not None))
    state = {k: v for k, v in read_weights(path).items() if k.split(".")[0] in modules}
    mismatch = UserError(f"the recipe's model section does not match checkpoint {path}; use the recipe it was "
                         "trained with (phase 2 may change data, loss and train settings).")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError:
        raise mismatch from None
    if unexpected or set(missing) & persistent_state(model).keys():
        raise mismatch


@dataclass
class Phase2Setup:
    """Everything a phase-2 run trains with (see :func:`setup_phase2`)."""

    model: UniFashion
    stage: Stage
    train: TripletData
    terms: tuple[str, ...]
    skipped: SkipLog


def setup_phase2(
    recipe: Recipe, heads: tuple[str, ...], weights: Path, dataset: Dataset,
    device: torch.device | str = "cpu", cache_dir: Path | None = None, progress: Progress = NullProgress(),
) -> Phase2Setup:
    """Build the model with ``heads``, load ``weights``, freeze all but ``train.phase2.trainable``, load
    the data.

    Raises:
        UserError: no loss term to train, fewer than 2 usable training triplets, or targets
            without captions and no caption head.
    """
    model = build_model(recipe.model, recipe.data.max_text_length, heads)
    load_weights(model, weights)
    model.to(device).eval().requires_grad_(False)
    for module in trainable_modules(model, recipe.train.phase2.trainable).values():
        module.requires_grad_(True)
    if recipe.train.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    terms = active_terms(model, recipe)
    if not terms:
        raise UserError("phase 2 has nothing to train: loss.cir_weight is 0 and ITG / q2I are off "
                        "(weight 0 or no such head in the checkpoint).")
    skipped = SkipLog()
    workers = recipe.train.num_workers
    train = load_triplets(model, dataset, "train", _triplet_items(dataset, "train"),
                          dataset.report.get("dataset") == "fashioniq", skipped, cache_dir, progress, workers)
    if len(train.triplets) < 2:
        raise UserError(f"{dataset.root} has fewer than 2 usable training triplets; phase 2 needs composed-"
                        "retrieval triplets (e.g. the demo data or Fashion-IQ).")
    if "cir" in terms or "itg" in terms:
        train.captions = target_captions(model, train, recipe.model.captioner.style, progress)
    val = load_triplets(model, dataset, "val", dataset.split("val")[: recipe.train.eval_max_items], False,
                        SkipLog(), cache_dir, progress, workers)
    return Phase2Setup(model, phase2_stage(model, recipe, dataset, train, val), train, terms, skipped)


@torch.no_grad()
def retake_query_statistics(model: UniFashion, recipe: Recipe, data: TripletData) -> None:
    """Give the frozen generator the text-only and image query statistics of the trained Q-Former.

    Phase 2 moves the Q-Former's text-only and image-mode outputs (demo: a mean shift of about 4
    standard deviations), and the generator standardises them with phase-1 statistics; retaken
    from the items of the training triplets, text-to-image colour accuracy after phase 2 went from
    0.31 to 0.78 on the demo (0.90 after phase 1). The multimodal statistics stay: phase 2's q2I
    term trained the fused queries against them. The query outputs are computed and summarised a
    piece at a time (``data.rows_per_piece``), so the items need not fit in memory.
    """
    texts = [item.text(recipe.data.caption_field) for item in data.items]
    qformer = model.qformer
    piece = rows_per_piece(qformer.num_query_tokens * qformer.hidden_size * 4, EMBED_BATCH)
    for source in ("text", "image"):
        model.generator.set_query_statistics(source, (
            model.source_queries(source, data.tokens.select(range(rows.start, rows.stop)), texts[rows])
            for rows in batch_slices(len(texts), piece)))


def run_phase2(
    recipe: Recipe,
    init_checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    cache_dir: str | Path | None = None,
    progress: Progress = NullProgress(),
) -> TrainResult:
    """Train phase 2 from a phase-1 checkpoint (``unifashion train RECIPE --phase 2``), in one
    process or in each process of ``accelerate launch`` (data parallel).

    Args:
        recipe: the phase-2 recipe (its model section must build the checkpoint's shapes).
        init_checkpoint: the phase-1 run directory or checkpoint directory.
        data: prepared dataset with triplets.
        out: run directory (``config.yaml``, ``metrics.jsonl``, ``curves.png``, ``checkpoint/``).
        resume: continue the run in ``out`` exactly where it stopped.
        overwrite: replace a non-empty ``out``.
        cache_dir: where frozen vision features are cached (None: kept in memory for this run).
        progress: progress events.

    Returns:
        The result; the checkpoint's meta records phase 2, the phase-1 heads and the init
        checkpoint's path and fingerprint.
    """
    init, init_meta = check_init_checkpoint(init_checkpoint)
    dataset = load_dataset(data)
    out = Path(out)
    if init.absolute().is_relative_to(out.absolute()):
        raise UserError(f"--out {out} holds the checkpoint phase 2 starts from; choose another --out.")
    accelerator = build_accelerator(recipe, out)
    meta, resume_state = prepare_run_dir(out, recipe, resume, overwrite, accelerator, progress)
    if meta is not None and meta.get("init_checkpoint_fingerprint") != init_meta["fingerprint"]:
        raise UserError(f"--resume: {out} was started from another checkpoint than {init}.")
    torch.manual_seed(recipe.seed)
    heads = tuple(init_meta.get("heads", []))
    setup = setup_phase2(recipe, heads, out / "checkpoint" if meta is not None else init, dataset,
                         accelerator.device, feature_cache_dir(cache_dir, dataset), progress)
    if meta is None:
        start_run_dir(out, recipe, accelerator)  # only now: a run that could not be set up leaves nothing behind
    provenance = {
        "phase": 2, "heads": list(heads), "terms": list(setup.terms),
        "trained_modules": list(trainable_modules(setup.model, recipe.train.phase2.trainable)),
        "init_checkpoint": str(init.absolute()),
        "init_checkpoint_fingerprint": init_meta["fingerprint"], "manifest_sha256": dataset.manifest_hash,
        "data": str(dataset.root.absolute()), "seed": recipe.seed, "skipped": setup.skipped.counts(),
        "mixed_precision": accelerator.mixed_precision,
    }
    results = dict(meta.get("metrics", {})) if meta is not None else {}
    if meta is None or STAGE not in meta.get("stages_done", []):

        def save(stage_meta: dict[str, Any], training_state: dict[str, Any]) -> None:
            if stage_meta["stage_done"] and setup.model.generator is not None and \
                    recipe.model.generator.standardize_queries:
                retake_query_statistics(setup.model, recipe, setup.train)
            save_checkpoint(out / "checkpoint", setup.model, recipe, {
                **stage_meta, **provenance, "stages_done": [STAGE] if stage_meta["stage_done"] else [],
                "metrics": {f"{STAGE}/{k}": v for k, v in stage_meta["metrics"].items()},
            }, training_state)

        log = RunLog(out, accelerator, recipe)
        last = run_stage(setup.stage, accelerator, recipe.seed, recipe.train, log, save, progress, resume_state)
        log.close()
        results = {f"{STAGE}/{k}": v for k, v in last.items()}
    return TrainResult(out / "checkpoint", 2, results, setup.skipped.counts(), setup.terms, init)


def _triplet_items(dataset: Dataset, split: str) -> list[Item]:
    """The items that the split's triplets refer to (references and targets), in manifest order."""
    wanted = {item_id for t in dataset.split_triplets(split) for item_id in (t.reference, t.target)}
    return [item for item in dataset.items if item.id in wanted]
