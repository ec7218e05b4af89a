"""`unifashion bench queries`: short free-form queries a shopper would type, built from the attributes.

Protocol: each query names one to three attribute values of the split's items ("dress", "blue
dress", "black polka-dot skirt"; fashion-product: "men's black casual shoe") in a few phrasings
("looking for a blue dress", "blue dress please"). An item is relevant when it has every value the
query names; the gallery is the whole split. Each distinct value combination of a shape present in
the split is one query per phrasing (at most ``max_queries`` combinations per shape, drawn with the
seed). Reported per shape and per phrasing, for the model and for the same-run ridge baseline:

- P@5: relevant items among the top 5, out of ``min(5, relevant items)``;
- nDCG@10 with binary gains;

both expected over tied scores (``metrics.ranking``). The phrasings are not the training
paraphrases of ``train.text_augment``, so a model trained with them is not tested on its own
templates.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unifashion_core.checkpoint import load_checkpoint
from unifashion_core.data.attribute_text import attribute_fields, attribute_phrase, with_article
from unifashion_core.data.manifest import Item, load_dataset
from unifashion_core.errors import UserError
from unifashion_core.evaluation.baseline import BASELINE_VISION, split_baseline_similarity
from unifashion_core.evaluation.reports import BenchReport, markdown_table, provenance, provenance_lines, write_report
from unifashion_core.features import feature_cache_dir, image_tokens
from unifashion_core.fileio import write_jsonl
from unifashion_core.losses import max_sim
from unifashion_core.metrics.ranking import ndcg_at_k, precision_at_k
from unifashion_core.progress import NullProgress, Progress

# Per dataset: the query shapes (attribute fields joined by "+") when --shapes is not given.
DEFAULT_SHAPES = {
    "demo": ("type", "colour+type", "pattern+type", "colour+pattern+type"),
    "fashion-product": ("articleType", "baseColour+articleType", "gender+articleType", "usage+articleType",
                        "gender+baseColour+articleType"),
}
# How a shopper might type the phrase q ("a_q": with its article). Kept apart from the training
# paraphrases in train/text_augment.py.
PHRASINGS = {
    "bare": "{q}",
    "looking for": "looking for {a_q}",
    "please": "{q} please",
    "do you have": "do you have {a_q}?",
}
PRECISION_K = 5
NDCG_K = 10
TOP_LISTED = 5


@dataclass(frozen=True)
class ShortQuery:
    """One short query and what it names.

    Attributes:
        text: the query as typed.
        shape: the fields it names, joined by "+" (``colour+type``).
        phrasing: the key of its template in ``PHRASINGS``.
        values: the (field, value) pairs an item must have to be relevant.
    """

    text: str
    shape: str
    phrasing: str
    values: tuple[tuple[str, str], ...]

    def matches(self, item: Item) -> bool:
        """Whether ``item`` has every value the query names."""
        return all(item.attributes.get(name) == value for name, value in self.values)


def parse_shapes(shapes: list[str] | tuple[str, ...], items: list[Item]) -> list[tuple[str, ...]]:
    """Check query shapes (``"colour+type"``) against the items' attribute fields.

    Raises:
        UserError: an empty shape, a repeated field, or a field no item has (the message lists them).
    """
    if not shapes:
        raise UserError("no query shapes given; name some, e.g. --shapes type,colour+type.")
    fields = attribute_fields(items)
    if not fields:
        raise UserError("the items of this split have no attributes to build short queries from.")
    parsed = []
    for shape in shapes:
        names = tuple(part.strip() for part in shape.split("+"))
        if not all(names) or len(set(names)) != len(names):
            raise UserError(f"query shape {shape!r} must name distinct fields joined by '+', e.g. colour+type.")
        for name in names:
            if name not in fields:
                raise UserError(f"query shape {shape!r} names the field {name!r}, which no item has; "
                                f"fields: {', '.join(fields)}.")
        parsed.append(names)
    return parsed


def short_queries(items: list[Item], shapes: list[tuple[str, ...]], max_queries: int, seed: int) -> list[ShortQuery]:
    """Every phrasing of each value combination of each shape present among ``items``.

    Combinations are taken in sorted order, or ``max_queries`` of them per shape drawn with ``seed``.
    """
    rng = np.random.default_rng([seed, 15])
    queries = []
    for fields in shapes:
        combinations = sorted({tuple(str(item.attributes[f]) for f in fields) for item in items
                               if all(item.attributes.get(f) not in (None, "") for f in fields)})
        if len(combinations) > max_queries:
            combinations = [combinations[i] for i in sorted(rng.choice(len(combinations), max_queries, replace=False))]
        for values in combinations:
            named = dict(zip(fields, values, strict=True))
            phrase = attribute_phrase(named, fields)
            for phrasing, template in PHRASINGS.items():
                text = template.format(q=phrase, a_q=with_article(phrase, fields))
                queries.append(ShortQuery(text, "+".join(fields), phrasing, tuple(named.items())))
    return queries


def score_queries(scores: np.ndarray, relevant: np.ndarray) -> dict[str, np.ndarray]:
    """Per-query ``P@5`` and ``nDCG@10`` of ``(M, N)`` scores against ``(M, N)`` relevance."""
    return {f"P@{PRECISION_K}": precision_at_k(scores, relevant, PRECISION_K),
            f"nDCG@{NDCG_K}": ndcg_at_k(scores, relevant, NDCG_K)}


def summarise(queries: list[ShortQuery], per_query: dict[str, np.ndarray], relevant: np.ndarray,
              key: str) -> dict[str, dict[str, float]]:
    """Mean of each metric per value of ``key`` (``shape`` or ``phrasing``), with query counts."""
    groups = list(dict.fromkeys(getattr(q, key) for q in queries))
    result = {}
    for group in groups:
        rows = np.array([getattr(q, key) == group for q in queries])
        result[group] = {**{name: float(values[rows].mean()) for name, values in per_query.items()},
                         "num_queries": int(rows.sum()), "mean_relevant": float(relevant[rows].sum(1).mean())}
    return result


def bench_queries(
    checkpoint: str | Path, data: str | Path, out: str | Path, split: str = "test",
    shapes: list[str] | tuple[str, ...] | None = None, max_queries: int = 200, seed: int = 0,
    cache_dir: str | Path | None = None, progress: Progress = NullProgress(),
) -> BenchReport:
    """Rank ``split`` for short attribute queries; write report.json, report.md and queries.jsonl to ``out``.

    Args:
        checkpoint: the model (checkpoint or run directory).
        data: the prepared dataset (its items need attributes).
        out: report directory.
        split: evaluation split (the gallery).
        shapes: query shapes such as ``"colour+type"`` (default: ``DEFAULT_SHAPES`` of the dataset).
        max_queries: at most this many value combinations per shape.
        seed: seed of the combination draw when a shape has more than ``max_queries``.
        cache_dir: where frozen vision features are cached (None: not on disk).
        progress: progress events.

    Raises:
        UserError: a shape naming an unknown field, no default shapes for the dataset, or a split
            with fewer than 2 usable items.
    """
    # 1. check inputs
    dataset = load_dataset(data)
    name = dataset.report.get("dataset", "")
    if shapes is None and name not in DEFAULT_SHAPES:
        raise UserError(f"no default query shapes for the dataset {name or dataset.root}; pass --shapes, "
                        "e.g. --shapes colour+type,type.")
    if max_queries < 1:
        raise UserError(f"--max-queries must be at least 1, got {max_queries}.")
    parsed = parse_shapes(shapes or DEFAULT_SHAPES[name], dataset.split(split))
    # 2. gallery tokens, queries, scores
    loaded = load_checkpoint(checkpoint)
    model, field = loaded.model, loaded.recipe.data.caption_field
    cache = feature_cache_dir(cache_dir, dataset)
    items, tokens, skipped = image_tokens(model.vision, dataset, dataset.split(split), cache, progress)
    if len(items) < 2:
        raise UserError(f"split {split!r} of {dataset.root} has fewer than 2 usable items.")
    queries = short_queries(items, parsed, max_queries, seed)
    texts = [q.text for q in queries]
    relevant = np.array([[q.matches(item) for item in items] for q in queries])  # (M, N)
    scores = {
        "model": max_sim(model.embed_images(tokens), model.embed_texts(texts)).numpy().T,  # (M, N)
        "baseline": split_baseline_similarity(dataset, items, texts, field, BASELINE_VISION, cache, progress).T,
    }
    per_query = {system: score_queries(s, relevant) for system, s in scores.items()}
    # 3. report
    report = {
        **provenance("queries", f"short attribute queries; P@{PRECISION_K} out of min({PRECISION_K}, relevant), "
                     f"nDCG@{NDCG_K}; expected over ties; gallery = the whole split", split, seed, dataset, loaded,
                     len(queries)),
        "num_gallery": len(items), "skipped_images": skipped.counts(), "max_queries_per_shape": max_queries,
        "relevant": "an item with every attribute value the query names", "phrasings": PHRASINGS,
        "shapes": {system: summarise(queries, values, relevant, "shape") for system, values in per_query.items()},
        "phrasing_figures": {system: summarise(queries, values, relevant, "phrasing")
                             for system, values in per_query.items()},
        "baseline": {"name": "frozen vision mean-pool + MiniLM mean-pool, ridge map fitted on train",
                     "vision": f"{BASELINE_VISION.name} at {BASELINE_VISION.image_size} px (frozen)"},
    }
    _write_queries(Path(out), queries, items, relevant, scores["model"], per_query["model"])
    return write_report("queries", out, report, render_markdown(report))


def _write_queries(out: Path, queries: list[ShortQuery], items: list[Item], relevant: np.ndarray,
                   scores: np.ndarray, per_query: dict[str, np.ndarray]) -> None:
    """queries.jsonl: each query, its relevant count, the model's top ids and its figures."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :TOP_LISTED]
    records = [{"text": q.text, "shape": q.shape, "phrasing": q.phrasing, "values": dict(q.values),
                "num_relevant": int(relevant[row].sum()), "top": [items[j].id for j in top[row]],
                **{name: float(values[row]) for name, values in per_query.items()}}
               for row, q in enumerate(queries)]
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "queries.jsonl", records)


def render_markdown(report: dict) -> str:
    """report.md: per shape and per phrasing, the model next to the baseline."""
    metrics = (f"P@{PRECISION_K}", f"nDCG@{NDCG_K}")

    def rows(section: str, key: str) -> list[dict]:
        model, baseline = report[section]["model"], report[section]["baseline"]
        return [{key: group, **{f"model {m}": model[group][m] for m in metrics},
                 **{f"baseline {m}": baseline[group][m] for m in metrics},
                 "queries": model[group]["num_queries"], "mean relevant": f"{model[group]['mean_relevant']:.1f}"}
                for group in model]

    columns = [*(f"model {m}" for m in metrics), *(f"baseline {m}" for m in metrics), "queries", "mean relevant"]
    return (f"# Short queries ({report['split']})\n\n{provenance_lines(report)}- gallery: {report['num_gallery']} "
            f"items; relevant = {report['relevant']}\n\n"
            f"{markdown_table(rows('shapes', 'shape'), ['shape', *columns])}\n"
            f"{markdown_table(rows('phrasing_figures', 'phrasing'), ['phrasing', *columns])}")
