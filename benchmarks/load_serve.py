"""Bounded load test of `unifashion serve` on loopback, next to the cold `unifashion search` CLI.

Starts the server on a free 127.0.0.1 port over an index (default: the workspace's latest, e.g. the
demo's), then for each query kind sends a fixed number of requests from N concurrent keep-alive
clients, stopping early at a time limit. Prints and writes (``--out``)
p50/p95 latency, requests/s and errors per kind, the server's RSS at start and end, and the cold
CLI latency of the same text query measured in the same run (the baseline the HTTP figures are
compared with). Kinds: ``text`` (the dataset's captions, one distinct caption per request),
``short`` (shoppers' short queries such as "blue dress please", built as ``unifashion bench
queries`` builds them, when the dataset has attributes for them), ``image`` (i2i) and ``composed``.
Run from the repository root::

    UNIFASHION_HOME=/tmp/serve-demo python benchmarks/load_serve.py --clients 8 --requests 400

Figures taken on a shared machine are noisy; the load average at start and end is recorded.
"""

import argparse
import http.client
import json
import os
import secrets
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODIFICATIONS = ("in blue", "with long sleeves", "in red and striped", "without a pattern", "in black")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=Path, help="index directory (default: the workspace's latest)")
    parser.add_argument("--data", type=Path, help="prepared dataset for query texts and images (default: the index's)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=400, help="requests per query kind")
    parser.add_argument("--max-seconds", type=float, default=90.0, help="time limit per query kind")
    parser.add_argument("--cli-runs", type=int, default=3, help="cold `unifashion search` runs")
    parser.add_argument("--k", type=int, default=10, help="results per query")
    parser.add_argument("--threads", type=int, help="the server's --threads (default: its own, cores - 1)")
    parser.add_argument("--kinds", default="text,short,image,composed", help="query kinds to run, comma-separated")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    return parser.parse_args()


def resolve_index(given: Path | None) -> Path:
    if given is not None:
        return given.absolute()
    state = Path(os.environ.get("UNIFASHION_HOME", "unifashion-work")) / "state.json"
    if not state.is_file():
        sys.exit(f"no --index and no workspace state at {state}; run `unifashion demo --quick` first")
    return Path(json.loads(state.read_text())["index"])


def queries(index: Path, data: Path | None) -> tuple[list[str], list[bytes]]:
    """Distinct query texts (the dataset's captions) and query images (its image files' bytes)."""
    meta = json.loads((index / "meta.json").read_text())
    root = data or Path(meta["data"])
    records = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines() if line.strip()]
    texts = sorted({r["caption"] for r in records if r.get("caption")})
    images = [(root / r["image"]).read_bytes() for r in records[:64]]
    return texts, images


