"""The catalogue in Qdrant: one point per item, searched with the local index's scores and filters.

Each item is a point whose id is a 63-bit hash of the item id (an upsert by id replaces it) with
three named vectors, all dot product and stored as float16: ``image``, the Q query vectors as a
multivector compared by ``MAX_SIM`` (score ``max_q <z_q, t>`` for a one-vector query), and the
single vectors ``text`` and ``caption``. The payload is the item's record
``{"id", "caption", "image", "fields": {...}}`` (+ ``generated_caption``); filters become
conditions on ``fields.NAME`` inside Qdrant's search. The collection's metadata carries the model
fingerprint and layout, so a collection another model filled is refused.

A build fills a new physical collection and then points the alias ``collection`` at it, so
searches never see half a catalogue. A small local directory (``meta.json`` with ``backend:
qdrant``) stands for the collection: ``search.open_index`` on it returns a :class:`QdrantIndex` with the
same search methods as :class:`RetrievalIndex`, except that the returned "rows" are point ids
(pass them to :meth:`QdrantIndex.item_at`).
"""

import hashlib
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models

from unifashion_core import __version__
from unifashion_core.batching import batch_slices
from unifashion_core.errors import UserError
from unifashion_core.fileio import atomic_dir, write_json
from unifashion_core.retrieval.exact import check_queries, zero_shot_scorer
from unifashion_core.retrieval.index import (
    CANDIDATE_FACTOR,
    FORMAT_VERSION,
    META,
    IndexWriter,
    check_batch,
    check_fingerprint,
    read_meta,
)
from unifashion_core.retrieval.payload import Filter, ItemRecord

API_KEY_VARIABLE = "QDRANT_API_KEY"  # read from the environment, never written to meta.json
UPLOAD_BATCH = 128  # points per upsert request
RECORD_CACHE = 100_000  # records of returned points kept for item_at()

Array = np.ndarray
SearchResult = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class QdrantTarget:
    """Where a catalogue lives in Qdrant.

    Attributes:
        url: a Qdrant server or cluster (``http://localhost:6333``); its API key, if any, is read
            from ``$QDRANT_API_KEY``. Give ``url`` or ``path``.
        path: a directory for Qdrant's embedded local mode (one process at a time).
        collection: the name searches use (an alias of the latest build's collection).
        shards: shards of a new collection on a cluster (None: the server's default).
        replicas: copies of each shard on a cluster (None: the server's default).
    """

    url: str | None = None
    path: str | None = None
    collection: str = "unifashion"
    shards: int | None = None
    replicas: int | None = None

    def __post_init__(self) -> None:
        if (self.url is None) == (self.path is None):
            raise UserError("give a Qdrant server URL (--qdrant-url) or a local-mode directory (--qdrant-path).")

    def connect(self) -> QdrantClient:
        """A client for the target."""
        if self.url is not None:
            return QdrantClient(url=self.url, api_key=os.environ.get(API_KEY_VARIABLE))
        return QdrantClient(path=self.path)


def point_id(item_id: str) -> int:
    """The Qdrant point id of an item: a 63-bit hash, so it fits int64 "rows"."""
    return int.from_bytes(hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest(), "big") >> 1


def _vectors_config(dim: int, has_captions: bool) -> dict[str, models.VectorParams]:
    """Named vectors: the image multivector (MAX_SIM) and the single text (and caption) vectors."""
    def params(multivector: bool) -> models.VectorParams:
        comparator = models.MultiVectorConfig(comparator=models.MultiVectorComparator.MAX_SIM) if multivector else None
        return models.VectorParams(size=dim, distance=models.Distance.DOT, datatype=models.Datatype.FLOAT16,
                                   multivector_config=comparator)

    names = ("image", "text", "caption") if has_captions else ("image", "text")
    return {name: params(name == "image") for name in names}


def _points(shard: dict[str, Array]) -> Iterable[models.PointStruct]:
    """The points of one writer shard (vectors as the float16 values the local index stores)."""
    captions = shard.get("captions")
    for position, line in enumerate(shard["records"].tolist()):
        record = ItemRecord.from_json(line)
        vector = {"image": shard["image_vectors"][position].astype(np.float32).tolist(),
                  "text": shard["text_vectors"][position].astype(np.float32).tolist()}
        payload = asdict(record)
        if captions is not None:
            vector["caption"] = shard["caption_vectors"][position].astype(np.float32).tolist()
            payload["generated_caption"] = str(captions[position])
        yield models.PointStruct(id=point_id(record.id), vector=vector, payload=payload)


