"""Training losses of UniFashion: ITC (paper Eq. 3), ITM (Eq. 4) and CIR (Eq. 10); docs/design.md section 2.

Pure tensor functions. The model enters only through callables (``itm_logits_fn``), so every loss
can be checked against a hand-computed reference in the tests.

Shapes: ``B`` batch, ``Q`` query tokens, ``D`` projection dim, ``M`` texts, ``W`` world size,
``N``/``C`` image-token count and width, ``L`` text length. Embeddings are expected to be
L2-normalised already (the model does that); ``temperature`` divides the similarities.
"""

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from unifashion_core import distributed
from unifashion_core.distributed import BatchShard

HARD_NEGATIVE_STRATEGIES = ("sample", "hardest")
CIR_VARIANTS = ("paper", "code")

# (image_tokens (3B, N, C), input_ids (3B, L), attention_mask (3B, L)) -> ITM logits (3B, 2)
ItmLogitsFn = Callable[[Tensor, Tensor, Tensor], Tensor]
# positions (k,) in the batch -> their image tokens (k, N, C)
TokensFn = Callable[[Tensor], Tensor]


def max_sim(image_embeds: Tensor, text_embeds: Tensor) -> Tensor:
    """Late-interaction similarity: for each image, the best of its query vectors.

    Args:
        image_embeds: ``(B, Q, D)`` projected query outputs.
        text_embeds: ``(M, D)`` projected text embeddings.

    Returns:
        ``(B, M)`` similarities ``max_q <image_embeds[b, q], text_embeds[m]>``.
    """
    per_query = torch.einsum("bqd,md->bqm", image_embeds, text_embeds)  # (B, Q, M)
    return per_query.max(dim=1).values  # (B, M)


def pooled(image_embeds: Tensor) -> Tensor:
    """One vector per image: the mean of its normalised query embeddings, renormalised.

    Args:
        image_embeds: ``(B, Q, D)`` projected query outputs.

    Returns:
        ``(B, D)`` unit vectors.
    """
    return F.normalize(image_embeds.float().mean(dim=1), dim=-1)


