"""Prompts that teach: keep the constraint prompts the current model sometimes meets.

A prompt whose k samples all score alike carries no signal: GRPO's advantages within its group are
all zero, and the preferences step gets no pair from it (all fail) or a tie (all pass). With the
embedded 135M model, 187 of 400 constraint prompts gave no pair because all four samples failed
(recipes/verifiable.yaml). So before training, the current model samples k answers per candidate,
lm-eval's IFEval checkers score each (share of constraints met, as the rewards do), and a prompt is
kept when its scores spread: best > worst, by at least `min_spread` (the preferences step can pass
its margin). `rule="pass_rate"` keeps instead the prompts whose share of fully-met samples is
strictly between 0 and 1. Settings: `bezoar.preferences.config.SelectionConfig`.

    out_dir/kept.jsonl       the kept records, each with meta.details.teaching (scores, pass rate)
    out_dir/dropped.jsonl    every other prompt: id, reason (all_fail, all_pass, no_spread, unscored), scores
    out_dir/summary.json     counts and shares, per constraint type before and after selection

Sampling goes through the call cache: a resumed selection makes no new call, and a preferences step
that samples with the same settings (k, temperature, top_p, max_new_tokens, seed) from the same
model reads these very answers from the cache instead of sampling again.

Choosing settings (k, temperature, what to train on) happens on our own constraint prompts:
`split_prompts` sets a dev split apart; IFEval's 541 prompts are never looked at here.
"""
from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from pathlib import Path

from bezoar.evaluate.ifeval import follow
from bezoar.generate.constraints import checker_doc
from bezoar.llm.cache import CachedModel
from bezoar.llm.protocol import Sampling
from bezoar.preferences.config import SelectionConfig
from bezoar.records import Record, write_json, write_jsonl

log = logging.getLogger(__name__)


def split_prompts(records: list[Record], dev_fraction: float, seed: int = 0) -> tuple[list[Record], list[Record]]:
    """(train, dev): a seeded share of our own constraint prompts held out for choosing settings."""
    order = list(records)
    random.Random(seed).shuffle(order)
    size = round(len(order) * dev_fraction)
    return order[size:], order[:size]


def sample_and_check(student: CachedModel, records: list[Record], sampling: Sampling) -> list[list[list[bool]]]:
    """Per prompt, per sample, per constraint: met (lm-eval's strict checker)? A failed call is an
    empty answer, which meets nothing."""

    conversations = [[{"role": "user", "content": r.instruction}] for r in records]
    answers = student.chat_n(conversations, sampling)
    flags = []
    for index, (record, replies) in enumerate(zip(records, answers)):
        doc = checker_doc(record, index)
        flags.append([list(follow(doc, "" if r.failed else r.text)["inst_level_strict_acc"]) for r in replies])
    return flags


def verdict(flags: list[list[bool]], rule: str, min_spread: float) -> str:
    """'kept', or why not: 'unscored' (no constraint), 'all_fail', 'all_pass', 'no_spread'."""
    if not flags or not flags[0]:
        return "unscored"
    scores = [sum(f) / len(f) for f in flags]
    passed = [all(f) for f in flags]
    if max(scores) == 0:
        return "all_fail"
    if all(passed):
        return "all_pass"
    if rule == "pass_rate":
        return "kept" if any(passed) else "no_spread"
    spread = max(scores) - min(scores)
    return "kept" if spread > 0 and spread >= min_spread else "no_spread"


def type_shares(records: list[Record], flags: list[list[list[bool]]]) -> dict[str, dict]:
    """Per constraint type: prompts carrying it, its share of all constraints, and how often samples met it."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # prompts, met, checked
    for record, per_sample in zip(records, flags):
        for position, name in enumerate(record.meta.details.get("instruction_id_list") or []):
            counts[name][0] += 1
            counts[name][1] += sum(sample[position] for sample in per_sample)
            counts[name][2] += len(per_sample)
    total = sum(c[0] for c in counts.values()) or 1
    return {name: {"prompts": n, "share": n / total, "pass_rate": met / checked if checked else None}
            for name, (n, met, checked) in sorted(counts.items())}


def select_teaching_prompts(student: CachedModel, records: list[Record], config: SelectionConfig, seed: int = 0,
                            out_dir: Path | None = None) -> dict:
    """Sample `config.k` answers per candidate prompt from `student`, keep the prompts that teach (see the
    module docstring); write kept.jsonl, dropped.jsonl and summary.json under out_dir when given. Returns
    the summary, with the kept records under `records` (not written to summary.json)."""
    started = time.perf_counter()
    k, rule, min_spread = config.k, config.rule, config.min_spread
    sampling = Sampling(temperature=config.temperature, top_p=config.top_p, max_new_tokens=config.max_new_tokens,
                        seed=seed, n=k)
    flags = sample_and_check(student, records, sampling)
    kept, kept_flags, dropped = [], [], []
    reasons: dict[str, int] = defaultdict(int)
    for record, per_sample in zip(records, flags):
        reason = verdict(per_sample, rule, min_spread)
        reasons[reason] += 1
        scores = [sum(f) / len(f) if f else None for f in per_sample]
        if reason != "kept":
            dropped.append({"prompt_id": record.meta.id, "reason": reason, "scores": scores})
            continue
        teaching = {"scores": scores, "pass_rate": sum(all(f) for f in per_sample) / len(per_sample),
                    "k": k, "student": student.identity}
        kept.append(record.model_copy(update={"meta": record.meta.model_copy(
            update={"details": {**record.meta.details, "teaching": teaching}})}))
        kept_flags.append(per_sample)
    summary = {"candidates": len(records), "kept": len(kept), "kept_share": len(kept) / max(len(records), 1),
               "reasons": dict(reasons), "rule": rule, "min_spread": min_spread,
               "sampling": {"k": k, "temperature": config.temperature, "top_p": config.top_p,
                            "max_new_tokens": config.max_new_tokens, "seed": seed},
               "mean_score_before": _mean_score(flags), "mean_score_after": _mean_score(kept_flags),
               "types_before": type_shares(records, flags), "types_after": type_shares(kept, kept_flags),
               "student": student.identity, "wall_s": round(time.perf_counter() - started, 1)}
    if out_dir is not None:
        out_dir = Path(out_dir)
        write_jsonl(out_dir / "kept.jsonl", kept)
        write_jsonl(out_dir / "dropped.jsonl", dropped)
        write_json(out_dir / "summary.json", summary)
        summary["output"] = str(out_dir / "kept.jsonl")
    log.info("prompt selection: kept %d of %d (%s)", len(kept), len(records),
             ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())))
    return {**summary, "records": kept}


def _mean_score(flags: list[list[list[bool]]]) -> float | None:
    scores = [sum(f) / len(f) for per_sample in flags for f in per_sample if f]
    return sum(scores) / len(scores) if scores else None
