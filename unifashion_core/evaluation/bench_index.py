"""`unifashion bench index`: what an index design costs at a given catalogue size, on synthetic vectors.

Seeded clustered vectors stand in for a catalogue (each item's Q image vectors, its text vector
and a caption vector scatter around an item centre, items around cluster centres). Each index
kind is built through ``IndexWriter`` in a fresh process (build seconds, peak RSS, size on disk),
then queried in another fresh process: single-query latency (p50/p95, wall and CPU) and batched
throughput for text -> image, composed (with caption vectors), image -> text and a filtered
text -> image search. Queries are noisy copies of a known target item's vectors; every kind's
top-10 is compared with the exact max-sim top-10 (recall@10), computed from the same vectors.

Single queries run with one thread (``--threads``), as a service answers several at once;
batched searches use every core. The machine's load average is recorded before and after, since
figures taken on a shared machine are noisy.
"""

import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unifashion_core.batching import batch_slices
from unifashion_core.errors import UserError
from unifashion_core.evaluation.reports import BenchReport, markdown_table, write_report
from unifashion_core.progress import NullProgress, Progress

K = 10
GROUPS = 10  # items carry a field "group" with 10 values: the filtered search allows 10%
CHUNK = 10_000  # items generated and added per IndexWriter batch
BATCH = 64  # queries per call in the batched measurement
WARMUP = 3
MODES = ("t2i", "composed", "i2t", "t2i_filtered")


