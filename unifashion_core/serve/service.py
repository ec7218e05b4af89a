"""What the server's endpoints do, without HTTP: the model and the live catalogue, loaded once.

Model calls are serialised by one lock (the tokenizer is not safe to share between threads, and
two inferences at once on a small CPU only share the same cores); search queries that wait for it
are embedded together (:mod:`unifashion_core.serve.batcher`). Ranking, item look-ups and the
durable writes run outside it, on a :class:`CatalogueView` snapshot.
"""

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from PIL import Image

from unifashion_core.checkpoint import LoadedCheckpoint, load_checkpoint, read_meta
from unifashion_core.data.images import ImageError, open_image
from unifashion_core.errors import UserError
from unifashion_core.inference import GenerationRequest, generate_with, png_bytes
from unifashion_core.retrieval.catalogue import Catalogue, CatalogueView
from unifashion_core.retrieval.index import check_fingerprint
from unifashion_core.retrieval.index import read_meta as read_index_meta
from unifashion_core.retrieval.payload import Filter
from unifashion_core.retrieval.search import (
    Query,
    SearchResult,
    check_query,
    composed_for,
    index_checkpoint,
    rank,
    zero_shot_weight,
)
from unifashion_core.retrieval.upsert import NewItem, embed_items
from unifashion_core.serve.batcher import QueryBatcher
from unifashion_core.serve.settings import ServeSettings


class MissingHead(UserError):
    """The checkpoint has no trained head for this task (caption or generate)."""


class ReadOnly(UserError):
    """The server was started with ``--read-only``."""


@dataclass(frozen=True)
class SearchAnswer:
    """A ranked result list, the mode that produced it and, for composed queries, the score."""

    mode: str
    results: list[SearchResult]
    num_items: int
    composed_score: str | None = None


@dataclass(frozen=True)
class UpsertAnswer:
    """Ids written by an upsert (``replaced``: those that existed before) and the catalogue size after."""

    upserted: list[str]
    replaced: list[str]
    num_items: int


def check_compatible(settings: ServeSettings) -> None:
    """Refuse, without loading any weights, an index built by another model than the checkpoint.

    Raises:
        UserError: the fingerprints differ, or the index or checkpoint is missing.
    """
    checkpoint = settings.checkpoint or index_checkpoint(settings.index)
    check_fingerprint(settings.index, read_index_meta(settings.index), str(read_meta(checkpoint)["fingerprint"]))


def _heads(settings: ServeSettings, checkpoint: Any) -> tuple[str, ...]:
    """The heads to load: every head the checkpoint trained (generate only if wanted)."""
    trained = read_meta(checkpoint).get("heads", [])
    return tuple(h for h in ("caption", "generate") if h in trained and (h != "generate" or settings.generate))