def itc_logits(
    image_embeds: Tensor, text_embeds: Tensor, temperature: float | Tensor, gather: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Contrastive logits of the local batch against the (possibly gathered) global batch.

    Args:
        image_embeds: ``(B, Q, D)`` image query embeddings.
        text_embeds: ``(B, D)`` text embeddings; row ``b`` is the positive of image ``b``.
        temperature: the softmax temperature (a float or a 0-d tensor that learns).
        gather: all-gather features (with gradient) from every process when
            ``torch.distributed`` runs with world size > 1; ignored in one process.

    Returns:
        ``logits_i2t`` ``(B, W * B)``, ``logits_t2i`` ``(B, W * B)`` and ``labels`` ``(B,)``
        (the column of each row's positive, offset by this process's rank).
    """
    rank, size = distributed.world() if gather else (0, 1)
    all_images, all_texts = image_embeds, text_embeds
    if size > 1:
        all_images = distributed.gather_with_grad(image_embeds)  # (W * B, Q, D)
        all_texts = distributed.gather_with_grad(text_embeds)  # (W * B, D)
    logits_i2t = max_sim(image_embeds, all_texts) / temperature  # (B, W * B)
    logits_t2i = max_sim(all_images, text_embeds).t() / temperature  # (B, W * B)
    batch = image_embeds.shape[0]
    labels = torch.arange(batch, device=image_embeds.device) + rank * batch  # (B,)
    return logits_i2t, logits_t2i, labels


def itc_loss(
    image_embeds: Tensor,
    text_embeds: Tensor,
    temperature: float | Tensor,
    label_smoothing: float = 0.0,
    gather: bool = False,
    positives: Tensor | None = None,
    negative_texts: Tensor | None = None,
    negative_excluded: Tensor | None = None,
) -> Tensor:
    """Image-text contrastive loss (Eq. 3): mean of the i2t and t2i in-batch cross-entropies.

    Args:
        image_embeds: ``(B, Q, D)`` image query embeddings.
        text_embeds: ``(B, D)`` text embeddings, row ``b`` matching image ``b``.
        temperature: the softmax temperature.
        label_smoothing: cross-entropy label smoothing (BLIP-2 uses 0.1, UniFashion's code 0).
        gather: gather features across processes (see :func:`itc_logits`).
        positives: ``[i, j]`` True when text ``j`` describes image ``i`` too (a short text such
            as "blue dress" fits many images); the targets are then spread evenly over each row's
            positives. ``(B, B)`` bool over the local batch, or, when gathering, ``(W * B, W * B)``
            over the gathered global batch (this process's rows are taken from it). None: only
            the diagonal.
        negative_texts: ``(K, D)`` extra texts that are no image's positive (the swapped-attribute
            copies of ``text_augment.swap_negatives``); they join the image->text softmax only.
        negative_excluded: ``(B, K)`` bool, True where negative ``k`` may describe image ``b``
            (left out of that row's softmax).

    Returns:
        The scalar loss.
    """
    logits_i2t, logits_t2i, labels = itc_logits(image_embeds, text_embeds, temperature, gather)
    targets_i2t = labels if positives is None else _spread_targets(positives, labels, logits_i2t.shape[1])
    targets_t2i = labels if positives is None else _spread_targets(positives.T, labels, logits_t2i.shape[1])
    if negative_texts is not None and negative_texts.shape[0]:
        extra = max_sim(image_embeds, negative_texts) / temperature  # (B, K)
        if negative_excluded is not None:
            extra = extra.masked_fill(negative_excluded, torch.finfo(extra.dtype).min)
        logits_i2t = torch.cat([logits_i2t, extra.to(logits_i2t.dtype)], dim=1)  # (B, W * B + K)
        if targets_i2t.dim() == 2:
            targets_i2t = F.pad(targets_i2t, (0, extra.shape[1]))
    loss_i2t = F.cross_entropy(logits_i2t, targets_i2t, label_smoothing=label_smoothing)
    loss_t2i = F.cross_entropy(logits_t2i, targets_t2i, label_smoothing=label_smoothing)
    return (loss_i2t + loss_t2i) / 2


def attribute_loss(
    image_embeds: Tensor, value_embeds: Tensor, temperature: float | Tensor, targets: Tensor, groups: Sequence[slice]
) -> Tensor:
    """Each image classified among every value of each attribute field, with the values' text
    embeddings as the classifier (CLIP's zero-shot classifier, used as a loss): "red" must beat
    every other colour for a red item, not only the texts that happen to share its batch.

    Args:
        image_embeds: ``(B, Q, D)`` image query embeddings.
        value_embeds: ``(W, D)`` text embeddings of the fields' values, one field after another.
        temperature: the softmax temperature (ITC's).
        targets: ``(B, F)`` each image's value as an index into its field's group, -1 for none.
        groups: the F fields' slices of the W values.

    Returns:
        The summed cross-entropy of every (image, field) with a value, divided by B: a mean over
        processes of their rows' losses is then the global batch's.
    """
    logits = max_sim(image_embeds, value_embeds) / temperature  # (B, W)
    total = logits.new_zeros(())
    for field, group in enumerate(groups):
        has = targets[:, field] >= 0  # (B,)
        if bool(has.any()):
            total = total + F.cross_entropy(logits[has][:, group], targets[has, field], reduction="sum")
    return total / max(len(image_embeds), 1)


def _spread_targets(positives: Tensor, labels: Tensor, num_columns: int) -> Tensor:
    """``(B, num_columns)`` target probabilities: each row's positives, evenly. ``positives`` is
    ``(B, B)`` over the local batch (put in its block of columns) or ``(num_columns, num_columns)``
    over the gathered global batch (this process's rows of it)."""
    batch = labels.shape[0]
    start = int(labels[0])  # the local block's first column (rank * B)
    if positives.shape[1] == num_columns:
        targets = positives[start:start + batch].float()  # (B, W * B)
    else:
        targets = torch.zeros(batch, num_columns, device=positives.device)
        targets[:, start:start + batch] = positives.float()
    return targets / targets.sum(dim=1, keepdim=True)


def _same_caption(texts: list[str], batch: int, device: torch.device) -> Tensor:
    """``(B, B)`` bool: True where two items have identical captions."""
    if len(texts) != batch:
        raise ValueError(f"texts has {len(texts)} entries for a batch of {batch}.")
    first_seen: dict[str, int] = {}
    codes = torch.tensor([first_seen.setdefault(t, len(first_seen)) for t in texts], device=device)
    return codes[:, None] == codes[None, :]  # (B, B)


def _sample_allowed(sim: Tensor, allowed: Tensor, generator: torch.Generator | None) -> Tensor:
    """One index per row drawn from ``softmax(sim)`` restricted to ``allowed`` entries."""
    weights = torch.softmax(sim.float().masked_fill(~allowed, float("-inf")), dim=1)  # (R, B)
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)  # (R,)


def _pick_negatives(
    sim: Tensor, strategy: str, generator: torch.Generator | None, same: Tensor | None
) -> Tensor:
    """One negative column per row of a square similarity matrix (never the diagonal)."""
    batch = sim.shape[0]
    off_diagonal = ~torch.eye(batch, dtype=torch.bool, device=sim.device)  # (B, B)
    distinct = off_diagonal if same is None else off_diagonal & ~same
    # A row whose every other caption equals its own has no true negative: take any other item.
    distinct = torch.where(distinct.any(dim=1, keepdim=True), distinct, off_diagonal)
    if strategy == "sample":
        return _sample_allowed(sim, distinct, generator)
    choice = sim.masked_fill(~off_diagonal, float("-inf")).argmax(dim=1)  # (B,)
    clash = ~distinct.gather(1, choice[:, None]).squeeze(1)  # (B,) chosen caption == own caption
    if clash.any():
        choice[clash] = _sample_allowed(sim[clash], distinct[clash], generator)
    return choice


@torch.no_grad()
def select_hard_negatives(
    sim_i2t: Tensor,
    sim_t2i: Tensor,
    strategy: str = "sample",
    generator: torch.Generator | None = None,
    texts: list[str] | None = None,
    positives: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Choose one hard negative text per image and one hard negative image per text.

    ``sample`` (BLIP-2): multinomial on ``softmax(sim)`` with the positive (diagonal) excluded.
    ``hardest`` (UniFashion code): the most similar non-positive. When ``texts`` are given, a
    negative whose caption is identical to the positive's caption is not a negative: ``sample``
    never draws one, and ``hardest`` falls back to sampling among the candidates with a
    different caption (if every other caption is identical, any other item is used).

    Args:
        sim_i2t: ``(B, B)`` image-to-text similarities (usually the temperature-scaled logits).
        sim_t2i: ``(B, B)`` text-to-image similarities.
        strategy: ``"sample"`` or ``"hardest"``.
        generator: random generator for sampling (on the same device as the similarities).
        texts: the ``B`` captions of the batch, to avoid false negatives from duplicates.
        positives: ``(B, B)`` bool, ``[i, j]`` True when text ``j`` describes image ``i``: never a
            negative pair (overrides ``texts``).

    Returns:
        ``neg_text_idx`` ``(B,)`` (a text index for each image) and ``neg_image_idx`` ``(B,)``
        (an image index for each text).

    Raises:
        ValueError: unknown strategy, non-square similarities, or ``B < 2`` (ITM needs at
            least two pairs per batch to have any negative).
    """
    if strategy not in HARD_NEGATIVE_STRATEGIES:
        raise ValueError(f"unknown hard-negative strategy {strategy!r}; use one of "
                         f"{', '.join(HARD_NEGATIVE_STRATEGIES)}.")
    batch = sim_i2t.shape[0]
    if sim_i2t.shape != (batch, batch) or sim_t2i.shape != (batch, batch):
        raise ValueError(f"similarities must be square (B, B), got {tuple(sim_i2t.shape)} "
                         f"and {tuple(sim_t2i.shape)}.")
    if batch < 2:
        raise ValueError("hard negatives need a batch of at least 2 pairs (ITM requires B >= 2).")
    if positives is None and texts is not None:
        positives = _same_caption(texts, batch, sim_i2t.device)
    neg_text_idx = _pick_negatives(sim_i2t, strategy, generator, positives)  # (B,)
    neg_image_idx = _pick_negatives(sim_t2i, strategy, generator, None if positives is None else positives.T)  # (B,)
    return neg_text_idx, neg_image_idx


def itm_loss(
    itm_logits_fn: ItmLogitsFn,
    image_tokens: Tensor | TokensFn,
    input_ids: Tensor,
    attention_mask: Tensor,
    sim_i2t: Tensor,
    sim_t2i: Tensor,
    strategy: str = "sample",
    generator: torch.Generator | None = None,
    texts: list[str] | None = None,
    shard: BatchShard | None = None,
    positives: Tensor | None = None,
) -> Tensor:
    """Image-text matching loss (Eq. 4) on B positives and 2B hard negatives.

    The 3B batch is: the B positive pairs, the B images with their hard-negative texts, and
    the B texts with their hard-negative images; labels are ``[1] * B + [0] * 2B``.

    With a ``shard`` (data-parallel training), the texts, ids and similarities are those of the
    whole batch of G pairs (every process holds them), negatives are chosen among all G with the
    same generator on every process, and this process scores the 3B of its own ``shard.rows``.

    Args:
        itm_logits_fn: ``(image_tokens, input_ids, attention_mask) -> (3B, 2)`` logits of the
            multimodal Q-Former pass and its ITM head.
        image_tokens: ``(G, N, C)`` vision-encoder tokens, or a function giving the tokens of
            batch positions ``(k,) -> (k, N, C)`` (so a process need not hold every image).
        input_ids: ``(G, L)`` text token ids.
        attention_mask: ``(G, L)`` text attention mask.
        sim_i2t: ``(G, G)`` image-to-text similarities used to mine negatives.
        sim_t2i: ``(G, G)`` text-to-image similarities used to mine negatives.
        strategy: hard-negative strategy (see :func:`select_hard_negatives`).
        generator: random generator for the sampling.
        texts: the G captions, so identical captions are never used as negatives.
        shard: this process's rows of the batch (None: all of it, G = B).
        positives: ``(G, G)`` bool, text ``j`` describes image ``i``: never used as a negative pair
            (overrides ``texts``).

    Returns:
        The scalar loss.
    """
    rows = (shard or BatchShard.whole(input_ids.shape[0])).rows
    neg_text_idx, neg_image_idx = select_hard_negatives(
        sim_i2t.detach(), sim_t2i.detach(), strategy, generator, texts, positives
    )
    neg_text_idx, neg_image_idx = neg_text_idx[rows], neg_image_idx[rows]  # (B,) positions in the batch
    if isinstance(image_tokens, Tensor):  # whole, so gradients sum into the tokens as without a shard
        own = image_tokens if shard is None or shard.local_size == shard.size else image_tokens[rows]  # (B, N, C)
        tokens_of = image_tokens.__getitem__
    else:
        own, tokens_of = image_tokens(torch.arange(input_ids.shape[0], device=input_ids.device)[rows]), image_tokens
    images_3b = torch.cat([own, own, tokens_of(neg_image_idx)])  # (3B, N, C)
    ids, mask = input_ids[rows], attention_mask[rows]  # (B, L)
    ids_3b = torch.cat([ids, input_ids[neg_text_idx], ids])  # (3B, L)
    mask_3b = torch.cat([mask, attention_mask[neg_text_idx], mask])  # (3B, L)
    logits = itm_logits_fn(images_3b, ids_3b, mask_3b)  # (3B, 2)
    batch = ids.shape[0]
    labels = torch.cat([torch.ones(batch), torch.zeros(2 * batch)]).long().to(logits.device)
    return F.cross_entropy(logits, labels)


def cir_loss(
    fused_embeds: Tensor,
    target_image_embeds: Tensor,
    target_caption_embeds: Tensor,
    temperature: float | Tensor,
    *,
    variant: str = "paper",
    fused_query_embeds: Tensor | None = None,
    label_smoothing: float = 0.0,
    gather: bool = False,
    itm_logits_fn: ItmLogitsFn | None = None,
    target_image_tokens: Tensor | TokensFn | None = None,
    input_ids: Tensor | None = None,
    attention_mask: Tensor | None = None,
    strategy: str = "sample",
    generator: torch.Generator | None = None,
    texts: list[str] | None = None,
    shard: BatchShard | None = None,
) -> Tensor:
    """Composed-retrieval loss (Eq. 10): ``ITC(e, Z_T) + ITC(e, Z_C) [+ ITM(t, Z_T)]``.

    ``e`` is the fused [CLS] embedding of (reference image, modification text), ``Z_T`` the
    target image's query embeddings and ``Z_C`` the target caption's text embedding. The first
    term is a two-way ITC with the target images as "images" and ``e`` as "texts".

    The caption term depends on ``variant``:

    - ``"paper"``: ``e`` against ``Z_C``, both directions (what the paper writes).
    - ``"code"``: the released code's version: the fused *query* embeddings
      ``fused_query_embeds`` against ``Z_C`` (max over queries), one direction only
      (fused query -> caption).

    The ITM term is added when ``itm_logits_fn`` is given: the target image tokens are matched
    with the query text (``input_ids``), negatives mined from the fused-vs-target similarities;
    with a ``shard`` they are mined over the whole batch (see :func:`itm_loss`).

    Args:
        fused_embeds: ``(B, D)`` fused [CLS] embeddings.
        target_image_embeds: ``(B, Q, D)`` target image query embeddings.
        target_caption_embeds: ``(B, D)`` target caption text embeddings.
        temperature: the softmax temperature.
        variant: ``"paper"`` or ``"code"`` (see above).
        fused_query_embeds: ``(B, Q, D)`` fused query embeddings; required by ``"code"``.
        label_smoothing: cross-entropy label smoothing for the contrastive terms.
        gather: gather features across processes for the contrastive terms.
        itm_logits_fn: ``(image_tokens, input_ids, attention_mask) -> (3B, 2)``, or None to
            leave the ITM term out (the caller may add it).
        target_image_tokens: ``(G, N, C)`` target image tokens, or a function of batch
            positions (ITM only).
        input_ids: ``(G, L)`` modification-text ids (ITM only).
        attention_mask: ``(G, L)`` their attention mask (ITM only).
        strategy: hard-negative strategy for ITM.
        generator: random generator for ITM negative sampling.
        texts: the G target captions, so identical targets are not used as negatives.
        shard: this process's rows of a batch split across processes (ITM only; None: all of it).

    Returns:
        The scalar loss (sum of the terms).
    """
    if variant not in CIR_VARIANTS:
        raise ValueError(f"unknown CIR variant {variant!r}; use one of {', '.join(CIR_VARIANTS)}.")
    loss = itc_loss(target_image_embeds, fused_embeds, temperature, label_smoothing, gather)
    loss = loss + _cir_caption_term(fused_embeds, target_caption_embeds, temperature, variant,
                                    fused_query_embeds, label_smoothing, gather)
    if itm_logits_fn is None:
        return loss
    if target_image_tokens is None or input_ids is None or attention_mask is None:
        raise ValueError("the CIR ITM term needs target_image_tokens, input_ids, attention_mask.")
    with torch.no_grad():
        targets, fused = target_image_embeds, fused_embeds
        if shard is not None:  # negatives are mined over the whole batch: the other processes' rows too
            targets, fused = distributed.gather(targets), distributed.gather(fused)
        sim_i2t = max_sim(targets, fused) / temperature  # (G, G) target -> text
    return loss + itm_loss(itm_logits_fn, target_image_tokens, input_ids, attention_mask,
                           sim_i2t, sim_i2t.t(), strategy, generator, texts, shard)


def _cir_caption_term(
    fused_embeds: Tensor,
    target_caption_embeds: Tensor,
    temperature: float | Tensor,
    variant: str,
    fused_query_embeds: Tensor | None,
    label_smoothing: float,
    gather: bool,
) -> Tensor:
    """The ``ITC(e, Z_C)`` term of :func:`cir_loss` in the chosen variant."""
    if variant == "paper":
        captions = target_caption_embeds[:, None, :]  # (B, 1, D): each caption is a 1-query "image"
        return itc_loss(captions, fused_embeds, temperature, label_smoothing, gather)
    if fused_query_embeds is None:
        raise ValueError('the "code" CIR variant needs fused_query_embeds (B, Q, D).')
    logits, _, labels = itc_logits(fused_query_embeds, target_caption_embeds, temperature, gather)
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)  # fused -> caption only
