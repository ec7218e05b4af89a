"""COCO caption metrics (pycocoevalcap): BLEU-4, METEOR, ROUGE-L, CIDEr and, optionally, SPICE.

Predictions are the candidates (``res``) and the references the ground truth (``gts``); the
released UniFashion code passes them the other way round, which changes BLEU (its brevity
penalty and n-gram precisions are not symmetric) and leaves out CIDEr.

Captions are tokenised as the COCO evaluation does: Stanford's PTBTokenizer from the jar that
pycocoevalcap ships, with the same flags (``-preserveLines -lowerCase``) and the same punctuation
removal. It is run here through stdin, rather than through ``PTBTokenizer.tokenize``, because that
wrapper writes its temporary file into site-packages, lets Java's log reach the terminal, and
silently shifts captions onto the wrong items when one contains a carriage return.
"""

import shutil
import subprocess
from pathlib import Path

import pycocoevalcap.spice.spice as spice_module
import pycocoevalcap.tokenizer.ptbtokenizer as ptb_module
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge

from unifashion_core.errors import UserError

PTB_JAR = Path(ptb_module.__file__).parent / ptb_module.STANFORD_CORENLP_3_4_1_JAR
# The Stanford CoreNLP jars SPICE needs; pycocoevalcap would download them on first use.
SPICE_LIB = Path(spice_module.__file__).parent / "lib"
SPICE_CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


def caption_scores(
    predictions: dict[str, str], references: dict[str, list[str]], spice: bool = False
) -> dict[str, float]:
    """Corpus-level COCO caption metrics, all references per item.

    Values are what pycocoevalcap returns: BLEU-4, METEOR, ROUGE-L (and SPICE) between 0 and 1;
    CIDEr(-D) on its natural scale, 0 to 10 (10 when every prediction equals all its references).
    Papers, including UniFashion's Table 2 (CIDEr 169.5 = 1.695 here), report all of them x 100.
    METEOR starts a Java process that loads paraphrase tables (about 5 s per call; several
    systems scored in one :func:`caption_scores_of` call share it).

    Args:
        predictions: item id -> generated caption.
        references: item id -> its reference captions (at least one).
        spice: also compute SPICE (needs Stanford CoreNLP 3.6.0 jars; see ``SPICE_CORENLP_JARS``).

    Returns:
        ``{"BLEU-4", "METEOR", "ROUGE-L", "CIDEr"}`` (+ ``"SPICE"``) -> score.

    Raises:
        UserError: mismatched ids, an item without references, Java or the SPICE jars missing.
    """
    return caption_scores_of({"": predictions}, references, spice)[""]


def caption_scores_of(
    systems: dict[str, dict[str, str]], references: dict[str, list[str]], spice: bool = False
) -> dict[str, dict[str, float]]:
    """:func:`caption_scores` of several caption systems for the same items (a model and its
    baselines), each scored on its own, with one PTB tokenizer call and one METEOR process for all.

    Args:
        systems: system name -> its predictions (item id -> caption), each for every referenced item.
        references: item id -> its reference captions (at least one).
        spice: also compute SPICE.

    Returns:
        system name -> ``{"BLEU-4", "METEOR", "ROUGE-L", "CIDEr"}`` (+ ``"SPICE"``) -> score.
    """
    # 1. check inputs and tools before starting any Java process
    for predictions in systems.values():
        _check_inputs(predictions, references)
    if shutil.which("java") is None:
        raise UserError("caption metrics need Java (the `java` command) for the PTB tokenizer and "
                        "METEOR; install a Java runtime, e.g. openjdk-17-jre-headless.")
    if spice:
        _check_spice_jars()
    # 2. tokenise references (gts) and every system's predictions (res) as the COCO evaluation does
    ids = list(references)
    texts = [r for i in ids for r in references[i]] + [p[i] for p in systems.values() for i in ids]
    tokens = iter(ptb_tokenize(texts))  # one Java call for everything
    gts = {i: [next(tokens) for _ in references[i]] for i in ids}
    candidates = {name: {i: [next(tokens)] for i in ids} for name in systems}
    # 3. score each system, candidates as res and references as gts
    meteors = dict(zip(candidates, _meteor(gts, list(candidates.values())), strict=True))
    results = {}
    for name, res in candidates.items():
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        scores = {
            "BLEU-4": bleu[3],
            "METEOR": meteors[name],
            "ROUGE-L": Rouge().compute_score(gts, res)[0],
            "CIDEr": Cider().compute_score(gts, res)[0],
        }
        if spice:
            scores["SPICE"] = _spice(gts, res)
        results[name] = {metric: float(value) for metric, value in scores.items()}
    return results


