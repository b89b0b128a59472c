"""Kill `bezoar run` anywhere, resume, and get what the decoding mode promises.

A smoke-sized copy of recipes/tiny.yaml (3 records per method, 2 optimizer steps per training run, one
MT-Bench question; tests/chaos.py SMOKE) runs once uninterrupted, with its own cache: the reference.
Then it runs again in a fresh run directory with a fresh cache, and the whole process group gets
SIGKILL at --kills random moments drawn over the reference's timeline (at least one inside every
stage); the same command is started again after each kill, until it completes.

- deterministic mode (`run.deterministic: true`): compared with the reference: record ids, training
  steps and validation losses, evaluation outputs and call-cache keys, torn or duplicated JSONL lines,
  model calls: identical.
- fast mode (the default): the recipe runs once more from a copy of the killed run's call cache alone (the
  replay): it must make no call and write the same records, training steps and evaluation outputs, and the
  killed run must have lost no record, duplicated none and completed no call twice.
The obvious alternative, a run never killed, is the reference itself: the ratio printed is the chaos
run's wall time over the reference's.

    .venv/bin/python benchmarks/bench_chaos.py [--mode both|deterministic|fast] [--kills 20] [--seed 0] [--keep DIR]

Per mode ~4 min for the reference and ~10-15 min for the killed run on an idle 2-core machine (fast mode
~3 min more for the replay).
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import DATA, emit, peak_rss_mb  # also puts tests/ on sys.path

from chaos import (BEZOAR, SMOKE, cache_rows, compare, compare_fast, manifest, mode_env, random_plan, replay,
                   run_with_kills, smoke_recipe, timed_run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("both", "deterministic", "fast"), default="both")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="work here and keep the run directories (default: a temp dir)")
    parser.add_argument("--reference", type=Path, help="a finished uninterrupted run of the same smoke recipe "
                        "(e.g. the test fixture's runs/reference) instead of making one: its manifest's times "
                        "give the timeline")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_chaos-"))
    modes = ("deterministic", "fast") if args.mode == "both" else (args.mode,)
    figures: dict = {"benchmark": "chaos"}
    try:
        for mode in modes:
            print(f"--- {mode} mode", flush=True)
            (root / mode).mkdir(parents=True, exist_ok=True)
            figures[mode] = bench(root / mode, args.kills, random.Random(args.seed), args.reference,
                                  deterministic=mode == "deterministic")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    figures["peak_rss_mb_bench"] = round(peak_rss_mb())
    emit(figures)
    sys.exit(0 if all(figures[m]["promise_kept"] for m in modes) else 1)


def bench(root: Path, kills: int, rng: random.Random, made: Path | None, deterministic: bool) -> dict:
    os.environ.setdefault("BEZOAR_DATA", str(DATA))  # defaults not in the recipe (e.g. eval.ifeval) read it
    env = mode_env(deterministic)
    smoke_recipe(root / "reference.yaml", "reference", DATA, deterministic)
    smoke_recipe(root / "chaos.yaml", "chaos", DATA, deterministic)
    reference, chaos_dir = root / "runs" / "reference", root / "runs" / "chaos"
    if made:
        shutil.copytree(made, reference)
        reference_s, starts = timeline(reference)
    else:
        reference_s, starts = timed_run([BEZOAR, "run", "reference.yaml"], root, reference, timeout_s=3600, env=env)
    print(f"reference: {reference_s:.0f} s, stages started at " + ", ".join(f"{s} {t:.0f} s" for s, t in starts.items()),
          flush=True)
    plan = random_plan(starts, reference_s, kills, rng)
    print("kill plan: " + ", ".join(f"{k.stage}+{k.after_s:.1f}s" for k in plan), flush=True)
    started, count = time.time(), iter(range(1, 10_000))

    def show(attempt) -> None:
        landed = f"killed in {attempt.stage_at_kill}" if attempt.killed else f"ran to the end (exit {attempt.returncode})"
        print(f"attempt {next(count):2d}: aimed at {attempt.target:8s} {landed:24s} after {attempt.seconds:6.1f} s, "
              f"{attempt.calls_completed} calls completed", flush=True)

    chaos = run_with_kills([BEZOAR, "run", "chaos.yaml"], root, chaos_dir, plan, timeout_s=4 * 3600, on_attempt=show,
                           env=env)
    chaos_s = time.time() - started
    reference_calls = len(cache_rows(reference))
    if deterministic:
        result = compare(reference, chaos_dir, chaos, reference_calls)
        result["promise_kept"] = result["identical"]
    else:
        replayed = replay(root, chaos_dir, DATA, timeout_s=3600)
        result = compare_fast(chaos_dir, replayed, chaos, per_method=SMOKE[("generate", "orca", "n")])
        result["promise_kept"] = result["kept_from_cache"]
    for stage, runs in result["training"].items():
        print(f"{stage}: " + "; ".join(f"{r['output']} step {r['global_step']} eval_loss {r['eval_loss']}" for r in runs))
    for failure in result["failures"]:
        print("DIFFERS:", failure, flush=True)
    reported = sum(v.get("usage", {}).get(role, {}).get("calls", 0)
                   for v in manifest(reference)["steps"].values() for role in ("teacher", "judge", "student"))
    print(f"chaos run {chaos_s:.0f} s vs reference {reference_s:.0f} s: {chaos_s / reference_s:.2f}x; "
          f"calls: reference {reference_calls} (manifest: {reported}), chaos {result['calls']}", flush=True)
    del result["training"]
    return {**result, "planned_kills": len(kills_list := [k.stage for k in plan]),
            "planned_stages": sorted(set(kills_list), key=kills_list.index), "reference_s": round(reference_s, 1),
            "chaos_s": round(chaos_s, 1), "slowdown": round(chaos_s / reference_s, 2),
            "peak_rss_mb_stages": max((v.get("peak_rss_mb", 0) for v in manifest(chaos_dir)["steps"].values()),
                                      default=0)}


def timeline(run_dir: Path) -> tuple[float, dict[str, float]]:
    """(seconds, stage starts) of a finished run, from its manifest (to the second)."""
    from datetime import datetime

    stages = manifest(run_dir)["steps"]
    started = {s: datetime.fromisoformat(v["started"]).timestamp() for s, v in stages.items() if v.get("started")}
    first = min(started.values())
    last = max(datetime.fromisoformat(v["ended"]).timestamp() for v in stages.values() if v.get("ended"))
    return last - first + 1, {s: t - first for s, t in sorted(started.items(), key=lambda item: item[1])}


if __name__ == "__main__":
    main()
