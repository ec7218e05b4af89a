"""COCO caption metrics: values on hand-checkable cases, argument order, errors, no leaked Java."""

import math

import pytest
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from unifashion_core.errors import UserError
from unifashion_core.metrics import caption as caption_metrics
from unifashion_core.metrics.caption import caption_scores, caption_scores_of, ptb_tokenize

CAPTIONS = [
    "A red cotton dress with long sleeves.",
    "Blue denim jacket with silver buttons",
    "black leather ankle boots",
    "White silk blouse, with a bow",
    "green wool sweater with a round neck",
]


@pytest.fixture
def no_meteor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip METEOR's slow Java start-up in tests that check the other metrics."""
    monkeypatch.setattr(caption_metrics, "_meteor", lambda gts, systems: [0.0] * len(systems))


def test_identical_captions_score_perfectly_systems_share_one_java_and_it_is_closed(monkeypatch):
    meteors: list[Meteor] = []  # held here, so only an explicit close can end their process

    class RecordingMeteor(Meteor):
        def __init__(self) -> None:
            super().__init__()
            meteors.append(self)

    monkeypatch.setattr(caption_metrics, "Meteor", RecordingMeteor)
    predictions = {f"item{i}": c for i, c in enumerate(CAPTIONS)}
    references = {i: [c] for i, c in predictions.items()}
    rotated = dict(zip(predictions, CAPTIONS[1:] + CAPTIONS[:1], strict=True))  # every caption on another item
    both = caption_scores_of({"same": predictions, "rotated": rotated}, references)
    scores = both["same"]
    assert set(scores) == {"BLEU-4", "METEOR", "ROUGE-L", "CIDEr"}
    assert scores["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert scores["METEOR"] == pytest.approx(1.0, abs=1e-3)
    assert scores["ROUGE-L"] == pytest.approx(1.0)
    assert scores["CIDEr"] == pytest.approx(10.0, abs=1e-3)  # CIDEr-D's maximum, natural scale
    assert len(meteors) == 1 and meteors[0].meteor_p.poll() is not None  # one Java for both, ended
    # each system scored on its own: the shared process gives what a process of its own gives
    assert both["rotated"]["METEOR"] < 0.5
    assert both["rotated"] == pytest.approx(caption_scores(rotated, references))
    assert len(meteors) == 2 and meteors[1].meteor_p.poll() is not None


def test_bleu_by_hand_and_argument_order(no_meteor):
    short, long = "a red cotton dress", "A red cotton dress, with long sleeves."
    # short candidate, long reference: all n-gram precisions 1, brevity penalty exp(1 - 7/4)
    forward = caption_scores({"x": short}, {"x": [long]})
    assert forward["BLEU-4"] == pytest.approx(math.exp(-0.75), abs=1e-6)
    # swapped (what the released code does): precisions 4/7, 3/6, 2/5, 1/4 and no penalty
    swapped = caption_scores({"x": long}, {"x": [short]})
    assert swapped["BLEU-4"] == pytest.approx((4 / 7 * 3 / 6 * 2 / 5 * 1 / 4) ** 0.25, abs=1e-6)


def test_all_references_are_used(no_meteor):
    refs = {"x": ["a blue coat", "a red cotton dress with long sleeves"]}
    scores = caption_scores({"x": "a red cotton dress with long sleeves"}, refs)
    assert scores["BLEU-4"] == pytest.approx(1.0, abs=1e-6)


def test_ptb_tokenize_matches_pycocoevalcap_and_keeps_lines_apart():
    captions = ["", "Café rouge, a Dress!", "it's a (slim) fit...", "x\ry", ""]
    ours = ptb_tokenize(captions)
    theirs = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(captions[:3])})
    assert ours[:3] == [theirs[i][0] for i in range(3)]
    assert ours[3:] == ["x y", ""]  # pycocoevalcap's wrapper would shift "y" onto the next item


def test_mismatched_ids_are_a_user_error():
    with pytest.raises(UserError, match="ids differ"):
        caption_scores({"a": "dress"}, {"b": ["dress"]})
    with pytest.raises(UserError, match="no reference"):
        caption_scores({"a": "dress"}, {"a": []})


def test_spice_without_jars_is_a_user_error(monkeypatch, tmp_path):
    monkeypatch.setattr(caption_metrics, "SPICE_LIB", tmp_path)
    with pytest.raises(UserError, match="CoreNLP"):
        caption_scores({"a": "dress"}, {"a": ["dress"]}, spice=True)


def test_missing_java_is_a_user_error(monkeypatch):
    monkeypatch.setattr(caption_metrics.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="Java"):
        caption_scores({"a": "dress"}, {"a": ["dress"]})
