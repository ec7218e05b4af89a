"""Short shopper-style phrases from an item's attributes: "blue dress", "men's black casual shoe".

One word order serves every dataset: who it is for, what for, colour, pattern, sleeve, length, and
the garment noun last (the demo's own captions use the same order). Text augmentation builds
training captions from random subsets of these fields; ``bench queries`` builds its queries from
them. Augmentation phrases only the fields in ``PHRASE_ORDER``; a field outside it (season, master
category ...) is phrased only when asked for by name, just before the noun.
"""

from collections.abc import Iterable, Mapping
from typing import Any

from unifashion_core.data.adapters.catalogue_triplets import PLURAL_ONLY, singular_noun

# demo fields: colour, pattern, sleeve, length, type; fashion-product: gender, usage, baseColour, articleType
PHRASE_ORDER = ("gender", "usage", "colour", "baseColour", "pattern", "sleeve", "length", "type", "articleType")
NOUN_FIELDS = frozenset({"type", "articleType"})
_GENDER_WORDS = {"men": "men's", "women": "women's", "boys": "boys'", "girls": "girls'"}
_COLOUR_WORDS = {"multi": "multicoloured"}


def attribute_word(field: str, value: Any) -> str:
    """How one attribute value reads in a phrase: lower case, nouns singular, genders possessive."""
    word = " ".join(str(value).split()).lower()
    if field == "gender":
        return _GENDER_WORDS.get(word, word)
    if field in NOUN_FIELDS:
        return singular_noun(word)
    return _COLOUR_WORDS.get(word, word) if field in ("colour", "baseColour") else word


def attribute_fields(items: Iterable[Any]) -> list[str]:
    """The attribute fields that some of ``items`` (manifest ``Item``s) give a non-empty value, sorted."""
    return sorted({name for item in items for name, value in item.attributes.items() if value not in (None, "")})


def phrase_fields(attributes: Mapping[str, Any]) -> list[str]:
    """The fields of ``attributes`` that can be phrased (a non-empty value), in phrase order."""
    return [name for name in PHRASE_ORDER if attributes.get(name) not in (None, "")]


def _position(name: str) -> tuple[float, str]:
    before_nouns = min(PHRASE_ORDER.index(noun) for noun in NOUN_FIELDS) - 0.5
    return (PHRASE_ORDER.index(name) if name in PHRASE_ORDER else before_nouns, name)


def attribute_phrase(attributes: Mapping[str, Any], fields: Iterable[str]) -> str:
    """The phrase naming ``fields`` of ``attributes`` in phrase order: e.g. ``"blue striped dress"``.

    Fields without a value are left out.
    """
    named = sorted((name for name in set(fields) if attributes.get(name) not in (None, "")), key=_position)
    return " ".join(attribute_word(name, attributes[name]) for name in named)


def with_article(phrase: str, fields: Iterable[str]) -> str:
    """``phrase`` with "a"/"an" in front when it ends in a countable noun ("a blue dress", "black trousers")."""
    if not phrase or NOUN_FIELDS.isdisjoint(fields) or phrase.split()[-1] in PLURAL_ONLY:
        return phrase
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"
