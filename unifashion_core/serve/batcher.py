"""Queries that arrive together are embedded together (dynamic batching).

One model serves every request, one forward pass at a time. While a pass runs, more queries
arrive; the next request to take the model embeds all of them in one batch per mode, which costs
little more than embedding one (a batch of 8 texts takes about twice the time of 1 on 2 cores).
A query that arrives alone is embedded alone, at once: nothing waits for a batch to fill.
"""

import threading
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from unifashion_core.models.unifashion import UniFashion
from unifashion_core.retrieval.search import Query

MAX_BATCH = 32  # queries per forward pass


@dataclass
class _Job:
    mode: str
    text: str | None
    image: Image.Image | None
    done: threading.Event = field(default_factory=threading.Event)
    vectors: np.ndarray | None = None  # t2i, cir (1, D); i2t, i2i (1, Q, D)
    error: BaseException | None = None


class QueryBatcher:
    """Embeds checked queries (see ``retrieval.search.check_query``), batching those that wait.

    Args:
        model: the query model (eval mode).
        model_lock: held around every use of the model (shared with captioning and generation).
        max_batch: the most queries embedded in one pass.
    """

    def __init__(self, model: UniFashion, model_lock: threading.Lock, max_batch: int = MAX_BATCH) -> None:
        self.model = model
        self.model_lock = model_lock
        self.max_batch = max_batch
        self._pending: list[_Job] = []
        self._pending_lock = threading.Lock()

    def embed(self, mode: str, text: str | None, image: Image.Image | None) -> Query:
        """Embed one query; blocks until it (and any queries waiting with it) is embedded.

        Raises:
            whatever the model raised for the batch that held this query.
        """
        job = _Job(mode, text, image)
        with self._pending_lock:
            self._pending.append(job)
        while not job.done.is_set():
            with self.model_lock:
                with self._pending_lock:
                    jobs, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
                self._run(jobs)
        if job.error is not None:
            raise job.error
        return Query(mode, job.vectors)

    def _run(self, jobs: list[_Job]) -> None:
        """Embed ``jobs``, one batch per mode, and wake their owners (errors go to the batch's jobs)."""
        try:
            for mode in dict.fromkeys(job.mode for job in jobs):
                batch = [job for job in jobs if job.mode == mode]
                try:
                    vectors = self._vectors(mode, batch)
                except Exception as exc:  # noqa: BLE001 - handed to each request of the batch
                    for job in batch:
                        job.error = exc
                    continue
                for i, job in enumerate(batch):
                    job.vectors = vectors[i : i + 1]
        finally:
            for job in jobs:
                if job.vectors is None and job.error is None:  # interrupted: no owner may wait forever
                    job.error = RuntimeError("the query was not embedded (the server is stopping).")
                job.done.set()

    def _vectors(self, mode: str, batch: list[_Job]) -> np.ndarray:
        """t2i and cir ``(B, D)``; i2t and i2i ``(B, Q, D)``."""
        from unifashion_core.models.vision import preprocess

        model, texts = self.model, [job.text for job in batch]
        if mode == "t2i":
            return model.embed_texts(texts).numpy()
        pixels = preprocess([job.image for job in batch], model.vision).to(model.device)
        tokens = model.image_tokens(pixels)  # (B, T, C)
        if mode == "cir":
            return model.embed_composed(tokens, texts).numpy()
        return model.embed_images(tokens).numpy()
