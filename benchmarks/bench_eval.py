"""Evaluation wall time with the embedded SmolLM2-135M, each against the obvious alternative:

  (1) MT-Bench, all 80 questions x 2 turns, answered and judged by the embedded model through
      bezoar (batched, cached), with a fresh cache; then the same run again (resume = cache hits).
  (2) Answering: FastChat's gen_model_answer way (one question at a time) vs bezoar's batches, on
      the first --baseline-questions questions.
  (3) Judging: FastChat's way (the judge writes, `[[rating]]` is parsed; judge_mode generate) vs
      next-token scoring (the default for local judges), on the answers of (2): time and readable share.
  (4) Harness: lm-eval items/s on bezoar's local ARC-Challenge (25-shot) and TruthfulQA-MC2 (0-shot),
      bezoar's batch size vs lm-eval's default batch size 1.

    .venv/bin/python benchmarks/bench_eval.py [--max-new-tokens 256] [--baseline-questions 4] [--harness-limit 10]
                                              [--skip mt_bench answering judging harness]

Answers are capped at --max-new-tokens (FastChat's 1024 would take hours on 2 CPU cores).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import DATA, emit, peak_rss_mb


def models(cache_dir: Path, batch_size: int = 32):
    from bezoar.llm.cache import CachedModel, CallCache
    from bezoar.llm.local import LocalBackend

    backend = LocalBackend(batch_size=batch_size)
    cache = CallCache(cache_dir / "calls.sqlite")
    return backend, CachedModel(backend, cache, role="student"), CachedModel(backend, cache, role="judge")


def full_mt_bench(work: Path, max_new: int) -> dict:
    from bezoar.evaluate.config import MTBenchConfig
    from bezoar.evaluate.mt_bench import run_mt_bench

    config = MTBenchConfig(questions=DATA / "eval/mt_bench/question.jsonl", max_new_tokens=max_new,
                           reference_answers=DATA / "eval/mt_bench/reference_answer/gpt-4.jsonl")
    # 64 rows per batch: each turn is 3 temperature groups (20/40/20 questions), one batch each.
    _, model, judge = models(work / "cache", 64)
    started = time.perf_counter()
    summary = run_mt_bench(model, judge, work / "mt", config, "smollm2", "smollm2")
    first = time.perf_counter() - started
    _, model2, judge2 = models(work / "cache", 64)
    started = time.perf_counter()
    run_mt_bench(model2, judge2, work / "mt-again", config, "smollm2", "smollm2")
    again = time.perf_counter() - started
    return {"mt_bench_80q_wall_s": round(first, 1), "mt_bench_answer_s": round(model.usage.wall_s, 1),
            "mt_bench_judge_s": round(judge.usage.wall_s, 1), "mt_bench_answer_tokens": model.usage.completion_tokens,
            "mt_bench_score": summary["single"]["overall"]["score"], "mt_bench_ci95": summary["single"]["overall"]["ci95"],
            "mt_bench_resume_wall_s": round(again, 1), "mt_bench_resume_calls": model2.usage.calls + judge2.usage.calls}


def answering(work: Path, max_new: int, count: int) -> dict:
    """One question at a time (FastChat) vs one batch per turn and temperature (bezoar), same questions.
    The batched answers are kept in FastChat's format for (3)."""
    from bezoar.evaluate.mt_bench import answer
    from bezoar.evaluate.mt_bench_files import load_questions
    from bezoar.records import write_jsonl

    questions = load_questions(DATA / "eval/mt_bench/question.jsonl", count)
    times = {}
    for label, batch in (("sequential", 1), ("batched", 64)):
        _, model, _ = models(work / f"cache-{label}", batch)
        started = time.perf_counter()
        answers = [record for group in ([[q] for q in questions] if batch == 1 else [questions])
                   for record in answer(model, group, "smollm2", max_new)]
        times[label] = time.perf_counter() - started
    write_jsonl(work / "answers-first.jsonl", answers)
    return {"answer_sequential_s": round(times["sequential"], 1), "answer_batched_s": round(times["batched"], 1),
            "answer_speedup": round(times["sequential"] / times["batched"], 2), "answer_questions": count}