@dataclass(frozen=True)
class SyntheticCatalogue:
    """The seeded generator of the bench's vectors.

    Attributes:
        num_items: N.
        num_queries: Q, image vectors per item.
        dim: D.
        num_clusters: cluster centres the items scatter around (default N / 100).
        seed: seed of everything.
        item_noise: spread of item centres around their cluster centre (relative to unit length).
        vector_noise: spread of an item's vectors (Q image, text, caption) around its centre.
        query_noise: spread of a query around the target's vector it copies.
    """

    num_items: int
    num_queries: int = 8
    dim: int = 256
    num_clusters: int = 0
    seed: int = 0
    item_noise: float = 1.0
    vector_noise: float = 0.7
    query_noise: float = 1.0

    def __post_init__(self) -> None:
        if self.num_items < K or self.num_queries < 1 or self.dim < 2:
            raise UserError(f"bench index needs --items >= {K}, --queries >= 1 and --dim >= 2.")

    @property
    def clusters(self) -> int:
        return self.num_clusters or max(1, self.num_items // 100)

    def identity(self) -> str:
        """SHA-256 of the generator's settings: the data identity (the vectors follow from it)."""
        settings = {**asdict(self), "num_clusters": self.clusters, "numpy": np.__version__}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def generate_vectors(catalogue: SyntheticCatalogue, out: Path, progress: Progress = NullProgress()) -> None:
    """Write ``image.npy`` (N, Q, D), ``text.npy`` and ``caption.npy`` (N, D) float16 into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(catalogue.seed)
    n, q, d = catalogue.num_items, catalogue.num_queries, catalogue.dim
    centres = _unit(rng.standard_normal((catalogue.clusters, d), dtype=np.float32))
    cluster = rng.integers(0, catalogue.clusters, n)
    arrays = {name: np.lib.format.open_memmap(out / f"{name}.npy", "w+", np.float16, shape)
              for name, shape in (("image", (n, q, d)), ("text", (n, d)), ("caption", (n, d)))}
    scale = 1 / np.sqrt(d)  # noise of norm ~1 per unit of *_noise
    progress.start("generate", n)
    for rows in batch_slices(n, CHUNK):
        size = rows.stop - rows.start
        spread = catalogue.item_noise * scale * rng.standard_normal((size, d), np.float32)
        base = _unit(centres[cluster[rows]] + spread)  # (n, D) item centres
        noise = catalogue.vector_noise * scale
        arrays["image"][rows] = _unit(base[:, None] + noise * rng.standard_normal((size, q, d), np.float32))
        arrays["text"][rows] = _unit(base + noise * rng.standard_normal((size, d), np.float32))
        arrays["caption"][rows] = _unit(base + noise * rng.standard_normal((size, d), np.float32))
        progress.advance("generate", size)
    for array in arrays.values():
        array.flush()


def make_queries(catalogue: SyntheticCatalogue, vectors: Path, sample: int) -> dict[str, np.ndarray]:
    """Queries with known targets: noisy copies of one of the target's image vectors (text -> image
    and composed) or of all Q of them (image -> text)."""
    rng = np.random.default_rng(catalogue.seed + 1)
    image = np.load(vectors / "image.npy", mmap_mode="r")
    targets = np.sort(rng.choice(catalogue.num_items, size=min(sample, catalogue.num_items), replace=False))
    chosen = np.asarray(image[targets], dtype=np.float32)  # (M, Q, D)
    noise = catalogue.query_noise / np.sqrt(catalogue.dim)

    def noisy(x: np.ndarray) -> np.ndarray:
        return _unit(x + noise * rng.standard_normal(x.shape, np.float32)).astype(np.float32)

    picks = rng.integers(0, catalogue.num_queries, (2, len(targets)))
    rows = np.arange(len(targets))
    return {"targets": targets, "t2i": noisy(chosen[rows, picks[0]]), "composed": noisy(chosen[rows, picks[1]]),
            "i2t": noisy(chosen)}


def bench_index(
    out: str | Path,
    items: int = 100_000,
    num_queries: int = 8,
    dim: int = 256,
    kinds: tuple[str, ...] = ("flat", "pq"),
    sample: int = 200,
    seed: int = 0,
    clusters: int = 0,
    threads: int = 1,
    progress: Progress = NullProgress(),
) -> BenchReport:
    """Build and query each index kind on one synthetic catalogue; write report.json and report.md.

    Args:
        out: the report directory (its ``work/`` subdirectory holds vectors and indexes while the
            bench runs and is removed at the end).
        items, num_queries, dim: N, Q and D of the catalogue.
        kinds: index kinds to build and measure (``flat``, ``pq``).
        sample: queries per mode (single-query latency and recall).
        seed: seed of the vectors and the queries.
        clusters: cluster centres (0: N / 100).
        threads: threads of each single query (batched searches use every core).
        progress: progress events.

    Returns:
        the report: one row per kind with build seconds, disk, peak RSS, latency, throughput and recall.
    """
    from unifashion_core.retrieval.index import check_kind

    for kind in kinds:
        check_kind(kind)
    catalogue = SyntheticCatalogue(items, num_queries, dim, clusters, seed)
    out = Path(out)
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    load_before = os.getloadavg()
    try:
        progress.log(f"generating {items:,} items x {num_queries} x {dim} (seed {seed})")
        generate_vectors(catalogue, work / "vectors", progress)
        queries = make_queries(catalogue, work / "vectors", sample)
        np.savez(work / "queries.npz", **queries)
        rows = []
        for kind in kinds:
            progress.log(f"building {kind} in a fresh process")
            built = _in_fresh_process({"task": "build", "vectors": str(work / "vectors"), "index": str(work / kind),
                                       "kind": kind}, work, threads=0)
            rows.append({"kind": kind, **built})
        progress.log("exact max-sim reference (batched)")
        exact = _exact_reference(work / kinds[0], queries)
        for row in rows:
            progress.log(f"querying {row['kind']} in a fresh process")
            searched = _in_fresh_process({"task": "search", "index": str(work / row["kind"]),
                                          "queries": str(work / "queries.npz"), "threads": threads}, work, threads)
            found = np.load(work / f"found-{row['kind']}.npz")
            row.update(searched, **_recalls(found, exact, queries["targets"]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = _report(catalogue, kinds, sample, threads, rows, exact["seconds_per_query"], load_before)
    return write_report("index", out, report, _markdown(report))


def _in_fresh_process(job: dict[str, Any], work: Path, threads: int) -> dict[str, Any]:
    """Run one build or search job in a new Python process (its own peak RSS); return its result.

    ``threads`` > 0 caps OpenMP and BLAS threads of the process (0: every core).
    """
    job_file = work / f"job-{job['task']}-{Path(job['index']).name}.json"
    result_file = job_file.with_suffix(".result.json")
    job = {**job, "result": str(result_file)}
    job_file.write_text(json.dumps(job))
    env = dict(os.environ)
    if threads > 0:
        env.update({name: str(threads) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
    code = "import sys; from unifashion_core.evaluation.bench_index import run_job; run_job(sys.argv[1])"
    finished = subprocess.run([sys.executable, "-c", code, str(job_file)], env=env, capture_output=True, text=True)
    if finished.returncode != 0:
        raise RuntimeError(f"bench index {job['task']} of {job['index']} failed:\n{finished.stderr[-4000:]}")
    return json.loads(result_file.read_text())


def run_job(job_file: str) -> None:
    """The child side of :func:`_in_fresh_process`: run a job and write its result as JSON."""
    job = json.loads(Path(job_file).read_text())
    result = _build(job) if job["task"] == "build" else _search(job)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result[f"{job['task']}_peak_rss_mb"] = peak_rss_mb()
    result[f"{job['task']}_end_rss_mb"] = _resident_mb()  # anonymous vs file pages (the memory maps' page cache)
    result[f"{job['task']}_cpu_s"] = usage.ru_utime + usage.ru_stime  # all threads: a quiet machine's floor
    Path(job["result"]).write_text(json.dumps(result))


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB: ``VmHWM`` of its own address space (Linux).

    Not ``ru_maxrss``: Linux carries that across ``exec``, so a process started by a parent holding
    gigabytes (the bench's, after the exact reference) reported the parent's size (5.7 GB at 1M
    items for a search that peaked under 1 GB). ``ru_maxrss`` where ``/proc`` is missing.
    """
    peak = _status_mb("VmHWM").get("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB


def _resident_mb() -> dict[str, float]:
    """This process's resident memory now, by kind (``RssAnon``, ``RssFile``), in MiB."""
    return _status_mb("RssAnon", "RssFile")


def _status_mb(*names: str) -> dict[str, float]:
    """The named kB fields of ``/proc/self/status`` in MiB (none off Linux)."""
    status = Path("/proc/self/status")
    if not status.is_file():
        return {}
    fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
    return {name: int(fields[name].split()[0]) / 1024 for name in names if name in fields}


def _build(job: dict[str, Any]) -> dict[str, Any]:
    """Add the vectors through IndexWriter in CHUNK-item batches, then finalize; time both."""
    from unifashion_core.retrieval.index import IndexWriter
    from unifashion_core.retrieval.payload import ItemRecord

    vectors = {name: np.load(Path(job["vectors"]) / f"{name}.npy", mmap_mode="r")
               for name in ("image", "text", "caption")}
    started = time.perf_counter()
    writer = IndexWriter(job["index"], {"fingerprint": "synthetic", "data": job["vectors"]})
    for rows in batch_slices(len(vectors["image"]), CHUNK):
        ids = [f"item{i:08d}" for i in range(rows.start, rows.stop)]
        records = [ItemRecord(item_id, fields={"group": str(i % GROUPS)})
                   for i, item_id in enumerate(ids, rows.start)]
        writer.add(ids, vectors["image"][rows], vectors["text"][rows], vectors["caption"][rows], [""] * len(ids),
                   records)
    added = time.perf_counter()
    index = writer.finalize(job["kind"])
    finished = time.perf_counter()
    files = {p.name: p.stat().st_size for p in Path(job["index"]).iterdir() if p.is_file()}
    return {"build_s": finished - started, "add_s": added - started, "finalize_s": finished - added,
            "disk_mb": sum(files.values()) / 2**20, "files_mb": {n: s / 2**20 for n, s in sorted(files.items())},
            "ann": index.meta["ann"]}


def _search(job: dict[str, Any]) -> dict[str, Any]:
    """Single-query latency and batched throughput of each mode; the rows found go to found-KIND.npz."""
    import faiss

    from unifashion_core.retrieval.index import RetrievalIndex

    loaded = time.perf_counter()
    index = RetrievalIndex.load(job["index"])
    load_s = time.perf_counter() - loaded
    queries = np.load(job["queries"])
    calls = {"t2i": (index.search_images, queries["t2i"], None),
             "composed": (index.search_composed, queries["composed"], None),
             "i2t": (index.search_texts, queries["i2t"], None),
             "t2i_filtered": (index.search_images, queries["t2i"], {"group": "3"})}
    result: dict[str, Any] = {"load_s": load_s}
    found = {}
    for mode, (search, batch, condition) in calls.items():
        for warm in range(WARMUP):
            search(batch[warm:warm + 1], K, filter=condition)
        wall, cpu, rows = [], [], []
        for query in range(len(batch)):
            started, started_cpu = time.perf_counter(), time.process_time()
            rows.append(search(batch[query:query + 1], K, filter=condition)[1][0])
            wall.append(time.perf_counter() - started)
            cpu.append(time.process_time() - started_cpu)
        found[mode] = np.stack(rows)
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        started = time.perf_counter()
        for block in batch_slices(len(batch), BATCH):
            search(batch[block], K, filter=condition)
        batched_s = time.perf_counter() - started
        faiss.omp_set_num_threads(job["threads"])
        result[mode] = {"p50_ms": 1000 * float(np.percentile(wall, 50)),
                        "p95_ms": 1000 * float(np.percentile(wall, 95)),
                        "cpu_p50_ms": 1000 * float(np.percentile(cpu, 50)), "batched_qps": len(batch) / batched_s}
    np.savez(Path(job["index"]).parent / f"found-{Path(job['index']).name}.npz", **found)
    return result


def _exact_reference(index_dir: Path, queries: dict[str, np.ndarray]) -> dict[str, Any]:
    """The exact top-10 of every mode (batched, blocked), and its seconds per query."""
    from unifashion_core.retrieval.index import RetrievalIndex

    exact = RetrievalIndex.load(index_dir).as_exact()
    started = time.perf_counter()
    reference = {"t2i": exact.search_images(queries["t2i"], K)[1],
                 "composed": exact.search_composed(queries["composed"], K)[1],
                 "i2t": exact.search_texts(queries["i2t"], K)[1],
                 "t2i_filtered": exact.search_images(queries["t2i"], K, filter={"group": "3"})[1]}
    seconds = (time.perf_counter() - started) / (len(MODES) * len(queries["targets"]))
    return {**reference, "seconds_per_query": seconds}


def _recalls(found: Any, exact: dict[str, Any], targets: np.ndarray) -> dict[str, Any]:
    """recall@10 against the exact top-10, and how often the known target is in the top 10."""
    out = {}
    for mode in MODES:
        overlap = [len(set(a) & set(b)) / K for a, b in zip(found[mode], exact[mode], strict=True)]
        out[mode] = {"recall@10": float(np.mean(overlap))}
        if mode != "t2i_filtered":
            out[mode]["target@10"] = float(np.mean([t in row for t, row in zip(targets, found[mode], strict=True)]))
    return {"recall": out}


def _report(catalogue: SyntheticCatalogue, kinds: tuple[str, ...], sample: int, threads: int,
            rows: list[dict[str, Any]], exact_seconds: float, load_before: tuple[float, ...]) -> dict[str, Any]:
    """report.json: provenance, machine, settings and one row per kind."""
    import faiss

    for row in rows:
        for mode in MODES:
            row[mode].update(row["recall"][mode])
        del row["recall"]
    return {
        "bench": "index", "protocol": "synthetic clustered vectors, queries with known targets, recall@10 vs exact",
        "split": None, "seed": catalogue.seed, "manifest_sha256": catalogue.identity(), "checkpoint_fingerprint": None,
        "num_queries": sample, "catalogue": {**asdict(catalogue), "num_clusters": catalogue.clusters},
        "kinds": list(kinds), "k": K, "single_query_threads": threads, "batch": BATCH,
        "filter": {"group": "3", "fraction": 1 / GROUPS},
        "exact_reference_ms_per_query_batched": 1000 * exact_seconds,
        "machine": {"cpus": os.cpu_count(), "load_average_before": list(load_before),
                    "load_average_after": list(os.getloadavg()), "python": platform.python_version(),
                    "numpy": np.__version__, "faiss": faiss.__version__},
        "rows": rows,
    }


def _anon_file(resident: dict[str, float]) -> str:
    """``anon / file`` GB of a process's resident memory (file: pages of its memory maps), or n/a."""
    if "RssAnon" not in resident:
        return "n/a"
    return f"{resident['RssAnon'] / 1024:.2f} / {resident.get('RssFile', 0.0) / 1024:.2f}"


def _markdown(report: dict[str, Any]) -> str:
    """The issue's table (p50 and recall@10 per mode), then p95, CPU time and batched throughput."""
    catalogue, machine = report["catalogue"], report["machine"]
    main, detail = [], []
    for row in report["rows"]:
        first = {"items": f"{catalogue['num_items']:,}", "kind": row["kind"]}
        main.append({**first, "build s (cpu s)": f"{row['build_s']:.0f} ({row['build_cpu_s']:.0f})",
                     "disk GB": f"{row['disk_mb'] / 1024:.2f}",
                     "peak RSS build / search GB": f"{row['build_peak_rss_mb'] / 1024:.2f} / "
                                                   f"{row['search_peak_rss_mb'] / 1024:.2f}",
                     "search RSS at end, anon / file GB": _anon_file(row.get("search_end_rss_mb", {})),
                     **{f"{mode} p50 ms": f"{row[mode]['p50_ms']:.1f}" for mode in MODES},
                     "recall@10 (t2i / composed / i2t / filtered)": " / ".join(
                         f"{row[mode]['recall@10']:.3f}" for mode in MODES)})
        detail.append({**first, **{f"{mode} p95 ms, cpu p50 ms, batched q/s":
                                   f"{row[mode]['p95_ms']:.1f} / {row[mode]['cpu_p50_ms']:.1f} / "
                                   f"{row[mode]['batched_qps']:.0f}" for mode in MODES}})
    header = (f"# bench index: {catalogue['num_items']:,} items, Q = {catalogue['num_queries']}, "
              f"D = {catalogue['dim']}\n\n"
              f"- protocol: `{report['protocol']}`\n- seed: `{report['seed']}`\n"
              f"- data (generator settings) sha256: `{report['manifest_sha256']}`\n"
              f"- queries per mode: `{report['num_queries']}`, k = {report['k']}, single queries on "
              f"{report['single_query_threads']} thread(s), batches of {report['batch']}\n"
              f"- filtered: `group = 3` ({report['filter']['fraction']:.0%} of the items)\n"
              f"- exact reference (batched): {report['exact_reference_ms_per_query_batched']:.1f} ms per query\n"
              f"- load average before / after: {machine['load_average_before'][0]:.1f} / "
              f"{machine['load_average_after'][0]:.1f} on {machine['cpus']} cores\n\n")
    return header + markdown_table(main, list(main[0])) + "\n" + markdown_table(detail, list(detail[0]))
