"""Probe: consensus (minimum-Bayes-risk) caption selection against greedy decoding.

For each image, candidates are the greedy caption, the beam search's n-best and optionally the
titles of its nearest training images (by the checkpoint's own pooled image embeddings); the
caption chosen is the candidate with the highest CIDEr-D against the other candidates. Prints
each system's CIDEr against the split's references.

Usage: python benchmarks/probes/consensus_captions.py CHECKPOINT DATA [SPLIT]   (SPLIT: val)
"""

import sys

import torch
from pycocoevalcap.cider.cider_scorer import CiderScorer
from transformers import GenerationConfig

from unifashion_core.checkpoint import load_checkpoint
from unifashion_core.data.manifest import load_dataset
from unifashion_core.evaluation.bench_caption import references_for
from unifashion_core.features import feature_cache_dir, image_tokens
from unifashion_core.losses import pooled
from unifashion_core.metrics.caption import caption_scores_of

BEAMS = 5


def n_best(model, tokens: torch.Tensor, style: str, batch: int = 25) -> list[list[str]]:
    """The beam search's ``BEAMS`` best captions of each image."""
    captioner, found = model.captioner, []
    config = GenerationConfig(max_new_tokens=model.config.captioner.max_new_tokens, num_beams=BEAMS,
                              num_return_sequences=BEAMS, do_sample=False,
                              eos_token_id=captioner.tokenizer.eos_token_id,
                              pad_token_id=captioner.tokenizer.pad_token_id,
                              bos_token_id=captioner.tokenizer.bos_token_id)
    model.qformer.eval()
    captioner.eval()
    with torch.no_grad():
        for start in range(0, len(tokens), batch):
            prompt = captioner.prompt_embeds(model.generation_queries(tokens[start:start + batch].float(), None), style)
            mask = torch.ones(prompt.shape[:2], dtype=torch.long)
            rows = captioner.llm.generate(inputs_embeds=prompt, attention_mask=mask, generation_config=config)
            texts = [captioner._decode(row.tolist()) for row in rows]
            found += [texts[i:i + BEAMS] for i in range(0, len(texts), BEAMS)]
    return found


def consensus(candidates: list[list[str]], evidence: list[list[str]]) -> list[str]:
    """Per image, the candidate with the highest CIDEr-D against the evidence other than itself."""
    scorer, where = CiderScorer(n=4, sigma=6.0), []
    for i, options in enumerate(candidates):
        for option in options:
            others = [e for e in evidence[i] if e != option] or evidence[i]
            scorer += (option.lower(), [e.lower() for e in others])
            where.append(i)
    _, scores = scorer.compute_score()
    best: dict[int, tuple[float, str]] = {}
    flat = [option for options in candidates for option in options]
    for i, score, option in zip(where, scores, flat, strict=True):
        if i not in best or score > best[i][0]:
            best[i] = (score, option)
    return [best[i][1] for i in range(len(candidates))]


def main(checkpoint: str, data: str, split: str = "val") -> None:
    loaded = load_checkpoint(checkpoint, heads=("caption",))
    model = loaded.model
    style = model.config.captioner.style
    dataset = load_dataset(data)
    cache = feature_cache_dir(None, dataset)
    items, tokens, _ = image_tokens(model.vision, dataset, dataset.split(split), cache)
    train_items, train_tokens, _ = image_tokens(model.vision, dataset, dataset.split("train"), cache)
    greedy, beams = model.caption_images(tokens), n_best(model, tokens, style)
    similar = (pooled(model.embed_images(tokens)) @ pooled(model.embed_images(train_tokens)).T).topk(10, dim=1)
    titles = [[train_items[j].caption_target(style) for j in row] for row in similar.indices.tolist()]
    systems = {"greedy": greedy, "beam 5, best": [b[0] for b in beams], "nearest title": [t[0] for t in titles],
               "consensus of the beams": consensus(beams, beams)}
    for k in (3, 5, 10):
        pool = [[g, *b, *t[:k]] for g, b, t in zip(greedy, beams, titles, strict=True)]
        systems[f"consensus of greedy + beams + {k} titles"] = consensus(pool, pool)
        systems[f"consensus of {k} nearest titles"] = consensus([t[:k] for t in titles], [t[:k] for t in titles])
    ids = [item.id for item in items]
    scores = caption_scores_of({name: dict(zip(ids, texts, strict=True)) for name, texts in systems.items()},
                               references_for(items, style))
    for name, values in scores.items():
        print(f"{name:42s} CIDEr {values['CIDEr']:.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
