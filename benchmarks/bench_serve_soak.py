"""Soak `bezoar serve`: 32 concurrent clients posting chat requests back to back for a few minutes.

Against the obvious alternative, one client at a time on the same server, for throughput. Figures:
requests, errors (must be 0), completion tokens per second, the server's RSS after warm-up, at the
end and at its peak (sampled every 2 s; flat memory means no leak per request), the largest batch.

    .venv/bin/python benchmarks/bench_serve_soak.py [--clients 32] [--seconds 180] [--max-tokens 32]
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import httpx

from common import emit, mixed_prompts, peak_rss_mb  # noqa: E402  (common puts tests/ on the path)
from servers import free_port, running  # noqa: E402
from test_serve_abuse import rss_mb, soak  # noqa: E402


def sample_rss(pid: int, stop: threading.Event, samples: list[float]) -> None:
    while not stop.wait(2.0):
        samples.append(rss_mb(pid))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--sequential-seconds", type=float, default=30)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    prompts = [m[0]["content"] for m in mixed_prompts(256)]
    port = free_port()
    command = [str(Path(sys.executable).parent / "bezoar"), "serve", "--port", str(port),
               "--batch-size", str(args.clients)]
    with running(command, f"http://127.0.0.1:{port}/health") as process:
        url = f"http://127.0.0.1:{port}"
        soak(url, args.clients, 10, args.max_tokens, prompts)  # warm-up: KV caches, allocator pools
        start_rss, samples, stop = rss_mb(process.pid), [], threading.Event()
        sampler = threading.Thread(target=sample_rss, args=(process.pid, stop, samples), daemon=True)
        sampler.start()
        started = time.perf_counter()
        concurrent = soak(url, args.clients, args.seconds, args.max_tokens, prompts)
        concurrent_s = time.perf_counter() - started
        stop.set()
        end_rss = rss_mb(process.pid)
        started = time.perf_counter()
        sequential = soak(url, 1, args.sequential_seconds, args.max_tokens, prompts)
        sequential_s = time.perf_counter() - started
        health = httpx.get(f"{url}/health", timeout=10).json()
    tok_s = concurrent.get("completion_tokens", 0) / concurrent_s
    seq_tok_s = sequential.get("completion_tokens", 0) / sequential_s
    print(f"{args.clients} clients for {concurrent_s:.0f} s: {concurrent.get('requests', 0)} requests, "
          f"{concurrent['errors']} errors, {tok_s:.1f} completion tok/s")
    print(f"1 client for {sequential_s:.0f} s: {sequential.get('requests', 0)} requests, {seq_tok_s:.1f} tok/s "
          f"-> concurrent/sequential throughput {tok_s / max(seq_tok_s, 1e-9):.2f}x")
    print(f"server RSS: {start_rss:.0f} MB after warm-up, {end_rss:.0f} MB at the end, "
          f"peak {max(samples + [end_rss]):.0f} MB; largest batch {health['largest_batch']}")
    if concurrent["errors"]:
        print(f"first error: {concurrent['first_error']}")
    emit({"bench": "serve_soak", "clients": args.clients, "seconds": round(concurrent_s, 1),
          "requests": concurrent.get("requests", 0), "errors": concurrent["errors"] + sequential["errors"],
          "completion_tok_s": round(tok_s, 2), "sequential_tok_s": round(seq_tok_s, 2),
          "throughput_ratio": round(tok_s / max(seq_tok_s, 1e-9), 2),
          "server_rss_start_mb": round(start_rss), "server_rss_end_mb": round(end_rss),
          "server_rss_peak_mb": round(max(samples + [end_rss])), "largest_batch": health["largest_batch"],
          "client_peak_rss_mb": round(peak_rss_mb())})
    sys.exit(1 if concurrent["errors"] or sequential["errors"] else 0)


if __name__ == "__main__":
    main()
