"""The filter stage: heuristics → exact/near de-duplication → contamination → judge, and its outputs.

Each step only sees what the previous one kept, so the judge (the only costly step) is asked about
survivors alone. Everything before the judge is deterministic and recomputed on a re-run (seconds);
the judge's replies come from the call cache, so a run killed mid-judging resumes without repeating
a call, and ends with the same kept set. Outputs are written atomically at the end:

    kept.jsonl or <method>.jsonl   the accepted records, each with `meta.judge`
    rejected.jsonl                 every rejected record, `meta.details.filter` = step, reasons, evidence
    failed.jsonl                   records the judge could not decide (its server refused them, or its
                                   reply stayed unreadable): neither kept nor rejected, asked again by
                                   `bezoar run --retry-failed`
    judgments.jsonl                every judge decision with the raw reply (kept and rejected)
    summary.json                   counts per step, per reason and per method; judge usage; judge-check
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import model_validator

from bezoar.errors import BezoarError, DataError
from bezoar.filter import contamination, dedup, heuristics
from bezoar.filter.calibration import judge_check, near_chance
from bezoar.filter.config import FilterConfig
from bezoar.failures import FailureLog
from bezoar.filter.judge import JudgeResult, judge_records
from bezoar.llm.cache import CachedModel
from bezoar.records import Record, read_jsonl, write_json, write_jsonl

log = logging.getLogger(__name__)


class InputRecord(Record):
    """A `Record`, or a plain row the filter also accepts: {"messages": [...]} or Alpaca/Dolly-style
    {"instruction", "input"/"context", "output"/"response"}. `meta.method` "" means "name it after the file"."""

    @model_validator(mode="before")
    @classmethod
    def _plain_rows(cls, value: Any) -> Any:
        if not isinstance(value, dict) or "meta" in value:
            return value
        if "messages" in value:
            return {**value, "meta": {"method": ""}}
        if "instruction" in value:
            extra = value.get("input") or value.get("context") or ""
            prompt = value["instruction"] + (f"\n\n{extra}" if extra else "")
            answer = value.get("output", value.get("response"))
            return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
                    "meta": {"method": ""}}
        return value


@dataclass
class Item:
    """One record travelling through the steps, with where it came from and why it fell out."""

    record: Record
    source: str
    step: str | None = None
    reasons: list[str] = field(default_factory=list)
    evidence: dict = field(default_factory=dict)
    judgment: JudgeResult | None = None
    failed: bool = False
    """The judge could not decide it: a failed item, neither kept nor rejected."""

    @property
    def alive(self) -> bool:
        return self.step is None and not self.failed

    @property
    def rejected(self) -> bool:
        return self.step is not None

    def reject(self, step: str, reasons: list[str], **evidence: Any) -> None:
        self.step, self.reasons, self.evidence = step, reasons, evidence


def load_inputs(paths: list[Path]) -> list[Item]:
    """Records of every file (malformed lines raise `DataError("FILE:LINE: ...")`), with ids and methods."""
    items = []
    for path in paths:
        for record in read_jsonl(path, InputRecord):
            record = Record.model_validate(record.model_dump())
            record.meta.method = record.meta.method or Path(path).name.split(".")[0]
            if not record.meta.id:
                record.with_id()
            items.append(Item(record, Path(path).name.split(".")[0]))
    if not items:
        raise DataError(f"{', '.join(map(str, paths))}: no records to filter")
    return items


def filter_items(items: list[Item], config: FilterConfig, judge: CachedModel | None,
                 progress=None) -> dict:
    """Run every step in order on `items` (marking rejects in place); returns the summary."""
    steps: list[dict] = [{"step": "input", "records": len(items)}]
    timings: dict[str, float] = {}

    def step(name: str, action) -> None:
        started = time.perf_counter()
        action()
        timings[name] = round(time.perf_counter() - started, 3)
        steps.append({"step": name, "records": sum(i.alive for i in items)})

    usage_before = judge.usage.copy() if judge else None  # near_dedup may judge too (judge_clusters)
    step("heuristics", lambda: _heuristics(items, config))
    step("exact_dedup", lambda: _exact(items, config))
    step("near_dedup", lambda: _near(items, config, judge))
    extra = {}
    step("contamination", lambda: extra.update(_contamination(items, config, judge)))
    step("judge", lambda: _judge(items, config, judge, progress))
    summary = _summary(items, steps, timings)
    summary["contamination"] = extra
    if judge is not None and config.judge.enabled:
        summary["judge"] = _judge_summary(items, config, judge, usage_before)
    return summary


def _heuristics(items: list[Item], config: FilterConfig) -> None:
    for item in items:
        reasons = heuristics.check(item.record, config.heuristics)
        if reasons:
            item.reject("heuristics", reasons)


def _prior_score(record: Record) -> float:
    """Rank within a duplicate cluster before any judging: a rating the record already carries, else
    the length of a complete response (the fuller answer of two rewordings), truncated ones last."""
    rating = (record.meta.judge or {}).get("rating")
    if isinstance(rating, (int, float)):
        return 1e6 + float(rating)
    words = min(len(record.response.split()), 99_999)
    return words / 1e6 if record.meta.finish_reason == "length" else 1.0 + words


def _exact(items: list[Item], config: FilterConfig) -> None:
    if not config.dedup.exact:
        return
    alive = [i for i in items if i.alive]
    graph = dedup.exact_graph([i.record.instruction for i in alive])
    for dup in dedup.assign(graph, [_prior_score(i.record) for i in alive]):
        alive[dup.index].reject("exact_dedup", ["exact_duplicate"], duplicate_of=alive[dup.kept].record.meta.id)


def _near(items: list[Item], config: FilterConfig, judge: CachedModel | None) -> None:
    settings = config.dedup
    if not settings.near:
        return
    alive = [i for i in items if i.alive]
    texts = [i.record.instruction for i in alive]
    if settings.method == "embedding":
        graph, similarity = dedup.embedding_graph(texts, settings.embedding_model, settings.embedding_threshold)
    else:
        graph, similarity = dedup.minhash_graph(texts, settings.threshold, settings.num_perm, settings.shingle_words)
    scores = [_prior_score(i.record) for i in alive]
    if settings.keep == "first":
        scores = [0.0] * len(alive)
    elif settings.judge_clusters and judge is not None and graph:
        # Judge cluster members now; the judge step's calls for the survivors are then cache hits.
        members = sorted(graph)
        for index, result in zip(members, judge_records([alive[m].record for m in members], judge, config.judge)):
            scores[index] = result.rating if result.rating is not None else -1.0
    for dup in dedup.assign(graph, scores, similarity):
        alive[dup.index].reject("near_dedup", ["near_duplicate"], duplicate_of=alive[dup.kept].record.meta.id,
                                similarity=dup.similarity, method=settings.method)


def _contamination(items: list[Item], config: FilterConfig, judge: CachedModel | None) -> dict:
    settings = config.contamination
    if not settings.enabled or not settings.eval_paths:
        return {"checked": False}
    index = contamination.build_index(settings.eval_paths, settings)
    alive = [i for i in items if i.alive]
    screening = contamination.screen([i.record for i in alive], index, settings, judge)
    found = []
    for item, matches in zip(alive, screening.matches):
        if matches:
            item.reject("contamination", ["contamination"], matches=matches)
            found.append({"id": item.record.meta.id, "matches": matches})
    return {**screening.summary, "eval_paths": [str(p) for p in settings.eval_paths], "contaminated": found}


def _judge(items: list[Item], config: FilterConfig, judge: CachedModel | None, progress) -> None:
    if judge is None or not config.judge.enabled:
        return
    alive = [i for i in items if i.alive]
    for item, result in zip(alive, judge_records([i.record for i in alive], judge, config.judge, progress)):
        item.judgment = result
        item.record.meta.judge = result.to_json()
        if result.error:
            item.failed = True
        elif not result.accepted:
            item.reject("judge", ["judge_reject"], rating=result.rating, verdict=result.verdict)


def _summary(items: list[Item], steps: list[dict], timings: dict) -> dict:
    reasons = Counter(r for i in items for r in i.reasons)
    methods: dict[str, dict] = {}
    for item in items:
        entry = methods.setdefault(item.source, {"input": 0, "kept": 0, "rejected": Counter()})
        entry["input"] += 1
        entry["kept"] += item.alive
        for reason in item.reasons:
            entry["rejected"][reason] += 1
    for index in range(1, len(steps)):
        steps[index]["removed"] = steps[index - 1]["records"] - steps[index]["records"]
    kept = sum(i.alive for i in items)
    return {"input": len(items), "kept": kept, "rejected": sum(i.rejected for i in items),
            "failed_items": sum(i.failed for i in items), "steps": steps,
            "reasons": dict(reasons.most_common()),
            "methods": {m: {**e, "rejected": dict(e["rejected"])} for m, e in methods.items()},
            "timings_s": timings}


def _judge_summary(items: list[Item], config: FilterConfig, judge: CachedModel, before) -> dict:
    results = [i.judgment for i in items if i.judgment is not None]
    ratings = sorted(r.rating for r in results if r.rating is not None)
    quantiles = {f"p{q}": ratings[min(len(ratings) - 1, int(q / 100 * len(ratings)))] for q in (10, 50, 90)} if ratings else {}
    return {"model": results[0].judge if results else judge.identity, "scoring": results[0].scoring if results else None,
            "rule": results[0].rule if results else config.judge.rule, "threshold": config.judge.threshold,
            "keep_fraction": config.judge.keep_fraction, "judged": len(results),
            "accepted": sum(r.accepted and not r.error for r in results),
            "errors": sum(bool(r.error) for r in results), "retried": sum(r.attempts > 1 for r in results),
            "formats": dict(Counter(r.fmt for r in results)), "rating_quantiles": quantiles,
            "usage": judge.usage.minus(before).to_json() if before else judge.usage.to_json()}


def write_outputs(items: list[Item], summary: dict, out_dir: Path, per_method: bool, judge: str = "") -> dict:
    """Kept records (one file, or one per method/source), rejected, failed, judgments, and the summary (last)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = {}
    if per_method:
        for source in sorted({i.source for i in items}):
            path = out_dir / f"{source}.jsonl"
            outputs[source] = str(path)
            write_jsonl(path, (i.record for i in items if i.alive and i.source == source))
    else:
        outputs["kept"] = str(out_dir / "kept.jsonl")
        write_jsonl(out_dir / "kept.jsonl", (i.record for i in items if i.alive))
    write_jsonl(out_dir / "rejected.jsonl", (_rejected(i) for i in items if i.rejected))
    failures = FailureLog(out_dir / "failed.jsonl", "filter").start()
    for item in (i for i in items if i.failed):
        failures.record(item.record.meta.id, item.judgment.error, judge, item.record.model_dump(mode="json"),
                        raw=item.judgment.raw, source=item.source)
    write_jsonl(out_dir / "judgments.jsonl", ({"id": i.record.meta.id, "source": i.source, **i.judgment.to_json()}
                                              for i in items if i.judgment is not None))
    outputs.update(rejected=str(out_dir / "rejected.jsonl"), failed=str(out_dir / "failed.jsonl"),
                   judgments=str(out_dir / "judgments.jsonl"),
                   summary=str(out_dir / "summary.json"))
    summary["outputs"] = outputs
    write_json(out_dir / "summary.json", summary)
    return summary