def judging(work: Path, count: int) -> dict:
    """FastChat's generate-then-parse judge vs next-token scoring, on the answers from (2)."""
    from bezoar.evaluate.config import MTBenchConfig
    from bezoar.evaluate.mt_bench import judge_single, judges_for, load_references
    from bezoar.evaluate.mt_bench_files import load_answers, load_judge_prompts, load_questions

    questions = load_questions(DATA / "eval/mt_bench/question.jsonl", count)
    answers = load_answers(work / "answers-first.jsonl")
    references = load_references(DATA / "eval/mt_bench/reference_answer/gpt-4.jsonl")
    figures = {}
    for mode in ("generate", "next_token"):
        config = MTBenchConfig(judge_mode=mode, judge_retries=0, judge_max_new_tokens=256)
        _, _, judge = models(work / f"judge-{mode}")
        rater, _, _ = judges_for(judge, mode)
        started = time.perf_counter()
        lines = judge_single(rater, "smollm2", questions, answers, references, config, load_judge_prompts())
        figures[f"judge_{mode}_s"] = round(time.perf_counter() - started, 1)
        figures[f"judge_{mode}_readable"] = round(sum(l["score"] != -1 for l in lines) / len(lines), 3)
    figures["judge_speedup"] = round(figures["judge_generate_s"] / figures["judge_next_token_s"], 2)
    return figures


def harness(work: Path, limit: int) -> dict:
    from bezoar.evaluate.config import HarnessConfig
    from bezoar.evaluate.harness import run_harness

    figures = {}
    for task in ("bezoar_arc_challenge", "bezoar_truthfulqa_mc2"):
        for batch in (16, 1):
            config = HarnessConfig(tasks=[task], data_dir=DATA / "eval/harness", limit=limit, batch_size=batch)
            started = time.perf_counter()
            summary = run_harness("local", config, work / f"h-{task}-{batch}")  # fresh dir: no request cache
            wall = time.perf_counter() - started
            figures[f"{task}_b{batch}_items_per_s"] = round(summary["tasks"][task]["n"] / wall, 3)
        figures[f"{task}_speedup"] = round(figures[f"{task}_b16_items_per_s"] / figures[f"{task}_b1_items_per_s"], 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--baseline-questions", type=int, default=4)
    parser.add_argument("--harness-limit", type=int, default=10)
    parser.add_argument("--skip", nargs="*", default=[], choices=["mt_bench", "answering", "judging", "harness"])
    args = parser.parse_args()
    figures: dict = {"max_new_tokens": args.max_new_tokens}
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        if "mt_bench" not in args.skip:
            figures.update(full_mt_bench(work, args.max_new_tokens))
            print(f"MT-Bench 80 questions: {figures['mt_bench_80q_wall_s']} s (answer {figures['mt_bench_answer_s']} s, "
                  f"judge {figures['mt_bench_judge_s']} s); resumed run {figures['mt_bench_resume_wall_s']} s", flush=True)
        if "answering" not in args.skip:
            figures.update(answering(work, args.max_new_tokens, args.baseline_questions))
            print(f"answering {args.baseline_questions} questions: sequential {figures['answer_sequential_s']} s, "
                  f"batched {figures['answer_batched_s']} s, ratio {figures['answer_speedup']}x", flush=True)
        if "judging" not in args.skip and "answering" not in args.skip:
            figures.update(judging(work, args.baseline_questions))
            print(f"judging: generate {figures['judge_generate_s']} s ({figures['judge_generate_readable']:.0%} readable), "
                  f"next-token {figures['judge_next_token_s']} s ({figures['judge_next_token_readable']:.0%}), "
                  f"ratio {figures['judge_speedup']}x", flush=True)
        if "harness" not in args.skip:
            figures.update(harness(work, args.harness_limit))
            print("harness items/s: " + ", ".join(f"{k}={v}" for k, v in figures.items() if "items_per_s" in k or
                                                  k.endswith("_speedup") and "bezoar_" in k), flush=True)
    figures["peak_rss_mb"] = round(peak_rss_mb())
    emit(figures)


if __name__ == "__main__":
    main()
