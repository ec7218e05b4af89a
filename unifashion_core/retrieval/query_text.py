"""Checks on a shopper's query text before it is embedded: is there anything to search for?

A query of only function words ("the", "please show me") names nothing; a query in a script the
tokenizer has no pieces for ("红色连衣裙", "ชุดสีแดง", emoji) becomes unknown tokens only. Both
are refused with a sentence saying why. Words the tokenizer reads only in part, or a query in
another script that it splits into single letters, are searched with a warning: the models were
trained on English texts.
"""

import unicodedata

from transformers import PreTrainedTokenizerBase

from unifashion_core.errors import UserError

# English function words and shop fillers: a query made only of these names no garment.
STOP_WORDS = frozenset("""
a an the this that these those some any all each every other another such
i me my mine we us our you your he him his she her it its they them their
am is are was were be been being do does did have has had will would shall should can could may might must
and or but nor so yet if then than as of at by for from in into on onto to up down out off over under
with without about above below between through during before after again also just only very too
not no yes what which who whom whose where when why how there here
please thanks thank hi hello hey want wanted wants like love looking look search searching find show
need get buy give something anything one ones
""".split())


def words(text: str) -> list[str]:
    """The query's words, lower case, without surrounding punctuation."""
    stripped = (word.strip(".,;:!?\"'()[]{}") for word in text.lower().split())
    return [word for word in stripped if word]


def check_query_words(text: str) -> None:
    """Refuse a query that names nothing: no words, or only stop words.

    Raises:
        UserError: the query has no word outside ``STOP_WORDS``.
    """
    found = words(text)
    if found and all(word in STOP_WORDS for word in found):
        raise UserError(f"the query {text.strip()!r} has only stop words, so it names nothing to search for; "
                        'name the garment, e.g. --text "blue dress".')
    if not found:
        raise UserError(f"the query {text.strip()!r} has no words; give some, e.g. --text \"blue dress\".")


def _is_latin(word: str) -> bool:
    letters = [c for c in word if c.isalpha()]
    return not letters or all("LATIN" in unicodedata.name(c, "") for c in letters)


def tokenizer_warnings(tokenizer: PreTrainedTokenizerBase, text: str) -> list[str]:
    """Refuse a query the tokenizer cannot read at all; warn about the words it reads poorly.

    Returns:
        Warnings: words that became unknown tokens, or words outside the Latin script.

    Raises:
        UserError: every word of the query became the tokenizer's unknown token.
    """
    found = words(text)
    unknown = [word for word in found
               if set(tokenizer(word, add_special_tokens=False)["input_ids"]) <= {tokenizer.unk_token_id}]
    if found and len(unknown) == len(found):
        raise UserError(f"the tokenizer cannot read the query {text.strip()!r} (every word is an unknown token); "
                        "the model reads English text: try e.g. --text \"red dress\".")
    warnings = []
    if unknown:
        warnings.append(f"the tokenizer cannot read {', '.join(unknown)} (unknown tokens); the other words carry "
                        "the query")
    foreign = [word for word in found if word not in unknown and not _is_latin(word)]
    if foreign:
        warnings.append(f"{', '.join(foreign)} is not in the Latin script; the model was trained on English "
                        "texts, so expect poor results")
    return warnings
