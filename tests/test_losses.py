"""ITC, ITM and CIR losses against references written out with loops."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unifashion_core.losses import attribute_loss, cir_loss, itc_loss, itm_loss, max_sim, select_hard_negatives


def reference_cross_entropy(rows: np.ndarray, label_smoothing: float = 0.0) -> float:
    """Mean over rows of the smoothed cross-entropy with the diagonal as the target."""
    total = 0.0
    for i, row in enumerate(rows):
        log_norm = math.log(sum(math.exp(v) for v in row))
        log_probs = [v - log_norm for v in row]
        smooth = sum(-lp for lp in log_probs) / len(row)
        total += (1 - label_smoothing) * -log_probs[i] + label_smoothing * smooth
    return total / len(rows)


def reference_itc(images: np.ndarray, texts: np.ndarray, temperature: float,
                  label_smoothing: float = 0.0) -> float:
    """Two-way ITC on max-over-queries similarities, one dot product at a time."""
    batch, num_queries, _ = images.shape
    sim = np.zeros((batch, batch))
    for i in range(batch):
        for j in range(batch):
            sim[i, j] = max(float(np.dot(images[i, q], texts[j])) for q in range(num_queries))
    logits = sim / temperature
    return (reference_cross_entropy(logits, label_smoothing)
            + reference_cross_entropy(logits.T, label_smoothing)) / 2


@pytest.fixture
def toy() -> tuple[torch.Tensor, torch.Tensor]:
    """3 images with 2 queries each and 3 texts, D = 4, normalised."""
    images = F.normalize(torch.randn(3, 2, 4, dtype=torch.float64), dim=-1)
    texts = F.normalize(torch.randn(3, 4, dtype=torch.float64), dim=-1)
    return images, texts


def test_max_sim_takes_the_best_query() -> None:
    images = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.5, 0.5], [-1.0, 0.0]]])  # (2, 2, 2)
    texts = torch.tensor([[0.0, 2.0], [3.0, 1.0], [-1.0, -1.0]])  # (3, 2)
    expected = torch.tensor([[2.0, 3.0, -1.0], [1.0, 2.0, 1.0]])
    torch.testing.assert_close(max_sim(images, texts), expected)


def test_itc_matches_reference(toy: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, texts = toy
    expected = reference_itc(images.numpy(), texts.numpy(), 0.07)
    assert itc_loss(images, texts, 0.07).item() == pytest.approx(expected, rel=1e-9)


def test_label_smoothing_matches_reference(toy: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, texts = toy
    plain = itc_loss(images, texts, 0.07).item()
    smoothed = itc_loss(images, texts, 0.07, label_smoothing=0.1).item()
    assert smoothed == pytest.approx(reference_itc(images.numpy(), texts.numpy(), 0.07, 0.1),
                                     rel=1e-9)
    assert smoothed != pytest.approx(plain)


def test_gather_is_ignored_in_one_process(toy: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, texts = toy
    temperature = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    gathered = itc_loss(images, texts, temperature, gather=True)
    assert gathered.item() == itc_loss(images, texts, temperature, gather=False).item()
    gathered.backward()
    assert temperature.grad is not None and temperature.grad.item() != 0.0


def test_hard_negatives_never_pick_the_positive() -> None:
    sim = torch.randn(6, 6)
    generator = torch.Generator().manual_seed(0)
    for strategy in ("sample", "hardest"):
        for _ in range(50):
            neg_text, neg_image = select_hard_negatives(sim, sim.T, strategy, generator)
            assert (neg_text != torch.arange(6)).all() and (neg_image != torch.arange(6)).all()


def test_hardest_picks_the_off_diagonal_argmax() -> None:
    sim_i2t, sim_t2i = torch.randn(5, 5), torch.randn(5, 5)
    neg_text, neg_image = select_hard_negatives(sim_i2t, sim_t2i, "hardest")
    for i in range(5):
        assert neg_text[i] == max((j for j in range(5) if j != i), key=lambda j: sim_i2t[i, j])
        assert neg_image[i] == max((j for j in range(5) if j != i), key=lambda j: sim_t2i[i, j])


def test_identical_captions_are_not_negatives() -> None:
    texts = ["red dress", "red dress", "blue shirt", "green skirt"]
    sim = torch.zeros(4, 4)
    sim[0, 1] = sim[1, 0] = 10.0  # the duplicate pair looks like the hardest negative
    generator = torch.Generator().manual_seed(0)
    for strategy in ("hardest", "sample"):
        for _ in range(30):
            neg_text, neg_image = select_hard_negatives(sim, sim, strategy, generator, texts)
            for i in range(4):
                assert texts[neg_text[i]] != texts[i] and texts[neg_image[i]] != texts[i]
    same = ["a"] * 3  # no true negative at all: any other item, still never the positive
    neg_text, _ = select_hard_negatives(torch.randn(3, 3), torch.randn(3, 3), "hardest", None, same)
    assert (neg_text != torch.arange(3)).all()


def test_itc_with_positives_spreads_the_targets_over_them(toy: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, texts = toy
    assert itc_loss(images, texts, 0.07, positives=torch.eye(3, dtype=torch.bool)).item() == pytest.approx(
        itc_loss(images, texts, 0.07).item(), rel=1e-9)
    positives = torch.eye(3, dtype=torch.bool)
    positives[2, 0] = True  # text 0 ("blue dress") describes image 2 too
    logits = max_sim(images, texts) / 0.07  # (images, texts)
    i2t = -(torch.log_softmax(logits, 1) * positives / positives.sum(1, keepdim=True)).sum(1).mean()
    t2i = -(torch.log_softmax(logits.T, 1) * positives.T / positives.T.sum(1, keepdim=True)).sum(1).mean()
    assert itc_loss(images, texts, 0.07, positives=positives).item() == pytest.approx(((i2t + t2i) / 2).item())


def test_swapped_negative_texts_join_the_image_to_text_softmax_only(toy: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, texts = toy
    negatives = F.normalize(torch.randn(2, 4, dtype=torch.float64), dim=-1)
    excluded = torch.tensor([[False, False], [True, False], [False, True]])  # negative k may describe image b
    positives = torch.eye(3, dtype=torch.bool)
    positives[2, 0] = True
    for given in (None, positives):
        logits = max_sim(images, texts) / 0.07  # (images, texts)
        extra = (max_sim(images, negatives) / 0.07).masked_fill(excluded, -math.inf)
        wanted = torch.eye(3, dtype=torch.bool) if given is None else given
        i2t_rows = torch.log_softmax(torch.cat([logits, extra], 1), 1)[:, :3]
        i2t = -(i2t_rows * wanted / wanted.sum(1, keepdim=True)).sum(1).mean()
        t2i = -(torch.log_softmax(logits.T, 1) * wanted.T / wanted.T.sum(1, keepdim=True)).sum(1).mean()
        loss = itc_loss(images, texts, 0.07, positives=given, negative_texts=negatives, negative_excluded=excluded)
        assert loss.item() == pytest.approx(((i2t + t2i) / 2).item(), rel=1e-9)
    no_negatives = itc_loss(images, texts, 0.07, negative_texts=negatives[:0], negative_excluded=excluded[:, :0])
    assert no_negatives.item() == pytest.approx(itc_loss(images, texts, 0.07).item(), rel=1e-12)


def test_texts_that_describe_an_image_are_never_its_negatives() -> None:
    positives = torch.eye(4, dtype=torch.bool)
    positives[3, 0] = True  # text 0 describes image 3 as well, not the other way round
    sim = torch.zeros(4, 4)
    sim[3, 0] = sim[0, 3] = 10.0  # the hardest candidates are exactly that pair
    generator = torch.Generator().manual_seed(0)
    for strategy in ("hardest", "sample"):
        for _ in range(30):
            neg_text, neg_image = select_hard_negatives(sim, sim, strategy, generator, positives=positives)
            assert neg_text[3] != 0 and neg_image[0] != 3  # image 3 / text 0 keep away from each other
    neg_text, neg_image = select_hard_negatives(sim, sim, "hardest", positives=positives)
    assert neg_text[0] == 3 and neg_image[3] == 0  # text 3 does not describe image 0: a fair negative


def test_attribute_loss_classifies_each_image_among_every_value_of_each_field() -> None:
    """Per field, cross-entropy of the image's max-sim logits over that field's values; images
    without a value add nothing; the sum is divided by the batch, so halves average to the whole."""
    generator = torch.Generator().manual_seed(3)
    images = F.normalize(torch.randn(4, 3, 8, generator=generator), dim=-1)  # (B, Q, D)
    values = F.normalize(torch.randn(5, 8, generator=generator), dim=-1)  # 3 colours, then 2 patterns
    groups = [slice(0, 3), slice(3, 5)]
    targets = torch.tensor([[0, 1], [2, -1], [1, 0], [-1, -1]])
    loss = attribute_loss(images, values, 0.1, targets, groups)
    logits = torch.einsum("bqd,wd->bqw", images, values).amax(1) / 0.1  # (B, W)
    expected = sum(F.cross_entropy(logits[b, groups[f]][None], targets[b, f][None])
                   for b in range(4) for f in range(2) if targets[b, f] >= 0) / 4
    assert torch.allclose(loss, expected)
    halves = [attribute_loss(images[rows], values, 0.1, targets[rows], groups) for rows in (slice(0, 2), slice(2, 4))]
    assert torch.allclose((halves[0] + halves[1]) / 2, loss)  # two processes' mean = one process's
    assert float(attribute_loss(images[3:], values, 0.1, targets[3:], groups)) == 0.0
    right = F.normalize(values[[0, 2]].clone(), dim=-1)[:, None].expand(2, 3, 8)  # images on their value
    assert attribute_loss(right, values, 0.01, torch.tensor([[0, -1], [2, -1]]), groups) < 1e-3


def test_hard_negative_errors() -> None:
    with pytest.raises(ValueError, match="strategy"):
        select_hard_negatives(torch.randn(3, 3), torch.randn(3, 3), "easiest")
    with pytest.raises(ValueError, match="at least 2"):
        select_hard_negatives(torch.randn(1, 1), torch.randn(1, 1))


def test_itm_loss_is_cross_entropy_on_the_3b_batch() -> None:
    batch, num_tokens, width, length = 4, 3, 5, 6
    image_tokens = torch.randn(batch, num_tokens, width)
    input_ids = torch.randint(0, 100, (batch, length))
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    sim_i2t, sim_t2i = torch.randn(batch, batch), torch.randn(batch, batch)
    seen = {}

    def itm_logits_fn(tokens: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        seen.update(tokens=tokens, ids=ids)
        feature = tokens.sum(dim=(1, 2)) + ids.float().sum(dim=1) / 100  # (3B,)
        return torch.stack([feature, -feature], dim=1)  # (3B, 2)

    loss = itm_loss(itm_logits_fn, image_tokens, input_ids, attention_mask, sim_i2t, sim_t2i,
                    "hardest")
    neg_text, neg_image = select_hard_negatives(sim_i2t, sim_t2i, "hardest")
    pairs = ([(i, i) for i in range(batch)] + [(i, int(neg_text[i])) for i in range(batch)]
             + [(int(neg_image[t]), t) for t in range(batch)])
    expected = 0.0
    for row, (image, text) in enumerate(pairs):
        torch.testing.assert_close(seen["tokens"][row], image_tokens[image])
        torch.testing.assert_close(seen["ids"][row], input_ids[text])
        feature = float(image_tokens[image].sum() + input_ids[text].float().sum() / 100)
        logits = [feature, -feature]
        label = 1 if row < batch else 0
        expected += -(logits[label] - math.log(sum(math.exp(v) for v in logits)))
    assert loss.item() == pytest.approx(expected / (3 * batch), rel=1e-5)


def test_cir_paper_is_the_sum_of_its_parts() -> None:
    fused = F.normalize(torch.randn(4, 8, dtype=torch.float64), dim=-1)
    targets = F.normalize(torch.randn(4, 3, 8, dtype=torch.float64), dim=-1)
    captions = F.normalize(torch.randn(4, 8, dtype=torch.float64), dim=-1)
    expected = (reference_itc(targets.numpy(), fused.numpy(), 0.05)
                + reference_itc(captions[:, None].numpy(), fused.numpy(), 0.05))
    assert cir_loss(fused, targets, captions, 0.05).item() == pytest.approx(expected, rel=1e-9)


def test_cir_code_variant_contrasts_fused_queries_one_way() -> None:
    fused = F.normalize(torch.randn(4, 8, dtype=torch.float64), dim=-1)
    fused_queries = F.normalize(torch.randn(4, 3, 8, dtype=torch.float64), dim=-1)
    targets = F.normalize(torch.randn(4, 3, 8, dtype=torch.float64), dim=-1)
    captions = F.normalize(torch.randn(4, 8, dtype=torch.float64), dim=-1)
    sim = np.array([[max(float(q @ c) for q in fused_queries[i]) for c in captions]
                    for i in range(4)])  # (B, B) fused queries -> captions
    expected = reference_itc(targets.numpy(), fused.numpy(), 0.05)
    expected += reference_cross_entropy(sim / 0.05)
    loss = cir_loss(fused, targets, captions, 0.05, variant="code",
                    fused_query_embeds=fused_queries)
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="fused_query_embeds"):
        cir_loss(fused, targets, captions, 0.05, variant="code")
    with pytest.raises(ValueError, match="variant"):
        cir_loss(fused, targets, captions, 0.05, variant="blip")


def test_cir_with_itm_adds_the_itm_term() -> None:
    fused = F.normalize(torch.randn(4, 8), dim=-1)
    targets = F.normalize(torch.randn(4, 3, 8), dim=-1)
    captions = F.normalize(torch.randn(4, 8), dim=-1)
    tokens, ids, mask = torch.randn(4, 2, 5), torch.randint(0, 50, (4, 6)), torch.ones(4, 6)

    def itm_logits_fn(tokens: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        feature = tokens.mean(dim=(1, 2)) - ids.float().mean(dim=1) / 50  # (3B,)
        return torch.stack([feature, 2 * feature], dim=1)  # (3B, 2)

    total = cir_loss(fused, targets, captions, 0.1, itm_logits_fn=itm_logits_fn,
                     target_image_tokens=tokens, input_ids=ids, attention_mask=mask,
                     strategy="hardest")
    sim = max_sim(targets, fused) / 0.1  # (B, B) target image -> query text
    itm = itm_loss(itm_logits_fn, tokens, ids, mask, sim, sim.T, "hardest")
    assert total.item() == pytest.approx((cir_loss(fused, targets, captions, 0.1) + itm).item(),
                                         rel=1e-6)


def _gathered_itc_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """One process of a 2-process gloo group: its ITC loss on its half of a shared batch."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size)
    images = F.normalize(torch.randn(6, 2, 4, generator=torch.Generator().manual_seed(1)), dim=-1)
    texts = F.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(2)), dim=-1)
    local_images = images[rank * 3 : (rank + 1) * 3].clone().requires_grad_(True)
    loss = itc_loss(local_images, texts[rank * 3 : (rank + 1) * 3], 0.1, gather=True)
    loss.backward()
    torch.save({"loss": loss.item(), "grad": local_images.grad}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_gather_across_two_processes_equals_the_full_batch(tmp_path) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_gathered_itc_worker, args=(2, port, str(tmp_path)), nprocs=2)
    images = F.normalize(torch.randn(6, 2, 4, generator=torch.Generator().manual_seed(1)), dim=-1)
    texts = F.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(2)), dim=-1)
    images.requires_grad_(True)
    full = itc_loss(images, texts, 0.1)
    full.backward()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert (ranks[0]["loss"] + ranks[1]["loss"]) / 2 == pytest.approx(full.item(), rel=1e-5)
    # Each rank's loss is a mean over its half; the all-gather carries the gradient back to the
    # other rank's features, so the summed per-rank gradients equal 2x the full-batch gradient.
    grads = torch.cat([ranks[0]["grad"], ranks[1]["grad"]])
    torch.testing.assert_close(grads / 2, images.grad, rtol=1e-4, atol=1e-6)
