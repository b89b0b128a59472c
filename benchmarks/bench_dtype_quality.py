"""Does fast mode (bf16 decoding) change what the evaluations say? The base model (the embedded
SmolLM2-135M) is evaluated twice on the same items, in deterministic mode (fp32) and in fast mode (the
dtype `auto` picks here: bf16 on CPUs with native bf16), and each metric's paired difference (fast minus
deterministic) is printed with its 95% interval:

- IFEval, all 541 prompts (greedy, 512 new tokens): the four accuracies; instruction-level intervals
  resample whole prompts (`paired_inst_delta`), prompt-level ones prompts (`paired_bootstrap_delta`);
- the tiny recipe's comparison metrics (recipes/tiny.yaml's eval section): MT-Bench (8 questions, judged by
  the same model, next-token rating), ARC-Challenge acc_norm (20 items, lm-eval), and HH-RLHF preference
  accuracy (the last 32 pairs of harmless-base/test, log-likelihood).

Issue 23's bar: every paired difference within +-1 point (0.01 of an accuracy). Each side decodes all its
items in one mode, and each summary records the mode (`decoding`). Calls are cached in OUT/calls.sqlite
(fp32 and bf16 replies under their own model identities), so a killed run resumes.

    .venv/bin/python benchmarks/bench_dtype_quality.py [--out DIR] [--ifeval-limit N] [--max-new-tokens N] [--skip-tiny]

~15 min per mode for IFEval on an idle 2-core AVX512-BF16 machine, ~3 min for the tiny metrics.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from common import DATA, REPO, emit, peak_rss_mb

MODES = ("deterministic", "fast")


def evaluate(mode: str, out: Path, ifeval_limit: int | None, max_new_tokens: int, tiny: bool) -> dict[str, dict]:
    """{metric: {value, ci95, items}} of the base model, every evaluation decoded in `mode`."""
    from bezoar.config import ModelConfig, load_recipe
    from bezoar.evaluate.compare import metrics_of
    from bezoar.evaluate.config import IFEvalConfig, PreferenceConfig
    from bezoar.evaluate.harness import run_harness
    from bezoar.evaluate.ifeval import run_ifeval
    from bezoar.evaluate.mt_bench import run_mt_bench
    from bezoar.evaluate.preference import run_preference
    from bezoar.llm.cache import CallCache
    from bezoar.llm.device import set_deterministic
    from bezoar.llm.local import free_memory
    from bezoar.llm.specs import open_model

    set_deterministic(mode == "deterministic")
    model = open_model(ModelConfig(spec="local"), role="student", cache=CallCache(out / "calls.sqlite"))
    started = time.perf_counter()
    ifeval = IFEvalConfig(prompts=DATA / "eval/ifeval/input_data.jsonl", limit=ifeval_limit, max_new_tokens=max_new_tokens)
    found = metrics_of("ifeval", run_ifeval(model, ifeval, out / mode / "ifeval", "base"))
    print(f"{mode}: IFEval in {time.perf_counter() - started:.0f} s ({model.identity})", flush=True)
    if tiny:
        settings = load_recipe(REPO / "recipes" / "tiny.yaml").steps_of("eval")[0]  # the tiny recipe's eval step
        found |= metrics_of("mt_bench", run_mt_bench(model, model, out / mode / "mt_bench", settings.mt_bench,
                                                     "base", "local"))
        found |= metrics_of("harness", run_harness("local", settings.harness, out / mode / "harness"))
        pairs = PreferenceConfig(pairs=DATA / "preferences/hh-rlhf/harmless-base/test.jsonl.gz", heldout_n=32,
                                 limit=32, batch_size=settings.preference.batch_size)
        found |= metrics_of("preference", run_preference("local", pairs, out / mode / "preference"))
        print(f"{mode}: all metrics in {time.perf_counter() - started:.0f} s", flush=True)
    del model
    free_memory()
    return found


def paired(metric: str, fast: dict, exact: dict) -> dict:
    """Fast minus deterministic over the items both scored, with a paired 95% interval."""
    from bezoar.evaluate.ifeval import paired_inst_delta
    from bezoar.intervals import paired_bootstrap_delta

    if metric.startswith("ifeval_inst"):
        return paired_inst_delta(fast["items"], exact["items"], samples=2000)
    return paired_bootstrap_delta(fast["items"], exact["items"], samples=2000) or {
        "delta": fast["value"] - exact["value"], "ci95": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-dtype-quality"))
    parser.add_argument("--ifeval-limit", type=int, default=None, help="Only the first N IFEval prompts (default all 541).")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="Longest IFEval answer (512, as lm-eval's).")
    parser.add_argument("--skip-tiny", action="store_true", help="IFEval only.")
    args = parser.parse_args()
    os.environ.setdefault("BEZOAR_DATA", str(DATA))  # the tiny recipe's paths and the evaluations' defaults read it
    args.out.mkdir(parents=True, exist_ok=True)
    scores = {mode: evaluate(mode, args.out, args.ifeval_limit, args.max_new_tokens, not args.skip_tiny) for mode in MODES}
    exact, fast = scores["deterministic"], scores["fast"]
    figures: dict = {"benchmark": "dtype_quality", "metrics": {}}
    print(f"{'metric':34s} {'fp32 (deterministic)':>22s} {'fast':>10s}   fast - fp32 [95% CI]")
    for metric in exact:
        if metric not in fast or exact[metric]["value"] is None:
            continue
        delta = paired(metric, fast[metric], exact[metric])
        interval = delta.get("ci95")
        points = 100 if metric != "mt_bench" and not metric.startswith("mt_bench_") else 1  # accuracies in points
        within = interval is not None and -1 <= interval[0] * points and interval[1] * points <= 1
        figures["metrics"][metric] = {"fp32": exact[metric]["value"], "fast": fast[metric]["value"],
                                      "delta": delta["delta"], "ci95": interval, "n": delta.get("n"),
                                      "within_1_point": within}
        shown = f"[{interval[0] * points:+.2f}, {interval[1] * points:+.2f}]" if interval else "[no interval]"
        print(f"{metric:34s} {exact[metric]['value']:22.4f} {fast[metric]['value']:10.4f}   "
              f"{delta['delta'] * points:+.2f} {shown}{'' if points == 1 else ' points'}", flush=True)
    figures["peak_rss_mb"] = round(peak_rss_mb())
    emit(figures)


if __name__ == "__main__":
    main()