def ptb_tokenize(captions: list[str]) -> list[str]:
    """Lower-cased PTB tokens joined by spaces, COCO punctuation removed, one result per caption.

    Whitespace of any kind (newlines, carriage returns) is folded to single spaces first so that
    each caption stays on its own line.
    """
    lines = "".join(" ".join(c.split()) + "\n" for c in captions)
    cmd = ["java", "-cp", str(PTB_JAR), "edu.stanford.nlp.process.PTBTokenizer",
           "-preserveLines", "-lowerCase", "-encoding", "utf-8"]
    result = subprocess.run(cmd, input=lines.encode("utf-8"), capture_output=True, check=False)
    if result.returncode != 0:
        raise UserError(f"the PTB tokenizer (Java) failed: {result.stderr.decode(errors='replace')[-200:]}")
    tokenized = result.stdout.decode("utf-8").split("\n")
    if len(tokenized) < len(captions):
        raise RuntimeError(f"PTB tokenizer returned {len(tokenized)} lines for {len(captions)} captions")
    return [
        " ".join(w for w in line.rstrip().split(" ") if w not in ptb_module.PUNCTUATIONS)
        for line in tokenized[: len(captions)]
    ]


def _check_inputs(predictions: dict[str, str], references: dict[str, list[str]]) -> None:
    if not predictions:
        raise UserError("there are no predictions to score.")
    if set(predictions) != set(references):
        missing = sorted(set(references) - set(predictions))[:3]
        extra = sorted(set(predictions) - set(references))[:3]
        raise UserError(f"prediction and reference ids differ (missing predictions: {missing}, "
                        f"predictions without references: {extra}).")
    empty = [i for i, refs in references.items() if not refs]
    if empty:
        raise UserError(f"{len(empty)} items have no reference caption (e.g. {empty[0]!r}).")


def _meteor(gts: dict[str, list[str]], systems: list[dict[str, list[str]]]) -> list[float]:
    """METEOR 1.5 of each system through one pycocoevalcap Java process, always stopped afterwards."""
    meteor = Meteor()
    try:
        return [meteor.compute_score(gts, res)[0] for res in systems]
    finally:
        with meteor.lock:
            process = meteor.meteor_p
            process.stdin.close()
            process.kill()
            process.wait()
            process.stdout.close()
            process.stderr.close()


def _check_spice_jars() -> None:
    missing = [jar for jar in SPICE_CORENLP_JARS if not (SPICE_LIB / jar).is_file()]
    if missing:
        raise UserError(f"SPICE needs the Stanford CoreNLP 3.6.0 jars {', '.join(missing)} in "
                        f"{SPICE_LIB} (nothing is downloaded); add them there or score without SPICE.")


def _spice(gts: dict[str, list[str]], res: dict[str, list[str]]) -> float:
    try:
        return spice_module.Spice().compute_score(gts, res)[0]
    except subprocess.CalledProcessError as exc:
        raise UserError(f"SPICE (Java) failed with exit status {exc.returncode}; "
                        "SPICE 1.0 was built for Java 8 and asks for 8 GB of memory.") from exc
