"""Short shopper queries: the attribute phrases, tie-aware P@k / nDCG@k, `bench queries`, and the
phase-1a text augmentation that trains for them."""

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from unifashion_cli.main import app
from unifashion_core.config import load_recipe
from unifashion_core.data.attribute_text import attribute_phrase, phrase_fields, with_article
from unifashion_core.data.manifest import Item, load_dataset
from unifashion_core.errors import UserError
from unifashion_core.evaluation.bench_queries import PHRASINGS, bench_queries, parse_shapes, short_queries
from unifashion_core.metrics.ranking import ndcg_at_k, precision_at_k
from unifashion_core.train.text_augment import PARAPHRASES, attribute_vocabulary, augment_batch, swap_negatives

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny.yaml"
runner = CliRunner()


def _item(number: int, caption: str = "", **attributes: str | None) -> Item:
    return Item(id=f"i{number}", image="", split="test", caption=caption or f"item {number}",
                description=f"description {number}", attributes=attributes)


# --- phrases ----------------------------------------------------------------------------------------


def test_phrases_put_the_noun_last_and_read_like_a_shopper():
    demo = {"type": "dress", "colour": "blue", "pattern": "polka-dot", "sleeve": None, "length": "maxi"}
    assert phrase_fields(demo) == ["colour", "pattern", "length", "type"]
    assert attribute_phrase(demo, ["type", "colour"]) == "blue dress"
    assert attribute_phrase(demo, ["type", "pattern", "colour"]) == "blue polka-dot dress"
    product = {"gender": "Men", "articleType": "Casual Shoes", "baseColour": "Navy Blue", "usage": "Casual",
               "season": "Summer", "masterCategory": "Footwear"}
    assert attribute_phrase(product, phrase_fields(product)) == "men's casual navy blue casual shoe"
    assert attribute_phrase(product, ["season", "articleType"]) == "summer casual shoe"  # asked for by name
    assert with_article("blue dress", ["colour", "type"]) == "a blue dress"
    assert with_article("black trousers", ["colour", "type"]) == "black trousers"
    assert with_article("orange", ["colour"]) == "orange"


# --- tie-aware metrics --------------------------------------------------------------------------------


def _expected_over_orders(scores: np.ndarray, relevant: np.ndarray, k: int) -> tuple[float, float]:
    """Brute force: P@k (capped) and nDCG@k averaged over every order of the tied items."""
    precisions, gains = [], []
    ideal = sum(1 / math.log2(p + 2) for p in range(min(k, relevant.sum())))
    for order in itertools.permutations(range(len(scores))):
        ranked = sorted(order, key=lambda j: -scores[j])  # stable: ties keep the permutation's order
        hits = relevant[ranked]
        precisions.append(hits[:k].sum() / min(k, relevant.sum()))
        gains.append(sum(h / math.log2(p + 2) for p, h in enumerate(hits[:k])) / ideal)
    return float(np.mean(precisions)), float(np.mean(gains))


@pytest.mark.parametrize("scores", [[3, 2, 2, 2, 1, 0], [1, 1, 1, 1, 1, 1], [5, 4, 3, 2, 1, 0], [1, 1, 0, 0, 2, 2]])
def test_precision_and_ndcg_are_expectations_over_ties(scores):
    scores = np.array(scores, dtype=float)
    relevant = np.array([False, True, False, True, True, False])
    for k in (1, 2, 3, 5):
        precision, ndcg = _expected_over_orders(scores, relevant, k)
        assert precision_at_k(scores[None], relevant[None], k)[0] == pytest.approx(precision)
        assert ndcg_at_k(scores[None], relevant[None], k)[0] == pytest.approx(ndcg)


def test_a_perfect_ranking_scores_one_and_a_constant_one_scores_as_chance():
    relevant = np.zeros((2, 20), dtype=bool)
    relevant[0, :8], relevant[1, 5:7] = True, True
    perfect = relevant.astype(float)
    assert np.allclose(precision_at_k(perfect, relevant, 5), 1.0)
    assert np.allclose(ndcg_at_k(perfect, relevant, 10), 1.0)
    constant = np.ones((2, 20))
    assert precision_at_k(constant, relevant, 5) == pytest.approx([5 * 8 / 20 / 5, 5 * 2 / 20 / 2])
    assert np.all(precision_at_k(-perfect, relevant, 5) == 0.0)


# --- queries and the bench ----------------------------------------------------------------------------


def test_queries_name_each_combination_in_every_phrasing_and_know_what_is_relevant():
    items = [_item(0, type="dress", colour="blue"), _item(1, type="dress", colour="red"),
             _item(2, type="skirt", colour="blue"), _item(3, type="dress", colour="blue")]
    queries = short_queries(items, [("type",), ("colour", "type")], max_queries=10, seed=0)
    assert len(queries) == (2 + 3) * len(PHRASINGS)
    blue_dress = [q for q in queries if q.values == (("colour", "blue"), ("type", "dress"))]
    assert {q.text for q in blue_dress} == {"blue dress", "looking for a blue dress", "blue dress please",
                                           "do you have a blue dress?"}
    assert [item.id for item in items if blue_dress[0].matches(item)] == ["i0", "i3"]
    capped = short_queries(items, [("colour", "type")], max_queries=2, seed=0)
    assert len({q.values for q in capped}) == 2


