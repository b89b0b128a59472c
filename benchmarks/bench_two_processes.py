"""Two bezoar processes computing on one machine: side by side against one after the other.

The two jobs of issue 23's rehearsal, smaller: (A) `bezoar serve` answering N IFEval prompts sent by 8
concurrent HTTP clients, and (B) `bezoar eval ifeval --limit N` (its own process: start-up, model load,
greedy answers, checkers). Each scenario gets a fresh user cache (the converted model linked in), so no
reply comes from a cache; A and B share it, and with it the registry of processes computing
(bezoar/llm/cores.py).

  alone        A, then B, each alone (the obvious alternative: one after the other)
  fighting     A and B at once, each taking every core (BEZOAR_SHARE_CORES=0: bezoar before issue 23)
  passive      the same with OMP_WAIT_POLICY=PASSIVE (idle OpenMP threads sleep instead of spinning)
  sharing      A and B at once, threads = cores // processes computing (the default)

Printed: each job's wall time, the scenario's wall time and its ratio to `alone` (one after the other);
below 1.0, running side by side is the faster way to get both done.

    .venv/bin/python benchmarks/bench_two_processes.py [--prompts 48] [--max-new-tokens 128] [--only NAME ...]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import DATA, emit, peak_rss_mb

BIN = Path(sys.executable).parent
SCENARIOS = {"alone": {}, "fighting": {"BEZOAR_SHARE_CORES": "0"},
             "passive": {"BEZOAR_SHARE_CORES": "0", "OMP_WAIT_POLICY": "PASSIVE"}, "sharing": {}}


def prompts(count: int) -> list[str]:
    rows = (DATA / "eval/ifeval/input_data.jsonl").read_text(encoding="utf-8").splitlines()[:count]
    return [json.loads(row)["prompt"] for row in rows]


def fresh_cache(root: Path, name: str) -> Path:
    from bezoar.llm.weights import models_cache_dir

    cache = root / name
    cache.mkdir(parents=True)
    (cache / "models").symlink_to(models_cache_dir(), target_is_directory=True)  # no second conversion
    return cache


def serve_job(env: dict, texts: list[str], max_new_tokens: int, log: Path, ready: threading.Event,
              go: threading.Event, result: dict) -> None:
    """(A): start `bezoar serve`, say when it answers, then time the answers to `texts` once `go` is set."""
    import httpx

    from servers import free_port, wait_healthy

    port = free_port()
    with open(log, "w") as output:
        server = subprocess.Popen([str(BIN / "bezoar"), "serve", "--port", str(port)], env=env, stdout=output,
                                  stderr=subprocess.STDOUT)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", server, timeout_s=600)
        ready.set()
        go.wait()
        started = time.perf_counter()

        def ask(text: str) -> int:
            body = {"model": "local", "messages": [{"role": "user", "content": text}], "max_tokens": max_new_tokens,
                    "temperature": 0}
            reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=3600)
            return reply.json()["usage"]["completion_tokens"]

        with ThreadPoolExecutor(8) as pool:
            result["tokens"] = sum(pool.map(ask, texts))
        result["wall_s"] = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=60)


def eval_job(env: dict, count: int, max_new_tokens: int, out: Path, result: dict) -> None:
    """(B): `bezoar eval ifeval` in a process of its own, timed from its start to its end."""
    started = time.perf_counter()
    done = subprocess.run([str(BIN / "bezoar"), "eval", "ifeval", "--limit", str(count), "--max-new-tokens",
                           str(max_new_tokens), "--out", str(out)], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"bezoar eval ifeval exited {done.returncode}: {done.stderr[-2000:]}")
    result["wall_s"] = time.perf_counter() - started


def scenario(name: str, root: Path, texts: list[str], max_new_tokens: int) -> dict:
    cache = fresh_cache(root, name)
    env = {**os.environ, "BEZOAR_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1", **SCENARIOS[name]}
    env.pop("OMP_NUM_THREADS", None)
    served, evaluated = {}, {}
    ready, go = threading.Event(), threading.Event()
    server = threading.Thread(target=serve_job, args=(env, texts, max_new_tokens, root / f"{name}.serve.log", ready,
                                                      go, served))
    server.start()
    ready.wait()
    started = time.perf_counter()
    if name == "alone":  # one after the other
        go.set()
        server.join()
        eval_job(env, len(texts), max_new_tokens, root / name / "ifeval", evaluated)
    else:  # side by side
        evaluator = threading.Thread(target=eval_job, args=(env, len(texts), max_new_tokens, root / name / "ifeval",
                                                            evaluated))
        evaluator.start()
        go.set()
        server.join()
        evaluator.join()
    total = time.perf_counter() - started
    if "wall_s" not in served or "wall_s" not in evaluated:
        raise RuntimeError(f"{name}: a job did not finish (see {root}/{name}.serve.log)")
    return {"serve_s": round(served["wall_s"], 1), "eval_s": round(evaluated["wall_s"], 1), "total_s": round(total, 1),
            "serve_tokens": served["tokens"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--only", nargs="*", choices=list(SCENARIOS), help="Scenarios to run (alone is always run).")
    args = parser.parse_args()
    names = ["alone", *[n for n in SCENARIOS if n != "alone" and (not args.only or n in args.only)]]
    texts = prompts(args.prompts)
    root = Path(tempfile.mkdtemp(prefix="bench_two_processes-"))
    figures: dict = {"benchmark": "two_processes", "prompts": len(texts), "max_new_tokens": args.max_new_tokens,
                     "cores": os.cpu_count()}
    try:
        for name in names:
            figures[name] = scenario(name, root, texts, args.max_new_tokens)
            ratio = figures[name]["total_s"] / figures["alone"]["total_s"]
            figures[name]["vs_one_after_the_other"] = round(ratio, 2)
            print(f"{name:9s} serve {figures[name]['serve_s']:7.1f} s, eval {figures[name]['eval_s']:7.1f} s, "
                  f"both done in {figures[name]['total_s']:7.1f} s = {ratio:.2f}x one after the other", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    figures["peak_rss_mb_bench"] = round(peak_rss_mb())
    emit(figures)


if __name__ == "__main__":
    main()