def short_texts(index: Path, data: Path | None) -> list[str]:
    """Shoppers' short queries ("blue dress please"), built as `unifashion bench queries` builds them
    from the gallery split's attributes; empty when the dataset has no default query shapes."""
    from unifashion_core.data.manifest import load_dataset
    from unifashion_core.evaluation.bench_queries import DEFAULT_SHAPES, parse_shapes, short_queries

    meta = json.loads((index / "meta.json").read_text())
    dataset = load_dataset(data or Path(meta["data"]))
    name = dataset.report.get("dataset", "")
    if name not in DEFAULT_SHAPES:
        return []
    items = dataset.split(meta.get("split") or "test")
    return [query.text for query in short_queries(items, parse_shapes(DEFAULT_SHAPES[name], items), 200, seed=0)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """Resident set size of a process (Linux /proc), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def start_server(index: Path, port: int, threads: int | None) -> subprocess.Popen:
    command = [sys.executable, "-m", "unifashion_cli.main", "serve", "--index", str(index), "--port", str(port),
               "--read-only", "--no-generate", "--log-level", "warning"]
    command += ["--threads", str(threads)] if threads else []
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"the server exited: {server.stderr.read()}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/healthz")
            if connection.getresponse().status == 200:
                return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    sys.exit("the server did not start within 300 s")


def multipart(fields: dict[str, str], image: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body with text fields and the file field ``image``."""
    boundary = secrets.token_hex(16)
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="q.png"\r\n'
                 "Content-Type: image/png\r\n\r\n".encode() + image + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def bodies(kind: str, texts: list[str], images: list[bytes], k: int, count: int) -> list[tuple[bytes, str]]:
    """``count`` request bodies of one kind, cycling through the queries (built before the clock starts)."""
    made = []
    for i in range(count):
        if kind in ("text", "short"):
            made.append((json.dumps({"text": texts[i % len(texts)], "k": k}).encode(), "application/json"))
        elif kind == "image":
            made.append(multipart({"k": str(k), "mode": "i2i"}, images[i % len(images)]))
        else:
            made.append(multipart({"k": str(k), "text": MODIFICATIONS[i % len(MODIFICATIONS)]},
                                  images[i % len(images)]))
    return made


def run_kind(port: int, work: list[tuple[bytes, str]], clients: int, max_seconds: float, server: int) -> dict:
    """Send ``work`` from ``clients`` keep-alive connections; latencies of the completed requests, and
    the CPU time the server (process ``server``) and these clients spent per request."""
    latencies: list[float] = []
    errors: list[str] = []
    lock, position = threading.Lock(), iter(range(len(work)))
    deadline = time.monotonic() + max_seconds

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.monotonic() < deadline:
            with lock:
                index = next(position, None)
            if index is None:
                return
            body, content_type = work[index]
            started = time.perf_counter()
            try:
                connection.request("POST", "/search", body=body, headers={"Content-Type": content_type})
                response = connection.getresponse()
                payload = response.read()
                ok = response.status == 200 and json.loads(payload)["results"]
            except (OSError, ValueError, http.client.HTTPException) as exc:
                ok, payload = False, str(exc).encode()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            elapsed = time.perf_counter() - started
            with lock:
                (latencies.append(elapsed) if ok else errors.append(payload[:200].decode(errors="replace")))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    cpu_before = (cpu_seconds(server), sum(os.times()[:2]))
    started, started_at = time.perf_counter(), time.time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    server_cpu, client_cpu = cpu_seconds(server) - cpu_before[0], sum(os.times()[:2]) - cpu_before[1]
    ordered = sorted(latencies)
    done = max(1, len(latencies) + len(errors))
    return {"requests": len(latencies) + len(errors), "errors": len(errors), "error_samples": errors[:3],
            "p50_ms": 1000 * statistics.median(ordered) if ordered else None,
            "p95_ms": 1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else None,
            "requests_per_s": len(latencies) / wall, "seconds": wall, "started_at": started_at,
            "server_cpu_ms_per_request": 1000 * server_cpu / done,
            "client_cpu_ms_per_request": 1000 * client_cpu / done}


def cold_cli(index: Path, text: str, runs: int) -> list[float]:
    """Wall time of `unifashion search --text ...` as fresh processes (import, load, search, print)."""
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "unifashion_cli.main", "search", "--text", text, "--index", str(index),
                        "--json", "-q"], cwd=ROOT, check=True, capture_output=True)
        seconds.append(time.perf_counter() - started)
    return seconds


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    args = parse_args()
    index = resolve_index(args.index)
    texts, images = queries(index, args.data)
    kinds = {"text": texts, "short": short_texts(index, args.data), "image": texts, "composed": texts}
    wanted = args.kinds.split(",")
    if unknown := set(wanted) - set(kinds):
        sys.exit(f"unknown --kinds {', '.join(sorted(unknown))}; choose from {', '.join(kinds)}")
    kinds = {kind: query_texts for kind, query_texts in kinds.items() if query_texts and kind in wanted}
    report = {"index": str(index), "clients": args.clients, "requests_per_kind": args.requests,
              "max_seconds_per_kind": args.max_seconds, "k": args.k, "threads": args.threads, "cpus": os.cpu_count(),
              "load_average_start": os.getloadavg()[0]}
    port = free_port()
    server = start_server(index, port, args.threads)
    try:
        warm = {kind: bodies(kind, query_texts, images, args.k, 2 * args.clients)
                for kind, query_texts in kinds.items()}
        for work in warm.values():
            run_kind(port, work, args.clients, args.max_seconds, server.pid)  # warm-up, not measured
        report["server_rss_mib_start"] = rss_kib(server.pid) / 1024
        for kind, query_texts in kinds.items():
            work = bodies(kind, query_texts, images, args.k, args.requests)
            report[kind] = run_kind(port, work, args.clients, args.max_seconds, server.pid)
        report["server_rss_mib_end"] = rss_kib(server.pid) / 1024
    finally:
        server.terminate()
        server.wait(timeout=60)
    report["rss_growth_percent"] = 100 * (report["server_rss_mib_end"] / report["server_rss_mib_start"] - 1)
    cli = cold_cli(index, texts[0], args.cli_runs)
    report["cli_cold_seconds"] = cli
    report["cli_cold_median_ms"] = 1000 * statistics.median(cli)
    textual = next((kind for kind in ("text", "short") if kind in report), None)  # the CLI runs a text query
    report["cli_baseline_kind"] = textual
    report["p50_speedup_vs_cli"] = report["cli_cold_median_ms"] / report[textual]["p50_ms"] if textual else None
    report["load_average_end"] = os.getloadavg()[0]
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)


def print_report(report: dict) -> None:
    print(f"index {report['index']}; {report['clients']} clients, up to {report['requests_per_kind']} requests "
          f"or {report['max_seconds_per_kind']:.0f} s per kind; server --threads {report['threads'] or 'default'}; "
          f"{report['cpus']} CPUs, load average "
          f"{report['load_average_start']:.1f} -> {report['load_average_end']:.1f}")
    print(f"{'kind':<10}{'requests':>9}{'errors':>8}{'p50 ms':>9}{'p95 ms':>9}{'req/s':>8}"
          f"{'server CPU ms/req':>19}{'client CPU ms/req':>19}")
    for kind in ("text", "short", "image", "composed"):
        if kind not in report:
            continue
        row = report[kind]
        print(f"{kind:<10}{row['requests']:>9}{row['errors']:>8}{row['p50_ms']:>9.1f}{row['p95_ms']:>9.1f}"
              f"{row['requests_per_s']:>8.1f}{row['server_cpu_ms_per_request']:>19.1f}"
              f"{row['client_cpu_ms_per_request']:>19.1f}")
    print(f"server RSS {report['server_rss_mib_start']:.0f} MiB -> {report['server_rss_mib_end']:.0f} MiB "
          f"({report['rss_growth_percent']:+.1f} %)")
    faster = (f"; HTTP {report['cli_baseline_kind']} p50 is {report['p50_speedup_vs_cli']:.0f}x faster"
              if report["p50_speedup_vs_cli"] else "")
    print(f"cold `unifashion search --text` CLI: median {report['cli_cold_median_ms']:.0f} ms over "
          f"{len(report['cli_cold_seconds'])} runs{faster}")


if __name__ == "__main__":
    main()