def test_shapes_naming_unknown_fields_are_refused_with_the_known_ones():
    items = [_item(0, type="dress", colour="blue")]
    assert parse_shapes(["colour+type"], items) == [("colour", "type")]
    with pytest.raises(UserError, match=r"'colr'.*fields: colour, type"):
        parse_shapes(["colr+type"], items)
    with pytest.raises(UserError, match="distinct fields"):
        parse_shapes(["type+type"], items)
    with pytest.raises(UserError, match="no query shapes"):
        parse_shapes([], items)


def test_bench_queries_reports_each_shape_for_model_and_baseline(tiny_phase1, tmp_path):
    report = bench_queries(tiny_phase1 / "phase1", tiny_phase1 / "data", tmp_path, split="test").data
    dataset = load_dataset(tiny_phase1 / "data")
    assert report["manifest_sha256"] == dataset.manifest_hash and report["bench"] == "queries"
    assert set(report["shapes"]["model"]) == {"type", "colour+type", "pattern+type", "colour+pattern+type"}
    assert set(report["phrasing_figures"]["baseline"]) == set(PHRASINGS)
    records = [json.loads(line) for line in (tmp_path / "queries.jsonl").read_text().splitlines()]
    assert len(records) == report["num_queries"]
    test_items = dataset.split("test")
    for shape, figures in report["shapes"]["model"].items():
        rows = [r for r in records if r["shape"] == shape]
        assert figures["num_queries"] == len(rows)
        assert figures["P@5"] == pytest.approx(np.mean([r["P@5"] for r in rows]))
        assert 0.0 <= figures["nDCG@10"] <= 1.0
    for record in records[:20]:
        named = record["values"]
        assert record["num_relevant"] == sum(all(i.attributes.get(f) == v for f, v in named.items())
                                             for i in test_items) >= 1
    assert "| colour+type |" in (tmp_path / "report.md").read_text()


