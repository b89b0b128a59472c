"""Two training processes against one, on this CPU: same global batch, same loss curve?

LoRA SFT of the embedded SmolLM2-135M on real Dolly answers, fp32, started the way a user starts it:
`bezoar sft` (one process, micro-batch B) against `bezoar sft --num-processes 2` (accelerate launch,
DDP over gloo, micro-batch B/2 per rank, so the same global batch and the same examples per step).
Both train the same number of optimizer steps; printed: the loss of every step side by side, the
largest difference, the largest adapter-weight difference, tokens/s of training (real tokens,
train_runtime_s from the summaries, i.e. without process start and model load) and each run's peak
RSS (the whole process tree, sampled: for two processes the launcher and both ranks).

On an idle 2-core machine two processes cannot be much faster than one: each rank gets one core,
and the gradient all-reduce is added. What this shows is that the launch is correct (same curve) and
what it costs; on N GPUs the same launch divides the step time by about N. On a loaded machine the
one-process run (2 OpenMP threads) can be far slower than two 1-thread ranks: its threads wait for
each other whenever another job holds a core (measured at load average 13: x27). The load average
is printed with the figures for that reason.

    .venv/bin/python benchmarks/bench_ddp.py [--steps 6] [--batch 4]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import DATA, REPO, emit  # also puts tests/ on sys.path

from test_train_sft import dolly_records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4, help="global batch (examples per optimizer step)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_ddp-"))
    try:
        figures = bench(root, args.steps, args.batch)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    emit(figures)


def bench(root: Path, steps: int, batch: int) -> dict:
    from bezoar.records import write_jsonl

    data = root / "dolly.jsonl"
    write_jsonl(data, dolly_records(DATA, steps * batch))  # one epoch: every example seen once
    settings = dict(dtype="float32", max_steps=steps, gradient_accumulation_steps=1, warmup_steps=0,
                    learning_rate=1e-3, eval_steps=steps, logging_steps=1, max_length=128, validation_fraction=0.0)
    runs = {}
    for processes in (1, 2):
        recipe = root / f"recipe-{processes}.yaml"
        recipe.write_text(yaml.safe_dump({"sft": {**settings, "per_device_train_batch_size": batch // processes}}))
        out = root / f"out-{processes}"
        runs[processes] = train(data, recipe, out, processes)
        print(f"{processes} process(es): {runs[processes]['tokens_per_s']:.1f} tok/s, "
              f"peak RSS {runs[processes]['peak_rss_mb']} MB, wall {runs[processes]['wall_s']:.0f} s", flush=True)
    one, two = runs[1]["losses"], runs[2]["losses"]
    print("step  loss(1 process)  loss(2 processes)")
    for step in sorted(one):
        print(f"{step:4d}  {one[step]:.6f}        {two.get(step, float('nan')):.6f}")
    figures = {"processes": 2, "steps": steps, "global_batch": batch,
               "max_abs_loss_diff": max(abs(one[s] - two[s]) for s in one),
               "max_abs_adapter_diff": adapter_diff(root / "out-1", root / "out-2"),
               "tokens_per_s_1": round(runs[1]["tokens_per_s"], 1), "tokens_per_s_2": round(runs[2]["tokens_per_s"], 1),
               "speed_ratio_2_over_1": round(runs[2]["tokens_per_s"] / runs[1]["tokens_per_s"], 3),
               "peak_rss_mb_1": runs[1]["peak_rss_mb"], "peak_rss_mb_2": runs[2]["peak_rss_mb"],
               "wall_s_1": round(runs[1]["wall_s"], 1), "wall_s_2": round(runs[2]["wall_s"], 1),
               "load_average": round(os.getloadavg()[0], 2)}
    print(f"2 processes / 1 process: speed x{figures['speed_ratio_2_over_1']}, peak RSS "
          f"x{runs[2]['peak_rss_mb'] / runs[1]['peak_rss_mb']:.2f}", flush=True)
    return figures


def train(data: Path, recipe: Path, out: Path, processes: int) -> dict:
    command = [str(Path(sys.executable).parent / "bezoar"), "sft", "--data", str(data), "--out", str(out),
               "--recipe", str(recipe), "--num-processes", str(processes)]
    started = time.perf_counter()
    log = out.with_suffix(".log")
    with log.open("w") as sink:
        process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=sink,
                                   stderr=subprocess.STDOUT)
        peak = tree_peak_rss_mb(process)
    if process.wait(timeout=3600) != 0:
        raise SystemExit(log.read_text()[-3000:])
    wall = time.perf_counter() - started
    summary = json.loads((out / "summary.json").read_text())
    losses = {row["step"]: row["loss"] for row in map(json.loads, (out / "metrics.jsonl").open()) if "loss" in row}
    return {"losses": losses, "wall_s": wall, "peak_rss_mb": peak, "train_runtime_s": summary["train_runtime_s"],
            "tokens_per_s": summary["data"]["train_tokens"] / summary["train_runtime_s"]}


def tree_peak_rss_mb(process: subprocess.Popen) -> int:
    """Highest sum of RSS over the command and all its descendants (ranks included), sampled every 0.2 s."""
    import psutil

    root, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        total = 0
        for member in [root, *root.children(recursive=True)]:
            try:
                total += member.memory_info().rss
            except psutil.Error:
                continue
        peak = max(peak, total)
        time.sleep(0.2)
    return round(peak / 2**20)


def adapter_diff(one: Path, two: Path) -> float:
    from safetensors.torch import load_file

    a, b = load_file(one / "adapter_model.safetensors"), load_file(two / "adapter_model.safetensors")
    return max((a[k] - b[k]).abs().max().item() for k in a)


if __name__ == "__main__":
    main()
