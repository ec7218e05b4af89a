"""The JSON shapes of the HTTP API (docs/design.md section 9), validated by pydantic.

Requests forbid unknown fields (a typo is a 422, not a silently ignored option). Multipart forms
are validated with the same models: their text fields are coerced (``"10"`` -> 10) and ``filter``
or ``fields`` arrive as JSON text.
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from unifashion_core.serve.settings import MAX_GENERATION_STEPS, MAX_ITEMS_PER_UPSERT, MAX_K, MAX_TEXT_CHARS

Mode = Literal["auto", "t2i", "i2t", "i2i", "cir"]
ComposedScore = Literal["auto", "fused", "zero-shot"]
FieldValue = str | int | float | bool
ItemId = Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$",
               description="The item id (printable characters, at most 256).")


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchQuery(Request):
    """``POST /search``: a text, an image (multipart ``image``, or a catalogue ``item``), or both."""

    text: str | None = Field(None, min_length=1, max_length=MAX_TEXT_CHARS,
                             description="Query text (text->image), or the change wanted (composed).")
    item: str | None = Field(None, min_length=1, max_length=256,
                             description="Search with this catalogue item's image (more like this, or composed).")
    k: int = Field(10, ge=1, le=MAX_K, description="How many results (capped at the catalogue size).")
    mode: Mode = Field("auto", description="auto: t2i for a text, i2t for an image, cir for both; i2i: similar "
                                           "images.")
    filter: dict[str, str | list[str]] | None = Field(
        None, description='Manifest fields the results must match, e.g. {"category": "dress", "gender": '
                          '["Men", "Unisex"]}; applied before the top k is cut.')
    use_captions: bool = Field(True, description="Composed: add the gallery-caption term (when the index has it).")
    caption_weight: float = Field(1.0, ge=0.0, le=10.0, allow_inf_nan=False,
                                  description="Composed: weight w of the caption term.")
    composed: ComposedScore = Field("auto", description="Composed score: fused (phase 2), zero-shot (late fusion "
                                                        "of image->image and text->image, no phase 2), or auto "
                                                        "(fused for a phase-2 checkpoint, else zero-shot).")
    image_weight: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False,
                                       description="Zero-shot: weight of image->image (text->image gets the rest; "
                                                   "default: the checkpoint recipe's model.zero_shot_image_weight).")


class SearchHit(BaseModel):
    rank: int
    id: str
    score: float
    caption: str
    image_url: str
    fields: dict[str, str]


class SearchResponse(BaseModel):
    mode: str = Field(description="The mode that ran (auto resolved).")
    composed_score: str | None = Field(None, description="Composed queries: the score that ranked them, e.g. "
                                                         "'zero-shot (image weight 0.4)' or 'fused'; else null.")
    num_items: int = Field(description="Items in the catalogue.")
    results: list[SearchHit]


class ItemIn(Request):
    """One item of a JSON ``POST /items``."""

    id: str = ItemId
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS, description="The item's text (its caption).")
    image: str = Field(min_length=1, description="The image file's bytes, URL-safe base64 (padding optional).")
    fields: dict[str, FieldValue] = Field(default_factory=dict, description="Filterable fields (category, ...).")


class ItemsIn(Request):
    """``POST /items`` as JSON: upsert one or many items."""

    items: list[ItemIn] = Field(min_length=1, max_length=MAX_ITEMS_PER_UPSERT)


class ItemForm(Request):
    """``POST /items`` as multipart: one item (the image is the file field ``image``)."""

    id: str = ItemId
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    fields: dict[str, FieldValue] = Field(default_factory=dict)


class UpsertResponse(BaseModel):
    upserted: list[str]
    replaced: list[str] = Field(description="The upserted ids that existed before.")
    num_items: int


class ItemOut(BaseModel):
    id: str
    caption: str
    fields: dict[str, str]
    image_url: str


class DeleteResponse(BaseModel):
    deleted: str
    num_items: int


class CaptionQuery(Request):
    """``POST /caption``: caption an uploaded image (multipart) or a catalogue item's image."""

    item: str | None = Field(None, min_length=1, max_length=256)
    style: str | None = Field(None, description="short, professional or detailed (default: the model's).")
    max_new_tokens: int = Field(40, ge=1, le=256)
    num_beams: int = Field(1, ge=1, le=8)


class CaptionResponse(BaseModel):
    caption: str
    style: str


class GenerateQuery(Request):
    """``POST /generate``: a text, optionally with an image (multipart upload or a catalogue item)."""

    text: str | None = Field(None, min_length=1, max_length=MAX_TEXT_CHARS)
    item: str | None = Field(None, min_length=1, max_length=256)
    steps: int | None = Field(None, ge=1, le=MAX_GENERATION_STEPS, description="Default: the recipe's.")
    sampler: str | None = Field(None, description="dpm++, plms or ddim (default: the recipe's).")
    guidance: float | None = Field(None, ge=0.0, le=50.0, allow_inf_nan=False)
    seed: int = Field(0, ge=0, le=2**31 - 1)


class Health(BaseModel):
    status: str
    num_items: int
    num_live: int = Field(description="Items upserted since the base index was built.")
    segments: int = Field(description="Writes not yet compacted into the base.")
    fingerprint: str
    kind: str
    has_captions: bool
    heads: list[str]
    writes: Literal["disabled", "api-key", "open"]


class ErrorBody(BaseModel):
    error: str = Field(description="One sentence saying what is wrong.")


MODELS = (SearchQuery, SearchResponse, ItemsIn, ItemForm, UpsertResponse, ItemOut, DeleteResponse, CaptionQuery,
          CaptionResponse, GenerateQuery, Health, ErrorBody)
