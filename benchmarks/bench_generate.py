"""Synthetic-data throughput with the embedded SmolLM2-135M teacher, in one run on one machine:
  (1) records per minute for each scheme (LaMini-LM, Evol-Instruct, Orca) on real seeds, with bezoar's
      batched rounds against the obvious alternative, one work item per round (batch_size 1);
  (2) teacher calls per second through `bezoar serve` (OpenAI-compatible, request batching) with the
      openai backend at concurrency 8 against concurrency 1.
Every measurement starts from an empty call cache, so nothing is a cache hit. Times on a shared
2-core machine are noisy: compare the ratios, which are taken minutes apart in the same run.

    .venv/bin/python benchmarks/bench_generate.py [--n 6] [--calls 16] [--repeats 1] [--skip-unbatched]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import DATA, emit

SEEDS = {
    "lamini": [DATA / "seeds/dolly15k_open_qa_subset.jsonl", DATA / "seeds/self_instruct_seed_tasks.jsonl"],
    "evol": [DATA / "seeds/dolly15k_open_qa_subset.jsonl"],
    "orca": [DATA / "seeds/flan/cot_data/gsm8k_train.tsv.gz", DATA / "seeds/flan/cot_data/creak_train.tsv.gz",
             DATA / "seeds/flan/t0_p3_sample_25_per_template.jsonl.gz"],
}


def scheme_config(method: str, n: int, batch_size: int):
    """Tight CPU settings: short lists and answers, as a smoke-scale recipe would use."""
    from bezoar.generate.config import EvolConfig, LaMiniConfig, OrcaConfig, SamplingConfig

    def tight(max_new_tokens: int) -> SamplingConfig:
        return SamplingConfig(temperature=0.7, top_p=0.95, max_new_tokens=max_new_tokens)

    common = {"n": n, "seeds": [str(p) for p in SEEDS[method]], "batch_size": batch_size, "max_attempts_per_record": 30}
    if method == "lamini":
        return LaMiniConfig(**common, instruction_sampling=tight(96), response_sampling=tight(48))
    if method == "evol":
        return EvolConfig(**common, epochs=2, pool_size=max(4, n), evolve_sampling=tight(48), response_sampling=tight(48))
    return OrcaConfig(**common, mix={"cot": 1, "t0": 1}, response_sampling=tight(64))


def records_per_minute(method: str, n: int, batch_size: int, workdir: Path) -> dict:
    from bezoar.generate.stage import generate
    from bezoar.llm.cache import CachedModel, CallCache
    from bezoar.llm.local import LocalBackend

    tag = f"{method}-b{batch_size}-{len(list(workdir.glob(f'{method}-b{batch_size}-*.sqlite')))}"
    teacher = CachedModel(LocalBackend(batch_size=32), CallCache(workdir / f"{tag}.sqlite"), role="teacher")
    started = time.perf_counter()
    summary = generate(method, scheme_config(method, n, batch_size), teacher, "local", workdir / f"{tag}.jsonl",
                       seed=0, show_progress=False)
    minutes = (time.perf_counter() - started) / 60
    return {"records_per_min": round(summary["records"] / minutes, 2), "records": summary["records"],
            "attempts": summary["attempts"], "calls": summary["usage"]["calls"],
            "completion_tokens": summary["usage"]["completion_tokens"], "wall_s": round(minutes * 60, 1),
            "rejected": summary["rejected"], "output": summary["output"]}


def served_calls_per_second(calls: int, workdir: Path) -> dict:
    """The same number of distinct short chats through `bezoar serve`, one at a time vs eight in flight."""
    from servers import bezoar_server

    from bezoar.config import ModelConfig
    from bezoar.llm.cache import CallCache
    from bezoar.llm.protocol import Sampling
    from bezoar.llm.specs import open_model

    questions = [json.loads(line)["instruction"] for line, _ in zip(open(SEEDS["evol"][0], encoding="utf-8"), range(2 * calls))]
    sampling = Sampling(temperature=0.0, max_new_tokens=32)
    found = {}
    with bezoar_server() as url:
        for concurrency, batch in ((1, questions[:calls]), (8, questions[calls:])):
            model = open_model(ModelConfig(spec=f"openai:smollm2@{url}", concurrency=concurrency, timeout_s=600),
                               role="teacher", cache=CallCache(workdir / f"serve-c{concurrency}.sqlite"))
            started = time.perf_counter()
            replies = model.chat([[{"role": "user", "content": q}] for q in batch], sampling)
            elapsed = time.perf_counter() - started
            assert all(r.finish_reason != "error" for r in replies), [r.text for r in replies if r.finish_reason == "error"]
            found[f"c{concurrency}"] = {"calls_per_s": round(len(batch) / elapsed, 3), "wall_s": round(elapsed, 1),
                                        "completion_tokens": sum(r.completion_tokens for r in replies)}
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=6, help="records per scheme")
    parser.add_argument("--calls", type=int, default=16, help="chats per concurrency level through bezoar serve")
    parser.add_argument("--skip-unbatched", action="store_true", help="skip the batch_size=1 comparison (halves the time)")
    parser.add_argument("--repeats", type=int, default=1, help="alternate batched/unbatched this many times, keep the best")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench_generate_"))
    figures: dict = {"n": args.n}
    for method in ("orca", "lamini", "evol"):
        runs: dict[int, list[dict]] = {32: [], 1: []}
        for _ in range(args.repeats):  # alternate the two, so a burst of load on the shared machine hits both
            for batch_size in ((32,) if args.skip_unbatched else (32, 1)):
                runs[batch_size].append(records_per_minute(method, args.n, batch_size, workdir))
                found = runs[batch_size][-1]
                print(f"{method} batch_size={batch_size}: {found['records_per_min']} records/min "
                      f"({found['calls']} calls, {found['attempts']} candidates, {found['wall_s']} s)", flush=True)
        figures[method] = max(runs[32], key=lambda r: r["records_per_min"])
        if runs[1]:
            figures[f"{method}_unbatched"] = max(runs[1], key=lambda r: r["records_per_min"])
            figures[f"{method}_batching_speedup"] = round(
                figures[method]["records_per_min"] / figures[f"{method}_unbatched"]["records_per_min"], 2)
            print(f"{method}: batching {figures[f'{method}_batching_speedup']}x (best of {args.repeats})", flush=True)
    served = served_calls_per_second(args.calls, workdir)
    figures["serve"] = served
    figures["serve_concurrency_speedup"] = round(served["c8"]["calls_per_s"] / served["c1"]["calls_per_s"], 2)
    print(f"bezoar serve: {served['c1']['calls_per_s']} calls/s at concurrency 1, {served['c8']['calls_per_s']} at 8 "
          f"-> {figures['serve_concurrency_speedup']}x", flush=True)
    figures["workdir"] = str(workdir)
    emit(figures)


if __name__ == "__main__":
    main()