def _rejected(item: Item) -> Record:
    record = item.record.model_copy(deep=True)
    record.meta.details = {**record.meta.details,
                           "filter": {"step": item.step, "reasons": item.reasons, **item.evidence}}
    return record


def run(inputs: list[Path], out_dir: Path, config: FilterConfig, judge: CachedModel | None,
        per_method: bool = False, max_failure_rate: float = 0.05, progress=None) -> dict:
    """Filter `inputs` into `out_dir`: the library call behind both `bezoar filter` and the recipe stage.

    Outputs are written before the failure-rate check, so a stopped filter still shows what it decided."""
    items = load_inputs(inputs)
    check = None
    if judge is not None and config.judge_check.enabled:
        check = _calibrate(judge, config)
    summary = filter_items(items, config, judge, progress)
    summary["judge_check"] = check
    summary = write_outputs(items, summary, Path(out_dir), per_method, judge.identity if judge else "")
    guard = FailureLog(Path(out_dir) / "failed.jsonl", "filter (judge)", max_failure_rate)
    guard.tried, guard.failed = summary.get("judge", {}).get("judged", 0), summary["failed_items"]
    guard.check()
    return summary


def _calibrate(judge: CachedModel, config: FilterConfig) -> dict:
    settings = config.judge_check
    if settings.pairs is None:
        raise BezoarError("filter.judge_check.enabled is true but filter.judge_check.pairs names no file "
                          "(an HH-RLHF JSONL such as harmless-base/test.jsonl.gz)")
    figures = judge_check(judge, settings.pairs, settings.n, config.judge.scoring)
    figures["near_chance"] = near_chance(figures, settings.min_agreement)
    if figures["near_chance"]:
        log.warning("judge-check: the judge agrees with human preferences %s of decisive picks — near chance; "
                    "its accept/reject decisions are little better than a coin", _rate_text(figures["agreement_decisive"]))
    return figures


def _rate_text(rate: dict) -> str:
    return "n/a" if rate["value"] is None else f"{rate['value']:.2f} [{rate['low']:.2f}, {rate['high']:.2f}]"