def test_bench_queries_cli_refuses_an_unknown_field(tiny_phase1, tmp_path, monkeypatch):
    monkeypatch.setenv("UNIFASHION_HOME", str(tmp_path / "ws"))
    result = runner.invoke(app, ["bench", "queries", "--checkpoint", str(tiny_phase1 / "phase1"), "--data",
                                 str(tiny_phase1 / "data"), "--shapes", "colour+fabric", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "'fabric'" in result.output and "Traceback" not in result.output


# --- text augmentation -------------------------------------------------------------------------------


def _augment_recipe(*overrides: str):
    return load_recipe(TINY, list(overrides)).data


def augment_texts(items: list[Item], data, generator: torch.Generator) -> list[str]:
    return augment_batch(items, data, generator)[0]


ITEMS = [_item(n, caption=f"brand{n} women striped blue dress", type="dress", colour="blue", pattern="striped",
               gender="Women") for n in range(40)]


def test_no_augmentation_gives_the_plain_texts_and_draws_nothing():
    generator = torch.Generator().manual_seed(3)
    state = generator.get_state()
    assert augment_texts(ITEMS, _augment_recipe(), generator) == [item.caption for item in ITEMS]
    assert torch.equal(generator.get_state(), state)
    other = augment_texts(ITEMS, _augment_recipe("data.augment.other_field=1"), generator)
    assert other == [item.description for item in ITEMS]


def test_augmented_texts_are_a_pure_function_of_items_and_generator():
    data = _augment_recipe("data.augment.other_field=0.3", "data.augment.attribute_captions=0.5",
                           "data.augment.word_dropout=0.3", "data.augment.paraphrase=0.5")
    first = augment_texts(ITEMS, data, torch.Generator().manual_seed(7))
    assert first == augment_texts(ITEMS, data, torch.Generator().manual_seed(7))
    assert first != augment_texts(ITEMS, data, torch.Generator().manual_seed(8))
    assert all(text.strip() for text in first)


def test_attribute_captions_keep_the_noun_and_name_only_true_attributes():
    texts = augment_texts(ITEMS, _augment_recipe("data.augment.attribute_captions=1"), torch.Generator().manual_seed(0))
    allowed = {"women's", "blue", "striped", "dress"}
    assert all(text.endswith("dress") and set(text.split()) <= allowed for text in texts)
    assert len(set(texts)) > 3  # random subsets, not one phrase


def test_word_dropout_keeps_a_word_and_paraphrases_wrap_the_text():
    dropped = augment_texts(ITEMS, _augment_recipe("data.augment.word_dropout=1"), torch.Generator().manual_seed(0))
    assert all(len(text.split()) == 1 and text in ITEMS[n].caption.split() for n, text in enumerate(dropped))
    wrapped = augment_texts(ITEMS, _augment_recipe("data.augment.paraphrase=1"), torch.Generator().manual_seed(0))
    shapes = {template.format(item.caption) for item in ITEMS for template in PARAPHRASES}
    assert set(wrapped) <= shapes and set(wrapped).isdisjoint(item.caption for item in ITEMS)
    bench_phrasings = {t.replace("{q}", "{}").replace("{a_q}", "{}") for t in PHRASINGS.values()}
    assert bench_phrasings.isdisjoint(PARAPHRASES)  # the bench never tests the training templates


def test_a_batch_knows_which_items_each_short_text_describes():
    items = [_item(0, caption="a", type="dress", colour="blue"), _item(1, caption="b", type="dress", colour="red"),
             _item(2, caption="c", type="skirt", colour="blue"), _item(3, caption="a", type="dress", colour="blue")]
    texts, positives = augment_batch(items, _augment_recipe("data.augment.attribute_captions=1"),
                                     torch.Generator().manual_seed(1))
    for j, text in enumerate(texts):
        wanted = {"dress": "dress", "skirt": "skirt"}[text.split()[-1]]
        colour = text.split()[0] if len(text.split()) == 2 else None
        expected = [i == j or (item.attributes["type"] == wanted and colour in (None, item.attributes["colour"]))
                    for i, item in enumerate(items)]
        assert positives[:, j].tolist() == expected, text
    _, plain = augment_batch(items, _augment_recipe(), torch.Generator())
    assert plain.tolist() == [[i == j or items[i].caption == items[j].caption for j in range(4)] for i in range(4)]


def test_augmentation_probabilities_are_checked():
    with pytest.raises(UserError, match="data.augment.word_dropout"):
        _augment_recipe("data.augment.word_dropout=1.5")


def test_swapped_negatives_change_one_named_value_and_know_whom_they_still_describe():
    items = [_item(0, caption="red striped dress", colour="red", pattern="striped", type="dress"),
             _item(1, caption="green striped dress", colour="green", pattern="striped", type="dress"),
             _item(2, caption="Mark Taylor Men Navy Blue Shirt", baseColour="Navy Blue", gender="Men",
                   articleType="Shirts"),
             _item(3, caption="plain item", colour="teal", type="skirt"),
             _item(4, caption="Roadster Men Red Shirt", baseColour="Red", gender="Men", articleType="Shirts")]
    texts = ["red striped dress", "find me green dress", "Mark Taylor Men Navy Blue Shirt", "plain item", "x"]
    vocabulary = attribute_vocabulary(items, ("colour", "baseColour", "size"))
    assert vocabulary == {"colour": ["green", "red", "teal"], "baseColour": ["Navy Blue", "Red"]}
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    assert swap_negatives(items, texts, vocabulary, 0.0, generator)[0] == []
    assert torch.equal(generator.get_state(), state)  # off draws nothing
    for seed in range(5):
        negatives, excluded = swap_negatives(items, texts, vocabulary, 1.0, torch.Generator().manual_seed(seed))
        assert len(negatives) == 3 and excluded.shape == (5, 3)  # items 3 and 4 name no value in their text
        assert negatives[0] in ("green striped dress", "teal striped dress")
        assert negatives[1] in ("find me red dress", "find me teal dress")
        assert negatives[2] == "Mark Taylor Men Red Shirt"  # the case of the title kept
        assert not excluded[[0, 1, 2], [0, 1, 2]].any()  # a swapped text never describes its own item
        assert excluded[1, 0] == (negatives[0] == "green striped dress")  # item 1 is a green striped dress
        assert excluded[0, 1] == (negatives[1] == "find me red dress")
        assert excluded[4, 2]  # item 4 is a men's red shirt: not its negative


def test_sibling_batches_pair_anchors_with_another_colour_of_their_category():
    from unifashion_core.train.data import Siblings, batch_indices

    categories = ["dress"] * 6 + ["skirt"] * 6 + ["hat"]
    colours = ["red", "red", "blue", "blue", "green", None, "red", "red", "red", "teal", "teal", "teal", "red"]
    siblings = Siblings.of(categories, colours, 0.5)
    for step in range(20):
        batch = batch_indices(4, len(categories), 8, step, siblings)
        assert len(batch) == 8 and torch.equal(batch, batch_indices(4, len(categories), 8, step, siblings))
        anchors, partners = batch[:4].tolist(), batch[4:].tolist()
        assert sorted(anchors) == sorted(set(anchors))  # the anchors are a slice of the epoch's permutation
        for anchor, partner in zip(anchors, partners, strict=True):
            if colours[anchor] is None or categories[anchor] == "hat":  # nothing to pair with: any item
                continue
            # 8 draws from a category of 6 with at least 2 other-coloured items: a miss is (4/6)^8 = 4 %
            # per anchor; the draws are seeded, so this holds for these 20 steps or never
            if categories[partner] == categories[anchor]:
                assert colours[partner] not in (None, colours[anchor])
    paired = sum(categories[b] == categories[a] and colours[b] not in (None, colours[a])
                 for step in range(20) for a, b in zip(*batch_indices(4, 13, 8, step, siblings).view(2, 4).tolist(),
                                                        strict=True))
    assert paired >= 40  # most anchors get a true sibling
    assert torch.equal(batch_indices(4, 13, 8, 3), batch_indices(4, 13, 8, 3, None))  # off: the plain batches
