"""On-policy DPO pairs, verified by program where possible: what the `preferences` step makes.

For each prompt the current student (the newest trained checkpoint, else the base) samples k answers
through the cached, batched backends, so a killed run resumes from the call cache. Each answer gets a
score in [0, 1]: the share of the prompt's constraints that lm-eval's IFEval checkers find met, or,
for a prompt without constraints, the judge's rating / 10. Chosen = best, rejected = worst, kept only
when they differ by `margin`; ties and all-fail prompts are counted and dropped.

    OUT/pairs.jsonl     TRL's prompt/chosen/rejected, with lineage and scores
    OUT/dropped.jsonl   every prompt not turned into a pair, with its reason and scores

No human preference data is involved: the pairs are as commercially usable as the seeds and the student.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from bezoar.errors import DataError
from bezoar.evaluate.ifeval import share_followed
from bezoar.filter.judge import judge_records
from bezoar.licences import model_licence
from bezoar.llm.cache import CachedModel
from bezoar.llm.protocol import Reply, Sampling
from bezoar.preferences.config import PreferencesConfig
from bezoar.records import ChatMessage, Lineage, PreferencePair, Record, read_jsonl, write_json, write_jsonl

log = logging.getLogger(__name__)

CHECKER = "lm-eval ifeval checkers (strict)"


def load_prompts(path: Path, limit: int | None = None) -> list[Record]:
    records = list(read_jsonl(path, Record))
    if not records:
        raise DataError(f"{path}: no prompts")
    return records[:limit] if limit else records


def constraints_of(record: Record) -> tuple[list[str], list[dict]]:
    details = record.meta.details
    return list(details.get("instruction_id_list") or []), list(details.get("kwargs") or [])


def sample_answers(student: CachedModel, records: list[Record], config: PreferencesConfig, seed: int,
                   progress=None) -> list[list[Reply]]:
    """k sampled answers per prompt (cached per sample index: a re-run or resume makes no new call)."""
    sampling = Sampling(temperature=config.temperature, top_p=config.top_p, max_new_tokens=config.max_new_tokens,
                        seed=seed, n=config.k)
    conversations = [[{"role": "user", "content": r.instruction}] for r in records]
    return student.chat_n(conversations, sampling, progress)


def score_answers(records: list[Record], answers: list[list[Reply]], judge: CachedModel | None,
                  config: PreferencesConfig) -> list[list[float | None]]:
    """Per answer: share of constraints met, or judge rating / 10; None for a failed or unscorable answer."""

    scores: list[list[float | None]] = []
    to_judge: list[tuple[int, int]] = []
    for i, (record, replies) in enumerate(zip(records, answers)):
        ids, kwargs = constraints_of(record)
        if ids:
            doc = {"key": i, "prompt": record.instruction, "instruction_id_list": ids, "kwargs": kwargs}
            scores.append([None if r.failed else share_followed(doc, r.text) for r in replies])
        else:
            scores.append([None] * len(replies))
            if judge is not None and config.judge_unconstrained:
                to_judge += [(i, j) for j, r in enumerate(replies) if not r.failed]
    if to_judge:

        rated = [Record(messages=[ChatMessage(role="user", content=records[i].instruction),
                                  ChatMessage(role="assistant", content=answers[i][j].text)],
                        meta=records[i].meta) for i, j in to_judge]
        for (i, j), result in zip(to_judge, judge_records(rated, judge, config.judge)):
            scores[i][j] = None if result.rating is None else result.rating / 10
    return scores


def build_pairs(records: list[Record], answers: list[list[Reply]], scores: list[list[float | None]],
                config: PreferencesConfig, student_spec: str, sampling: dict) -> tuple[list[PreferencePair], list[dict], dict]:
    """(pairs, dropped prompts with reasons, counts). Chosen: the shortest of the best-scored answers
    (so DPO is not taught that longer is better); rejected: the first of the worst."""
    pairs, dropped = [], []
    counts = {"prompts": len(records), "pairs": 0, "ties": 0, "all_fail": 0, "unscored": 0}
    student = (student_spec, "base", model_licence(student_spec))
    for record, replies, marks in zip(records, answers, scores):
        scored = [(s, r) for s, r in zip(marks, replies) if s is not None]
        reason = _drop_reason(scored, config.margin)
        if reason:
            counts[reason] += 1
            dropped.append({"prompt_id": record.meta.id, "reason": reason, "scores": marks})
            continue
        best = max(s for s, _ in scored)
        chosen = min((r for s, r in scored if s == best), key=lambda r: len(r.text))
        worst, rejected = min(scored, key=lambda pair: pair[0])
        ids, kwargs = constraints_of(record)
        meta = {"prompt_id": record.meta.id, "seed_ids": record.meta.seed_ids, "student": student_spec,
                "sampling": sampling, "scorer": CHECKER if ids else f"judge rating ({config.judge.prompt})",
                "chosen_score": best, "rejected_score": worst, "scores": marks,
                "instruction_id_list": ids, "kwargs": kwargs}
        pairs.append(PreferencePair(prompt=[ChatMessage(role="user", content=record.instruction)],
                                    chosen=[ChatMessage(role="assistant", content=chosen.text)],
                                    rejected=[ChatMessage(role="assistant", content=rejected.text)],
                                    meta=meta, licence=record.licence.merged(Lineage.of([student]))))
        counts["pairs"] += 1
    return pairs, dropped, counts


def _drop_reason(scored: list[tuple[float, Reply]], margin: float) -> str | None:
    if len(scored) < 2:
        return "unscored"
    values = [s for s, _ in scored]
    if max(values) == 0:
        return "all_fail"
    if max(values) - min(values) < max(margin, 1e-9):
        return "ties"
    return None


def make_pairs(student: CachedModel, judge: CachedModel | None, records: list[Record], config: PreferencesConfig,
               student_spec: str, seed: int = 0, out_dir: Path | None = None,
               listener: Callable[[int], None] | None = None) -> dict:
    """Sample, score, pair; write pairs.jsonl and dropped.jsonl under out_dir when given. Returns the summary."""

    started = time.perf_counter()
    with tqdm(total=len(records), desc=f"preferences: {config.k} answers per prompt", disable=None) as bar:
        def finished(count: int) -> None:
            bar.update(count)
            if listener is not None:
                listener(count)

        answers = sample_answers(student, records, config, seed, finished)
    scores = score_answers(records, answers, judge, config)
    sampling = {"k": config.k, "temperature": config.temperature, "top_p": config.top_p,
                "max_new_tokens": config.max_new_tokens, "seed": seed}
    pairs, dropped, counts = build_pairs(records, answers, scores, config, student_spec, sampling)
    flat = [s for marks in scores for s in marks if s is not None]
    summary = {**counts, "k": config.k, "margin": config.margin, "student": student.identity,
               "mean_answer_score": sum(flat) / len(flat) if flat else None, "pairs_data": pairs,
               "usage": student.usage.to_json(), "wall_s": round(time.perf_counter() - started, 1)}
    if out_dir is not None:
        out_dir = Path(out_dir)
        write_jsonl(out_dir / "dropped.jsonl", dropped)
        write_jsonl(out_dir / "pairs.jsonl", pairs)
        summary["output"] = str(out_dir / "pairs.jsonl")
    log.info("preferences: %d prompts -> %d pairs (%d ties, %d all-fail, %d unscored)", counts["prompts"],
             counts["pairs"], counts["ties"], counts["all_fail"], counts["unscored"])
    return summary
