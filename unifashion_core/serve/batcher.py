"""Queries that arrive together are embedded together (dynamic batching).

One model serves every request, one forward pass at a time, on one thread of its own. While a
pass runs, more queries arrive; the next pass embeds all of them, one batch per mode, which costs
little more than embedding one (a batch of 8 texts takes about twice the time of 1 on 2 cores).
A query that arrives alone is embedded alone, at once: nothing waits for a batch to fill. Running
the model on one thread (not on whichever request thread comes) also keeps its memory in one
allocator arena, so the server's memory stays flat under load, and lets that thread run torch with
threads of its own: on 2 cores one torch thread, leaving the other core to the HTTP side, answered
8 clients' text searches in 28 ms at the median against 34 ms with torch's two (interleaved runs of
``benchmarks/load_serve.py``); a pass split across both cores waits for the HTTP threads between its
small ops. The encoders are traced graphs
(:mod:`unifashion_core.models.traced`), so a pass does not wait for the GIL that the HTTP threads hold.
"""

import queue
import threading
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from unifashion_core.models.traced import QueryEncoders
from unifashion_core.models.unifashion import UniFashion
from unifashion_core.retrieval.search import Query

MAX_BATCH = 32  # queries per forward pass


@dataclass
class _Job:
    mode: str
    text: str | None
    image: Image.Image | None
    composed: str = "fused"  # cir: fused (one fused vector) or zero-shot (image and text vectors apart)
    done: threading.Event = field(default_factory=threading.Event)
    vectors: np.ndarray | None = None  # t2i, fused cir (1, D); i2t, i2i, zero-shot cir (1, Q, D)
    texts: np.ndarray | None = None  # zero-shot cir: (1, D) of the text
    error: BaseException | None = None

    @property
    def kind(self) -> str:
        """What is embedded: the mode, with composed queries split by score."""
        return "cir-zero-shot" if self.mode == "cir" and self.composed == "zero-shot" else self.mode


class QueryBatcher:
    """Embeds checked queries (see ``retrieval.search.check_query``), batching those that wait.

    Args:
        model: the query model (eval mode).
        model_lock: held around every use of the model (shared with captioning and generation).
        max_batch: the most queries embedded in one pass.
        threads: torch's threads on the model thread (None: torch's default, one per core).
    """

    def __init__(self, model: UniFashion, model_lock: threading.Lock, max_batch: int = MAX_BATCH,
                 threads: int | None = None) -> None:
        self.model_lock = model_lock
        self.max_batch = max_batch
        self.threads = threads
        with model_lock:
            self.encoders = QueryEncoders(model)  # traced: embedding runs without the GIL
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        threading.Thread(target=self._serve, name="unifashion-model", daemon=True).start()

    def embed(self, mode: str, text: str | None, image: Image.Image | None, composed: str = "fused") -> Query:
        """Embed one query; blocks until it (and any queries waiting with it) is embedded.

        ``composed`` (cir only): ``fused`` embeds the image and text together, ``zero-shot`` apart
        (for ``metrics.cir.zero_shot_scores``).

        Raises:
            whatever the model raised for the batch that held this query.
        """
        job = _Job(mode, text, image, composed)
        self._queue.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return Query(mode, job.vectors, job.texts)

    def close(self) -> None:
        """Stop the model thread once the queries already asked are embedded."""
        self._queue.put(None)

    def _serve(self) -> None:
        """The model thread: wait for a query, take the model, embed it with every query waiting by then."""
        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)  # this thread's own (other threads set theirs)
        while (first := self._queue.get()) is not None:
            jobs, closing = [first], False
            with self.model_lock:
                while len(jobs) < self.max_batch and not closing:
                    try:
                        job = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    closing = job is None
                    jobs += [] if closing else [job]
                self._run(jobs)
            if closing:
                return

    def _run(self, jobs: list[_Job]) -> None:
        """Embed ``jobs``, one batch per kind, and wake their owners (errors go to the batch's jobs)."""
        try:
            for kind in dict.fromkeys(job.kind for job in jobs):
                self._embed([job for job in jobs if job.kind == kind])
        finally:
            for job in jobs:
                if job.vectors is None and job.error is None:  # no owner may wait forever
                    job.error = RuntimeError("the query was not embedded.")
                job.done.set()

    def _embed(self, batch: list[_Job]) -> None:
        """Embed a batch of one mode; if it fails, each query alone, so one bad query fails only itself."""
        try:
            vectors, texts = self._vectors(batch[0].kind, batch)
        except Exception as exc:  # noqa: BLE001 - handed to the request that asked
            if len(batch) == 1:
                batch[0].error = exc
                return
            for job in batch:
                self._embed([job])
            return
        for i, job in enumerate(batch):
            job.vectors = vectors[i : i + 1]
            job.texts = None if texts is None else texts[i : i + 1]

    def _vectors(self, kind: str, batch: list[_Job]) -> tuple[np.ndarray, np.ndarray | None]:
        """The query vectors: t2i and fused cir ``(B, D)``; i2t, i2i and zero-shot cir ``(B, Q, D)``;
        and, for zero-shot cir only, the texts' ``(B, D)``."""
        texts, images = [job.text for job in batch], [job.image for job in batch]
        if kind == "t2i":
            return self.encoders.texts(texts), None
        if kind == "cir":
            return self.encoders.composed(images, texts), None
        if kind == "cir-zero-shot":
            return self.encoders.images(images), self.encoders.texts(texts)
        return self.encoders.images(images), None
