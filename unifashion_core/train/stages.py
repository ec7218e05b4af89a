"""The phase-1 training stages as data: what trains, on which examples, with which loss.

Each stage's ``loss_fn(batch, generator, step)`` returns ``(loss, logs)`` for one micro-batch
(``data.Batch``: the global batch's example indices, this process's rows of it and their
streamed tensors); the loop in ``loop.py`` is the same for all of them. The frozen parts' outputs
(vision tokens; Q-Former query outputs in phase 1b) are computed once, not every step, and read
per batch from wherever they are kept (``shards.Rows`` on disk, or a tensor).

With several processes, randomness is drawn for the whole batch with the same generator in every
process and each keeps its rows, and ITC and ITM see the whole batch (``loss.gather_across_processes``),
so N processes with batch B train as one process with batch N * B.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from unifashion_core.batching import batch_slices
from unifashion_core.config import QUERY_SOURCES, GeneratorConfig, LossConfig, OptimConfig, QueryMixConfig, Recipe
from unifashion_core.data.manifest import Item
from unifashion_core.data.tryon import TryOnInputs, edges
from unifashion_core.distributed import BatchShard, gather
from unifashion_core.losses import TokensFn, attribute_loss, itc_loss, itm_loss, max_sim
from unifashion_core.metrics.retrieval import cross_modal_recalls
from unifashion_core.models.unifashion import UniFashion
from unifashion_core.shards import Rows
from unifashion_core.train.data import Batch, ExampleData, Field, Siblings
from unifashion_core.train.text_augment import attribute_vocabulary, augment_batch, swap_negatives

LossFn = Callable[[Batch, torch.Generator, int], tuple[torch.Tensor, dict[str, float]]]
Examples = Rows | torch.Tensor  # per-example rows: ``[i]`` is one example, ``[index tensor]`` a batch


@dataclass
class Stage:
    """One training stage.

    Attributes:
        name: ``retrieval``, ``caption`` or ``generate``.
        module: the module whose parameters train (handed to accelerate).
        params: the trainable parameters (everything else stays frozen).
        optim: optimiser and schedule settings.
        data: the per-example tensors a batch streams (its length is the number of examples).
        loss_fn: micro-batch loss.
        eval_fn: validation metrics (higher-is-better keys or losses), or None.
        after_step: called after every optimiser step (e.g. to clamp the temperature).
    """

    name: str
    module: nn.Module
    params: list[nn.Parameter]
    optim: OptimConfig
    data: ExampleData
    loss_fn: LossFn
    eval_fn: Callable[[], dict[str, float]] | None = None
    after_step: Callable[[], None] | None = None

    @property
    def num_examples(self) -> int:
        return len(self.data)


def _trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def _field(rows: Examples) -> Field:
    """Example ``i`` of ``rows``, read when a batch is assembled (in a DataLoader worker, if any)."""
    return lambda index: rows[index]


def scope(batch: Batch, gathered: bool) -> tuple[torch.Tensor, BatchShard]:
    """The examples a loss sees whole (the global batch when gathering across processes, else this
    process's rows) and this process's rows of them."""
    if gathered:
        return batch.indices, batch.shard
    return batch.local_indices, BatchShard.whole(batch.shard.local_size)


def tokens_lookup(
    local: torch.Tensor, rows: Examples, indices: torch.Tensor, shard: BatchShard,
    convert: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> TokensFn:
    """Tokens of positions in a batch of examples ``indices``: this process's ``local`` (B, T, C)
    for its own rows, read from ``rows`` for the others' (ITM negatives from other processes) and
    passed through ``convert`` (e.g. the trainable top of the vision encoder) when given."""

    def lookup(positions: torch.Tensor) -> torch.Tensor:
        own = (positions >= shard.rows.start) & (positions < shard.rows.stop)  # (k,)
        if bool(own.all()):
            return local[positions - shard.rows.start]
        out = local.new_empty(len(positions), *local.shape[1:])  # (k, T, C)
        out[own] = local[positions[own] - shard.rows.start]
        read = rows[indices[positions[~own].cpu()]].to(local)
        out[~own] = read if convert is None else convert(read)
        return out

    return lookup


def retrieval_stage(
    model: UniFashion,
    recipe: Recipe,
    tokens: Examples,
    items: list[Item],
    val_tokens: Examples,
    val_texts: list[str],
    flipped: Examples | None = None,
) -> Stage:
    """Phase 1a: Q-Former (+ projections, ITM head, temperature) with ITC + ITM.

    With ``model.vision.trainable_blocks``, ``tokens`` are the frozen trunk's feature maps and the
    encoder's top stages train too.

    ``items`` are the rows of ``tokens``; each batch's texts are their ``data.caption_field``
    texts, varied by ``data.augment`` with the stage's generator (``text_augment``). A text that
    fits other items of the batch too (an identical one, or "blue dress") counts them as positives
    in ITC and never pairs with them as an ITM negative. With ``loss.swap_negatives``, copies of
    the texts with one attribute value swapped join ITC's image->text softmax as negatives.

    ``flipped`` holds the rows of the same images mirrored left-right; with ``data.image_flip``
    each example of a batch is seen mirrored with that chance (drawn for the whole batch, so every
    process agrees).
    """
    loss_cfg = recipe.loss
    flip = recipe.data.image_flip if flipped is not None else 0.0
    vocabulary = attribute_vocabulary(items, loss_cfg.swap_fields) if loss_cfg.swap_negatives > 0 else {}
    value_words, value_groups, value_targets = _attribute_classes(items, loss_cfg)
    value_tokens = model.tokenize(value_words) if value_words else None  # (W, L) twice, once for all steps
    qformer = model.qformer
    qformer.requires_grad_(True)
    gathered = loss_cfg.gather_across_processes
    num_top = recipe.model.vision.trainable_blocks
    vision_params = model.vision.top_parameters(num_top) if num_top else []
    for param in vision_params:
        param.requires_grad_(True)

    def top(maps: torch.Tensor) -> torch.Tensor:
        """Vision tokens (k, T, C) of the trunk's maps (k, C', H', W'), training the top stages."""
        return model.vision.top(maps, num_top)

    def loss_fn(batch: Batch, generator: torch.Generator, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        batch_tokens = batch.fields["tokens"].float()  # (B, T, C), or the trunk's (B, C', H', W') maps
        indices, shard = scope(batch, gathered)
        rows = tokens
        if flip > 0:
            mirror = torch.rand(len(indices), generator=generator) < flip  # (G,): which examples are mirrored
            chosen = mirror[shard.rows].to(batch_tokens.device).view(-1, *[1] * (batch_tokens.dim() - 1))
            batch_tokens = torch.where(chosen, batch.fields["flipped"].float(), batch_tokens)
            rows = _Mirrored(tokens, flipped, indices[mirror])
        if num_top:
            batch_tokens = top(batch_tokens)  # (B, T, C)
        batch_items = [items[i] for i in indices.tolist()]
        batch_texts, positives = augment_batch(batch_items, recipe.data, generator)  # (G)
        positives = positives.to(batch_tokens.device)  # (G, G): text j describes image i
        all_ids, all_mask = model.tokenize(batch_texts)  # (G, L)
        ids, mask = all_ids[shard.rows], all_mask[shard.rows]  # (B, L)
        image_embeds = qformer.encode_image(batch_tokens).embeds  # (B, Q, D)
        text_embeds = qformer.encode_text(ids, mask).embeds  # (B, D)
        temperature = qformer.temperature()
        negatives, excluded = None, None
        if vocabulary:
            # every process encodes all K negatives of the global batch (the same in each), so the
            # averaged gradients equal one process's
            negative_texts, excluded = swap_negatives(batch_items, batch_texts, vocabulary, loss_cfg.swap_negatives,
                                                      generator)  # K, (G, K)
            if negative_texts:
                negatives = qformer.encode_text(*model.tokenize(negative_texts)).embeds  # (K, D)
                excluded = excluded[shard.rows].to(batch_tokens.device)  # (B, K)
        itc = itc_loss(image_embeds, text_embeds, temperature, loss_cfg.label_smoothing, gathered, positives,
                       negatives, excluded)
        loss, logs = loss_cfg.itc_weight * itc, {"itc": float(itc.detach())}
        if value_tokens is not None:
            value_embeds = qformer.encode_text(*value_tokens).embeds  # (W, D)
            targets = value_targets[indices[shard.rows].cpu()].to(batch_tokens.device)  # (B, F)
            attribute = attribute_loss(image_embeds, value_embeds, temperature, targets, value_groups)
            loss = loss + loss_cfg.attribute_weight * attribute
            logs["attribute"] = float(attribute.detach())
        if loss_cfg.itm_weight > 0 and step % loss_cfg.itm_every == 0 and shard.size > 1:
            with torch.no_grad():
                sim = max_sim(*(gather(x) if gathered else x for x in (image_embeds, text_embeds))) / temperature
            lookup = batch_tokens if shard.local_size == shard.size else \
                tokens_lookup(batch_tokens, rows, indices, shard, top if num_top else None)
            itm = itm_loss(qformer.itm_logits, lookup, all_ids, all_mask, sim, sim.T, loss_cfg.itm_negatives,
                           generator, shard=shard, positives=positives)  # sim (G, G)
            loss = loss + loss_cfg.itm_weight * itm
            logs["itm"] = float(itm.detach())
        return loss, logs

    def eval_fn() -> dict[str, float]:
        images = model.embed_images(model.vision_top(val_tokens))
        recalls = cross_modal_recalls(max_sim(images, model.embed_texts(val_texts)))
        return {f"val_{k}": v for k, v in recalls.items()}

    return Stage(
        "retrieval",
        # DDP syncs the gradients of the module's parameters: the top stages' too, held apart so
        # that training mode reaches only the Q-Former (the encoder's batch norms stay in eval)
        nn.ModuleList([qformer, nn.ParameterList(vision_params)]) if num_top else qformer,
        _trainable(qformer) + vision_params,
        recipe.train.retrieval,
        ExampleData(len(tokens), {"tokens": _field(tokens), **({"flipped": _field(flipped)} if flip > 0 else {})},
                    _siblings(items, loss_cfg)),
        loss_fn,
        eval_fn if len(val_texts) > 1 else None,
        qformer.clamp_temperature_,
    )


class _Mirrored:
    """Example rows as one batch saw them: ``flipped``'s for the examples ``mirrored``, else ``tokens``'s."""

    def __init__(self, tokens: Examples, flipped: Examples, mirrored: torch.Tensor) -> None:
        self.tokens, self.flipped, self.mirrored = tokens, flipped, mirrored.cpu()

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        plain, mirror = self.tokens[index], self.flipped[index]  # (k, ...) each
        chosen = torch.isin(index.reshape(-1).cpu(), self.mirrored)  # (k,)
        return torch.where(chosen.view(-1, *[1] * (plain.dim() - 1)), mirror, plain)


def _attribute_classes(items: list[Item], loss_cfg: LossConfig) -> tuple[list[str], list[slice], torch.Tensor]:
    """The classes of ``loss.attribute_weight``: the bare values of ``loss.attribute_fields`` (W
    words, field after field), each field's slice of them, and every item's ``(N, F)`` targets
    (-1 where it has no value). Nothing when the weight is 0.

    Raises:
        UserError: no such field among the items has two values.
    """
    if loss_cfg.attribute_weight <= 0:
        return [], [], torch.empty(0)
    vocabulary = attribute_vocabulary(items, loss_cfg.attribute_fields, "loss.attribute_weight",
                                      "loss.attribute_fields")
    words, groups = [], []
    for values in vocabulary.values():
        groups.append(slice(len(words), len(words) + len(values)))
        words.extend(values)
    codes = {name: {value: code for code, value in enumerate(values)} for name, values in vocabulary.items()}

    def code(item: Item, name: str) -> int:
        value = item.attributes.get(name)
        return -1 if value in (None, "") else codes[name][str(value)]

    targets = torch.tensor([[code(item, name) for name in codes] for item in items],
                           dtype=torch.long).reshape(len(items), len(vocabulary))
    return words, groups, targets


def _siblings(items: list[Item], loss_cfg: LossConfig) -> Siblings | None:
    """The batch partners of ``loss.sibling_batches``: same category, another value of the first
    ``loss.swap_fields`` field the items have with two values (None when off).

    Raises:
        UserError: no such field among the items.
    """
    if not loss_cfg.sibling_batches:
        return None
    name = next(iter(attribute_vocabulary(items, loss_cfg.swap_fields, "loss.sibling_batches")))
    values = [item.attributes.get(name) for item in items]
    return Siblings.of([item.category for item in items], [None if v in (None, "") else str(v) for v in values],
                       loss_cfg.sibling_batches)


def caption_stage(
    model: UniFashion,
    recipe: Recipe,
    queries: Examples,
    captions: list[str],
    val_queries: torch.Tensor,
    val_captions: list[str],
) -> Stage:
    """Phase 1b (ITG): text adapter + LoRA (or the whole small LM) on frozen query outputs (N, Q, H)."""
    captioner = model.captioner
    model.qformer.requires_grad_(False)
    style = recipe.model.captioner.style

    def loss_fn(batch: Batch, generator: torch.Generator, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        loss = captioner.loss(batch.fields["queries"], [captions[i] for i in batch.local_indices.tolist()], style)
        return loss, {"itg": float(loss.detach())}

    @torch.no_grad()
    def eval_fn() -> dict[str, float]:
        captioner.eval()
        loss = captioner.loss(val_queries[:64], val_captions[:64], style)
        captioner.train()
        return {"val_itg": float(loss)}

    return Stage(
        "caption",
        captioner,
        _trainable(captioner),
        recipe.train.caption,
        ExampleData(len(captions), {"queries": _field(queries)}),
        loss_fn,
        eval_fn if len(val_captions) else None,
    )


@dataclass
class TryOnData:
    """The try-on examples of the generate stage: garments worn by people (docs/design.md section 10).

    Attributes:
        queries: per query source with weight in ``model.generator.tryon.query_mix``, the (M, Q, H)
            frozen query outputs of the M garments.
        load: the inputs (person, mask, sketch) of some of the M examples, by position, at the
            generator's try-on side; e.g. ``data.tryon.load_tryon`` over the items.
    """

    queries: dict[str, torch.Tensor]
    load: Callable[[list[int]], TryOnInputs]

    def __len__(self) -> int:
        return len(next(iter(self.queries.values())))


def generate_stage(
    model: UniFashion,
    recipe: Recipe,
    queries: dict[str, Examples],
    pixels: Field,
    num_examples: int,
    val: tuple[torch.Tensor, torch.Tensor] | None,
    tryon: TryOnData | None = None,
) -> Stage:
    """Phase 1b (q2I): image adapter + UNet on frozen query outputs.

    Each example is conditioned on the query outputs of one source (``QUERY_SOURCES``: its
    caption alone, its image, or both), drawn with the weights of ``model.generator.query_mix``.
    With ``standardize_queries`` the head first takes each source's statistics over the training
    set, so ``queries`` must then hold all three (N, Q, H) sources; otherwise those with weight.
    ``pixels(i)`` is example i's image at the generator's resolution, (3, R, R) in [-1, 1].
    With ``tryon`` examples, a share ``model.generator.tryon.fraction`` of the batches are
    inpainting batches instead (:func:`tryon_loss`); with ``sketch_fraction``, that share of the
    plain examples get their image's edges as the sketch (design from a sketch).
    """
    generator_head = model.generator
    model.qformer.requires_grad_(False)
    g = recipe.model.generator
    if g.standardize_queries:
        for source in QUERY_SOURCES:
            rows = queries[source]
            generator_head.set_query_statistics(source, rows.pieces() if isinstance(rows, Rows) else rows)
    weights = mix_weights(g.query_mix)
    drawn = [source for source in QUERY_SOURCES if getattr(g.query_mix, source) > 0]
    fields = {f"queries/{source}": _field(queries[source]) for source in drawn} | {"pixel_values": pixels}
    tryon = tryon if tryon is not None and len(tryon) and g.tryon.fraction > 0 else None

    def loss_fn(batch: Batch, generator: torch.Generator, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        shard = batch.shard
        if tryon is not None and float(torch.rand((), generator=generator)) < g.tryon.fraction:
            loss = tryon_loss(generator_head, g, tryon, shard, generator)
            return loss, {"q2i_tryon": float(loss.detach())}
        sources = torch.multinomial(weights, shard.size, replacement=True, generator=generator)[shard.rows]  # (B,)
        targets = batch.fields["pixel_values"].float()  # (B, 3, R, R)
        sketch = sketches(g, (targets + 1) / 2, None, generator, shard)
        batch_queries = {source: batch.fields[f"queries/{source}"] for source in drawn}  # (B, Q, H) each
        loss = generator_head.loss(gather_queries(batch_queries, torch.arange(len(sources)), sources), targets,
                                   sketch=sketch, drop_prob=g.cfg_drop_prob, generator=generator, source=sources,
                                   shard=shard)
        return loss, {"q2i": float(loss.detach())}

    inception: list[nn.Module] = []  # loaded at the first evaluation that scores FID

    @torch.no_grad()
    def eval_fn() -> dict[str, float]:
        generator_head.eval()
        fixed = torch.Generator().manual_seed(0)
        loss = generator_head.loss(val[0][:64].float(), val[1][:64].float(), drop_prob=0.0, generator=fixed,
                                   source="text")
        metrics = {"val_q2i": float(loss)}
        if recipe.train.eval_fid_items:
            if not inception:
                from unifashion_core.metrics.generation import MemoFeatures, load_inception

                inception.append(MemoFeatures(load_inception()))
            metrics |= _validation_fid(generator_head, recipe, val[0], val[1], recipe.train.eval_fid_items,
                                       inception[0])
        generator_head.train()
        return metrics

    return Stage(
        "generate",
        generator_head,
        _trainable(generator_head),
        recipe.train.generate,
        ExampleData(num_examples, fields),
        loss_fn,
        eval_fn if val is not None and len(val[0]) else None,
    )


def mix_weights(mix: QueryMixConfig) -> torch.Tensor:
    """(3,) the weights of ``QUERY_SOURCES`` in a query mix."""
    return torch.tensor([getattr(mix, source) for source in QUERY_SOURCES], dtype=torch.float)


def gather_queries(queries: dict[str, torch.Tensor], rows: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """(B, Q, H) float: row ``b`` is ``queries[QUERY_SOURCES[sources[b]]][rows[b]]``."""
    template = next(iter(queries.values()))  # (N, Q, H)
    batch = template.new_empty(len(rows), *template.shape[1:])  # (B, Q, H)
    rows, sources = rows.to(template.device), sources.to(template.device)
    for k, source in enumerate(QUERY_SOURCES):
        chosen = sources == k
        if chosen.any():
            batch[chosen] = queries[source][rows[chosen]]
    return batch.float()


def sketches(
    g: GeneratorConfig, images: torch.Tensor, given: torch.Tensor | None, generator: torch.Generator,
    shard: BatchShard | None = None,
) -> torch.Tensor | None:
    """The sketch input of a batch: ``given`` (B, 1, R, R) sketches, else the edges of ``images``
    (B, 3, R, R) in [0, 1], for a share ``g.sketch_fraction`` of the examples; zeros for the rest.
    None when the generator takes no sketch or none is given (no random draw then). With a
    ``shard``, the B examples are its rows: the draw is made for the whole batch."""
    if not g.use_sketch or g.sketch_fraction <= 0:
        return None
    shard = shard or BatchShard.whole(len(images))
    keep = torch.rand(shard.size, generator=generator)[shard.rows] < g.sketch_fraction  # (B,)
    if given is None:
        given = torch.from_numpy(np.stack([edges(image) for image in images.cpu().numpy()]))[:, None]
    return given.to(images) * keep[:, None, None, None].to(images)  # (B, 1, R, R)


def tryon_loss(
    generator_head: nn.Module, g: GeneratorConfig, tryon: TryOnData, shard: BatchShard, generator: torch.Generator
) -> torch.Tensor:
    """q2I on one inpainting batch (paper Eq. 12): ``shard.size`` examples drawn from ``tryon``
    (this process's ``shard.rows`` of them), the UNet filling each person's mask from the masked
    person (and the sketch, for a share ``g.sketch_fraction``), conditioned on the worn garment's
    queries from ``g.tryon.query_mix``."""
    rows = torch.randint(len(tryon), (shard.size,), generator=generator)[shard.rows]  # (B,)
    sources = torch.multinomial(mix_weights(g.tryon.query_mix), shard.size, replacement=True,
                                generator=generator)[shard.rows]  # (B,)
    return inpainting_loss(generator_head, g, gather_queries(tryon.queries, rows, sources),
                           tryon.load(rows.tolist()), sources, generator, shard)


def inpainting_loss(
    generator_head: nn.Module, g: GeneratorConfig, query_output: torch.Tensor, inputs: TryOnInputs,
    source: str | torch.Tensor, generator: torch.Generator, shard: BatchShard | None = None,
) -> torch.Tensor:
    """q2I on inpainting inputs (paper Eq. 12): the UNet fills each person's mask, given the
    masked person and the mask as extra channels (and the sketch, for a share
    ``g.sketch_fraction``), conditioned on ``query_output`` (B, Q, H) of ``source``; with a
    ``shard``, the B examples are its rows of a batch split across processes."""
    device = next(generator_head.parameters()).device
    person, mask = (torch.from_numpy(array).to(device) for array in (inputs.pixel_values, inputs.mask))
    sketch = sketches(g, (person + 1) / 2, torch.from_numpy(inputs.sketch).to(device), generator, shard)
    return generator_head.loss(query_output, person, mask=mask, masked_pixel_values=person * (1 - mask),
                               sketch=sketch, drop_prob=g.cfg_drop_prob, generator=generator, source=source,
                               shard=shard)


def _validation_fid(
    generator_head: nn.Module, recipe: Recipe, queries: torch.Tensor, pixels: torch.Tensor, num_items: int,
    extractor: nn.Module,
) -> dict[str, float]:
    """FID/KID of images generated from validation text queries against the validation images;
    ``extractor`` is the stage's ``MemoFeatures`` Inception, so the validation images go through it
    at the first evaluation only."""
    from unifashion_core.metrics.generation import fid_kid

    g = recipe.model.generator
    count = min(num_items, len(queries))
    fake = torch.cat([
        generator_head.sample(queries[rows].float(), num_inference_steps=g.num_inference_steps,
                              sampler=g.sampler, guidance_scale=g.guidance_scale, seed=rows.start, source="text").images
        for rows in batch_slices(count, 32)
    ])
    real = (pixels[:count].float() + 1) / 2
    scores = fid_kid(real, fake, kid_subset_size=min(50, count), extractor=extractor)
    return {"val_fid": scores["fid"], "val_kid": scores["kid_mean"]}