class Service:
    """The model and the live catalogue of one server.

    Args:
        settings: what to serve.

    Raises:
        UserError: an index built by another model, a missing checkpoint, or an index with gallery
            captions served with writes by a checkpoint without a caption head.
    """

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        import torch

        self._eager_threads = torch.get_num_threads()  # captions, generation and upserts: every core
        checkpoint = settings.checkpoint or index_checkpoint(settings.index)
        self.heads: tuple[str, ...] = _heads(settings, checkpoint)
        self.loaded: LoadedCheckpoint = load_checkpoint(checkpoint, heads=self.heads)
        self.catalogue = Catalogue.open(settings.index, expected_fingerprint=self.loaded.fingerprint)
        self.api_key = settings.api_key()
        if self.snapshot().has_captions and not settings.read_only and "caption" not in self.heads:
            raise UserError(f"the index {settings.index} has gallery captions, so an upsert must caption its images, "
                            f"but the checkpoint {self.loaded.path} has no caption head; serve it with --read-only.")
        self._model_lock = threading.Lock()
        self._batcher = QueryBatcher(self.model, self._model_lock, threads=settings.query_threads())

    def close(self) -> None:
        """Stop the model thread (the server is shutting down)."""
        self._batcher.close()

    @property
    def model(self) -> Any:
        """The query model (eval mode)."""
        return self.loaded.model

    def snapshot(self) -> CatalogueView:
        """The catalogue as it is now (with other processes' writes picked up)."""
        return self.catalogue.snapshot()

    def search(self, text: str | None, image: Image.Image | None, item: str | None, k: int, mode: str = "auto",
               caption_weight: float = 1.0, use_captions: bool = True, filter: Filter | None = None,
               composed: str = "auto", image_weight: float | None = None) -> SearchAnswer:
        """Rank the catalogue for a text, an image (an upload or an item's own), or both.

        ``item`` searches with a catalogue item's image: its stored vectors for ``i2i``/``i2t``
        ("more like this"), its image file for composed queries. ``k`` is capped at the catalogue size.
        Composed queries use ``composed`` (``auto``: fused for a phase-2 checkpoint, else the zero-shot
        late fusion with ``image_weight``, by default the checkpoint recipe's), as ``unifashion search``.

        Raises:
            UserError: a query that does not fit the mode, an unknown composed score or a weight
                outside [0, 1]; UnknownItem for an unknown ``item``.
        """
        if image is not None and item is not None:
            raise UserError("give an image or an item, not both.")
        mode, _ = check_query(text, image if item is None else item, mode, names=("a text", "an image or an item"))
        score, weight = self.composed_score(composed, image_weight) if mode == "cir" else (None, None)
        view = self.snapshot()
        if item is not None and mode in ("i2i", "i2t"):
            query = Query(mode, view.image_vectors_of(item)[None])  # (1, Q, D)
        else:
            picture = self.item_image(view, item) if item is not None else image
            query = self._batcher.embed(mode, text, picture, score or "fused")  # with the queries arriving meanwhile
        described = f"zero-shot (image weight {weight:g})" if score == "zero-shot" else score
        if view.num_items == 0:
            return SearchAnswer(mode, [], 0, described)
        results = rank(view, query, min(k, view.num_items), caption_weight, use_captions, filter, weight)
        return SearchAnswer(mode, results, view.num_items, described)

    def composed_score(self, requested: str, image_weight: float | None) -> tuple[str, float | None]:
        """The composed score and zero-shot image weight a composed query gets (see :meth:`search`).

        Raises:
            UserError: an unknown score, or a weight outside [0, 1].
        """
        score = composed_for(requested, self.loaded.meta.get("phase", 1))
        weight = zero_shot_weight(self.model, image_weight)
        return score, weight if score == "zero-shot" else None

    def item_image(self, view: CatalogueView, item_id: str) -> Image.Image:
        """The decoded image of a catalogue item (a file this server owns, never a client's path).

        Raises:
            UnknownItem: no such item; UserError: its image is missing or unreadable here.
        """
        path = view.image_file(item_id)
        if path is None:
            raise UserError(f"item {item_id!r} has no image on this server.")
        try:
            return open_image(path)
        except ImageError as exc:
            raise UserError(f"the image of item {item_id!r} cannot be read on this server ({exc.reason}).") from exc

    def upsert(self, items: list[NewItem]) -> UpsertAnswer:
        """Embed items and add them to the catalogue (replacing existing ids), durably.

        Raises:
            ReadOnly: the server refuses writes; UserError: repeated ids.
        """
        self._check_writable()
        ids = [item.id for item in items]
        if len(set(ids)) != len(ids):
            raise UserError("each id may appear once per upsert.")
        before = self.snapshot()
        with self._model_lock, self._threads():
            batch = embed_items(self.model, items, captions=before.has_captions)
        after = self.catalogue.upsert(batch)
        return UpsertAnswer(ids, [i for i in ids if before.contains(i)], after.num_items)

    def delete(self, item_id: str) -> int:
        """Remove one item, durably; the catalogue size after.

        Raises:
            ReadOnly; UnknownItem: no such item.
        """
        self._check_writable()
        return self.catalogue.delete([item_id]).num_items

    def caption(self, image: Image.Image, style: str | None, max_new_tokens: int, num_beams: int) -> tuple[str, str]:
        """Caption one image; returns (caption, style).

        Raises:
            MissingHead: no caption head; UserError: an unknown style.
        """
        from unifashion_core.models.captioner import instruction_for
        from unifashion_core.models.vision import preprocess

        self._need("caption")
        style = style or self.model.config.captioner.style
        instruction_for(style)
        with self._model_lock, self._threads():
            tokens = self.model.image_tokens(preprocess([image], self.model.vision).to(self.model.device))
            return self.model.caption_images(tokens, style, max_new_tokens, num_beams)[0], style

    def generate(self, request: GenerationRequest) -> tuple[bytes, dict[str, Any]]:
        """Generate one image; returns its PNG bytes (settings in the metadata) and the settings.

        Raises:
            MissingHead: no generator head; UserError: a request ``check_request`` refuses.
        """
        self._need("generate")
        with self._model_lock, self._threads():
            images, settings = generate_with(self.loaded, request)
        return png_bytes(images[0], settings), settings

    @contextlib.contextmanager
    def _threads(self) -> Iterator[None]:
        """Torch's threads for an eager model call on this request thread: every core (torch's count is
        per thread, and a new thread starts from the count the model thread last set)."""
        import torch

        torch.set_num_threads(self._eager_threads)
        yield

    def _need(self, head: str) -> None:
        if head not in self.heads:
            why = "was not loaded (--no-generate)" if head == "generate" and not self.settings.generate else \
                "was not trained in this checkpoint"
            raise MissingHead(f"this server cannot {head}: the {head} head {why}.")

    def _check_writable(self) -> None:
        if self.settings.read_only:
            raise ReadOnly("this server is read-only (--read-only); it accepts no upserts or deletes.")