def write_collection(writer: IndexWriter, target: QdrantTarget) -> None:
    """Upload a finished writer's batches to Qdrant and write the local directory that names it.

    The points go into a new collection ``{collection}-{timestamp}``; the alias ``collection``
    then moves to it in one operation and the collection it pointed at before is dropped. On an
    error the new collection is dropped and the alias is left as it was. Open the result with
    ``QdrantIndex.open(writer.out)`` (local mode allows one open client per directory).

    Raises:
        UserError: nothing was added, or ``collection`` is a real collection (not an alias).
    """
    if writer.layout is None:
        raise UserError(f"no items were added to the index {writer.out}; nothing to upload.")
    num_queries, dim, has_captions = writer.layout
    client = target.connect()
    try:
        previous = _alias_target(client, target.collection)
        physical = f"{target.collection}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        names, seen = set(), set()
        meta = {**writer.meta, "format_version": FORMAT_VERSION, "backend": "qdrant", "kind": "qdrant",
                "num_queries": num_queries, "dim": dim, "has_captions": has_captions,
                "created_with": f"unifashion {__version__}"}
        client.create_collection(physical, vectors_config=_vectors_config(dim, has_captions),
                                 shard_number=target.shards, replication_factor=target.replicas,
                                 metadata=_collection_meta(meta))
        try:
            for shard in writer.shards():
                points = list(_points(shard))
                _check_unique(points, seen)
                names.update(name for p in points for name in p.payload["fields"])
                for batch in batch_slices(len(points), UPLOAD_BATCH):
                    client.upsert(physical, points[batch], wait=True)
            meta = {**meta, "num_items": len(seen), "fields": sorted(names)}
            client.update_collection(physical, metadata=_collection_meta(meta))
            _index_payload(client, target, physical, meta["fields"])
            _move_alias(client, target.collection, physical, previous)
        except BaseException:
            client.delete_collection(physical)
            raise
        if previous is not None:
            client.delete_collection(previous)
    finally:
        client.close()
    with atomic_dir(writer.out) as tmp:
        write_json(tmp / META, {**meta, "qdrant": {"url": target.url, "path": target.path,
                                                   "collection": target.collection}})
    writer.discard()


def _collection_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """What the collection itself records: enough to refuse another model's queries."""
    keys = ("fingerprint", "manifest_sha256", "split", "num_queries", "dim", "has_captions", "fields",
            "format_version", "created_with")
    return {key: meta[key] for key in keys if key in meta}


def _check_unique(points: list[models.PointStruct], seen: set[int]) -> None:
    """Refuse two items whose ids hash to one point id (odds ~N^2 / 2^64)."""
    for point in points:
        if point.id in seen:
            raise UserError(f"item {point.payload['id']!r} hashes to the point id of an earlier item; rename it.")
        seen.add(point.id)


def _alias_target(client: QdrantClient, name: str) -> str | None:
    """The collection the alias ``name`` points at; None if there is no such alias or collection."""
    for alias in client.get_aliases().aliases:
        if alias.alias_name == name:
            return alias.collection_name
    if client.collection_exists(name):
        raise UserError(f"Qdrant collection {name!r} exists and is not a unifashion alias; choose another "
                        "--qdrant-collection or delete it.")
    return None


def _index_payload(client: QdrantClient, target: QdrantTarget, physical: str, fields: list[str]) -> None:
    """Keyword payload indexes on the id and every field (servers only: local mode scans)."""
    if target.url is None:
        return
    for key in ["id", *(f"fields.{name}" for name in fields)]:
        client.create_payload_index(physical, key, field_schema=models.PayloadSchemaType.KEYWORD, wait=True)


def _move_alias(client: QdrantClient, alias: str, physical: str, previous: str | None) -> None:
    """Point ``alias`` at ``physical`` in one request."""
    operations: list[Any] = []
    if previous is not None:
        operations.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
    operations.append(models.CreateAliasOperation(
        create_alias=models.CreateAlias(collection_name=physical, alias_name=alias)))
    client.update_collection_aliases(operations)


def _condition(filter: Filter | None, fields: list[str]) -> models.Filter | None:
    """A Qdrant filter on ``fields.NAME``, checked like the local index's."""
    if not filter:
        return None
    must = []
    for name, wanted in filter.items():
        if name not in fields:
            raise UserError(f"cannot filter on {name!r}: no indexed item has that field (fields: "
                            f"{', '.join(fields) or 'none'}).")
        allowed = [wanted] if isinstance(wanted, str) else wanted
        if not isinstance(allowed, list | tuple) or not all(isinstance(v, str) for v in allowed):
            raise UserError(f"filter {name!r} must be a string or a list of strings, got {wanted!r}.")
        must.append(models.FieldCondition(key=f"fields.{name}", match=models.MatchAny(any=list(allowed))))
    return models.Filter(must=must)


class QdrantIndex:
    """A catalogue in a Qdrant collection, with :class:`RetrievalIndex`'s search methods.

    Searches return ``(scores, keys)``: ``keys`` are point ids (int64), -1 / -inf where fewer
    than ``k`` items match; :meth:`item_at` turns a key into the item's record.

    Args:
        path: the local directory standing for the collection.
        meta: its ``meta.json``.
        client: a connected client.
    """

    def __init__(self, path: Path, meta: dict[str, Any], client: QdrantClient) -> None:
        self.path = path
        self.meta = meta
        self.client = client
        self.collection = meta["qdrant"]["collection"]
        self._records: OrderedDict[int, ItemRecord] = OrderedDict()

    @classmethod
    def open(cls, path: str | Path, expected_fingerprint: str | None = None) -> "QdrantIndex":
        """Connect to the collection a local directory names, refusing another model's.

        Raises:
            UserError: no such directory or collection, or fingerprints that differ.
        """
        path = Path(path)
        meta = read_meta(path)
        check_fingerprint(path, meta, expected_fingerprint)
        where = meta["qdrant"]
        client = QdrantTarget(where["url"], where["path"], where["collection"]).connect()
        if not client.collection_exists(where["collection"]):
            raise UserError(f"Qdrant collection {where['collection']!r} at {where['url'] or where['path']} does not "
                            "exist; rebuild it with `unifashion index --backend qdrant`.")
        stored = client.get_collection(where["collection"]).config.metadata or {}
        if stored.get("fingerprint") != meta["fingerprint"]:
            raise UserError(f"Qdrant collection {where['collection']!r} was filled by a different model "
                            f"(fingerprint {stored.get('fingerprint')}), not the one {path} names "
                            f"({meta['fingerprint']}); rebuild it with `unifashion index --backend qdrant`.")
        return cls(path, {**meta, **stored}, client)

    def close(self) -> None:
        """Close the client (local mode: release the directory for another process)."""
        self.client.close()

    @property
    def num_items(self) -> int:
        """Points in the collection now (Qdrant's fast estimate on a cluster, exact on one node)."""
        return int(self.client.count(self.collection, exact=False).count)

    @property
    def num_queries(self) -> int:
        """Q, the number of query vectors per image."""
        return int(self.meta["num_queries"])

    @property
    def dim(self) -> int:
        """D, the embedding width."""
        return int(self.meta["dim"])

    @property
    def kind(self) -> str:
        """Always ``qdrant``."""
        return "qdrant"

    @property
    def fingerprint(self) -> str:
        """The fingerprint of the model that embedded the items."""
        return str(self.meta["fingerprint"])

    def item(self, item_id: str) -> ItemRecord:
        """The record of an item id.

        Raises:
            UserError: no such item.
        """
        return self._record(point_id(item_id), f"no item {item_id!r}")

    def item_at(self, key: int) -> ItemRecord:
        """The record of a point id a search returned (kept from the search, else fetched)."""
        return self._record(int(key), f"no item with point id {key}")

    def _record(self, key: int, missing: str) -> ItemRecord:
        if key not in self._records:
            found = self.client.retrieve(self.collection, [key], with_payload=True)
            if not found:
                raise UserError(f"{missing} in Qdrant collection {self.collection!r}.")
            self._remember(found[0].id, found[0].payload)
        return self._records[key]

    def upsert(self, image_vectors: Array, text_vectors: Array, records: list[ItemRecord],
               caption_vectors: Array | None = None, captions: list[str] | None = None) -> None:
        """Add or replace items by id (a live catalogue's writes), waiting until Qdrant has them.

        Args:
            image_vectors: ``(B, Q, D)``; text_vectors: ``(B, D)``; records: the B items' records.
            caption_vectors, captions: ``(B, D)`` and the B generated captions, required when the
                collection has captions.

        Raises:
            ValueError: shapes that do not match the collection or each other, or NaN vectors.
        """
        has_captions = bool(self.meta["has_captions"])
        check_batch([r.id for r in records], image_vectors, text_vectors, caption_vectors, captions, records)
        if image_vectors.shape[1:] != (self.num_queries, self.dim) or (caption_vectors is not None) != has_captions:
            raise ValueError(f"vectors must be (B, {self.num_queries}, {self.dim}) with caption vectors "
                             f"{'given' if has_captions else 'absent'}, as the collection was built.")
        shard = {"records": np.array([r.to_json() for r in records]), "image_vectors": image_vectors,
                 "text_vectors": text_vectors}
        if caption_vectors is not None:
            shard.update(caption_vectors=caption_vectors, captions=np.array(captions))
        points = list(_points(shard))
        for batch in batch_slices(len(points), UPLOAD_BATCH):
            self.client.upsert(self.collection, points[batch], wait=True)
        self._remember_fields({name for record in records for name in record.fields})
        for point in points:
            self._records.pop(point.id, None)

    def delete(self, item_ids: list[str]) -> None:
        """Remove items by id (ids not in the collection are ignored), waiting until Qdrant has."""
        keys = [point_id(item_id) for item_id in item_ids]
        self.client.delete(self.collection, models.PointIdsList(points=keys), wait=True)
        for key in keys:
            self._records.pop(key, None)

    def _remember_fields(self, names: set[str]) -> None:
        """Add new field names to the collection's metadata, so filters on them are accepted."""
        known = set(self.meta.get("fields", []))
        if names - known:
            self.meta["fields"] = sorted(known | names)
            self.client.update_collection(self.collection, metadata={**_collection_meta(self.meta)})

    def field_values(self, name: str) -> list[str]:
        """The distinct values of a filterable field, sorted (Qdrant's facet counts)."""
        _condition({name: []}, self.meta.get("fields", []))
        hits = self.client.facet(self.collection, key=f"fields.{name}", limit=1_000_000, exact=True).hits
        return sorted(str(hit.value) for hit in hits)

    def search_images(self, queries: Array, k: int, filter: Filter | None = None,
                      allowed: Array | None = None) -> SearchResult:
        """Rank images by ``max_q <z_q, query>`` (``MAX_SIM`` of a one-vector query); see RetrievalIndex."""
        queries, condition = self._check(queries, 2, k, filter, allowed)
        requests = [models.QueryRequest(query=[q.tolist()], using="image", limit=k, filter=condition,
                                        with_payload=True) for q in queries]
        return self._collect(self.client.query_batch_points(self.collection, requests), k)

    def search_texts(self, image_queries: Array, k: int, filter: Filter | None = None,
                     allowed: Array | None = None) -> SearchResult:
        """Rank texts by ``max_q <z_q, t>``: Q single-vector searches per image, merged by max.

        Merging each vector's exact top ``k`` by max is the exact top ``k`` of the max.
        """
        image_queries, condition = self._check(image_queries, 3, k, filter, allowed)
        requests = [models.QueryRequest(query=vector.tolist(), using="text", limit=k, filter=condition,
                                        with_payload=True) for image in image_queries for vector in image]
        responses = self.client.query_batch_points(self.collection, requests)
        merged = []
        for image in batch_slices(len(responses), image_queries.shape[1]):  # the Q responses of one image
            best: dict[int, float] = {}
            for response in responses[image]:
                for point in response.points:
                    self._remember(point.id, point.payload)
                    best[point.id] = max(best.get(point.id, -np.inf), point.score)
            merged.append(sorted(best.items(), key=lambda pair: -pair[1])[:k])
        return _as_arrays(merged, k)

    def search_composed(
        self, fused: Array, k: int, caption_weight: float = 1.0, use_captions: bool = True,
        filter: Filter | None = None, allowed: Array | None = None,
    ) -> SearchResult:
        """``max_q <e, z_q> + w <e, c>``: candidates from both vectors, then both scores of each candidate."""
        if not use_captions or not self.meta["has_captions"]:
            return self.search_images(fused, k, filter, allowed)
        fused, condition = self._check(fused, 2, k, filter, allowed)
        merged = [self._composed_one(query, k, caption_weight, condition) for query in fused]
        return _as_arrays(merged, k)

    def _composed_one(self, query: Array, k: int, weight: float, condition: models.Filter | None
                      ) -> list[tuple[int, float]]:
        """One composed query: the union of both vectors' candidates, each scored by both terms."""
        limit = k * CANDIDATE_FACTOR
        first = self.client.query_batch_points(self.collection, [
            models.QueryRequest(query=[query.tolist()], using="image", limit=limit, filter=condition),
            models.QueryRequest(query=query.tolist(), using="caption", limit=limit, filter=condition)])
        candidates = sorted({point.id for response in first for point in response.points})
        only = models.Filter(must=[models.HasIdCondition(has_id=candidates)])
        image, caption = self.client.query_batch_points(self.collection, [
            models.QueryRequest(query=[query.tolist()], using="image", limit=len(candidates), filter=only,
                                with_payload=True),
            models.QueryRequest(query=query.tolist(), using="caption", limit=len(candidates), filter=only)])
        scores = {point.id: point.score for point in image.points}
        for point in image.points:
            self._remember(point.id, point.payload)
        for point in caption.points:
            if point.id in scores:
                scores[point.id] += weight * point.score
        return sorted(scores.items(), key=lambda pair: -pair[1])[:k]

    def search_zero_shot(
        self, references: Array, texts: Array, k: int, image_weight: float, filter: Filter | None = None,
        allowed: Array | None = None,
    ) -> SearchResult:
        """Composed retrieval by the zero-shot late fusion (``metrics.cir.zero_shot_scores``), for
        checkpoints without phase-2 training.

        Candidates: ``CANDIDATE_FACTOR * k`` points by each term's proxy inside Qdrant (the text
        term itself, ``MAX_SIM`` of the one-vector text query; for the image term, ``MAX_SIM`` of the
        reference's Q vectors); their image vectors are then fetched and every candidate is scored
        exactly, as the local index scores every item.

        Args:
            references: ``(M, Q, D)`` reference image embeddings.
            texts: ``(M, D)`` embeddings of the modification texts.
            k, filter: as in :meth:`search_images`.
            image_weight: weight of the image->image term, in [0, 1].
        """
        references, condition = self._check(references, 3, k, filter, allowed)
        texts = check_queries(texts, 2, self.dim, "collection")
        if len(texts) != len(references):
            raise ValueError(f"{len(references)} references but {len(texts)} texts.")
        merged = [self._zero_shot_one(references[row], texts[row], image_weight, k, condition)
                  for row in range(len(texts))]
        return _as_arrays(merged, k)

    def _zero_shot_one(self, reference: Array, text: Array, image_weight: float, k: int,
                       condition: models.Filter | None) -> list[tuple[int, float]]:
        """One zero-shot query (``reference`` ``(Q, D)``, ``text`` ``(D,)``): both terms' candidates,
        re-scored exactly from their stored vectors."""
        limit = k * CANDIDATE_FACTOR
        found = self.client.query_batch_points(self.collection, [
            models.QueryRequest(query=reference.tolist(), using="image", limit=limit, filter=condition),
            models.QueryRequest(query=[text.tolist()], using="image", limit=limit, filter=condition)])
        candidates = sorted({point.id for response in found for point in response.points})
        if not candidates:
            return []
        points = self.client.retrieve(self.collection, candidates, with_payload=True, with_vectors=["image"])
        for point in points:
            self._remember(point.id, point.payload)
        vectors = np.asarray([point.vector["image"] for point in points], dtype=np.float32)  # (n, Q, D)
        scores = zero_shot_scorer(reference[None], text[None], image_weight)(slice(0, 1), vectors)[0]  # (n,)
        order = np.argsort(-scores, kind="stable")[:k]
        return [(points[i].id, float(scores[i])) for i in order]

    def _check(self, queries: Array, ndim: int, k: int, filter: Filter | None,
               allowed: Array | None) -> tuple[Array, models.Filter | None]:
        """Validate like RetrievalIndex: shape, finite values, 1 <= k <= N, known filter fields."""
        if allowed is not None:
            raise ValueError("a Qdrant catalogue has no row masks: delete items from the collection instead.")
        queries = check_queries(queries, ndim, self.dim, "collection")
        if not isinstance(k, int | np.integer) or not 1 <= k <= self.num_items:
            raise UserError(f"k must be between 1 and the catalogue size ({self.num_items}), got {k}.")
        return queries, _condition(filter, self.meta.get("fields", []))

    def _collect(self, responses: list[models.QueryResponse], k: int) -> SearchResult:
        """Best-first (key, score) lists of the responses as padded arrays."""
        merged = []
        for response in responses:
            for point in response.points:
                self._remember(point.id, point.payload)
            merged.append([(point.id, point.score) for point in response.points])
        return _as_arrays(merged, k)

    def _remember(self, key: int, payload: dict[str, Any] | None) -> None:
        """Keep a returned point's record for item_at (bounded, least recently returned dropped)."""
        if payload is None:
            return
        self._records[key] = ItemRecord(payload["id"], payload["caption"], payload["image"], payload["fields"])
        self._records.move_to_end(key)
        if len(self._records) > RECORD_CACHE:
            self._records.popitem(last=False)


def _as_arrays(ranked: list[list[tuple[int, float]]], k: int) -> SearchResult:
    """``(M, k)`` scores and keys from best-first lists, padded with -inf / -1."""
    scores = np.full((len(ranked), k), -np.inf, dtype=np.float32)
    keys = np.full((len(ranked), k), -1, dtype=np.int64)
    for row, pairs in enumerate(ranked):
        for column, (key, score) in enumerate(pairs):
            scores[row, column], keys[row, column] = score, key
    return scores, keys
