"""Evaluating a run's checkpoints: every chosen evaluation on each, then the comparison (the `eval` step).

    OUT/mt_bench/<checkpoint>/    FastChat answer and judgment files, summary.json
    OUT/harness/<checkpoint>/     rendered task YAMLs, lm-eval results, summary.json
    OUT/preference/<checkpoint>/summary.json
    OUT/ifeval/<checkpoint>/      answers.jsonl (with the checkers' verdicts), summary.json
    OUT/comparison.json           one table across checkpoints (bezoar compare)

Each summary.json is written last and carries the fingerprint of what produced it (settings, model
weights, judge); a re-run skips every evaluation whose fingerprint is unchanged, and MT-Bench resumes
from the call cache after a kill.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bezoar.config_base import ModelConfig
from bezoar.evaluate.compare import compare
from bezoar.evaluate.config import EvalConfig
from bezoar.evaluate.harness import run_harness
from bezoar.evaluate.ifeval import run_ifeval
from bezoar.evaluate.mt_bench import run_mt_bench
from bezoar.evaluate.mt_bench_files import spec_label
from bezoar.evaluate.preference import run_preference
from bezoar.failures import FailureLog
from bezoar.fingerprint import fingerprint, record, recorded
from bezoar.hashing import file_sha256
from bezoar.llm.cache import CachedModel
from bezoar.llm.device import deterministic, plan_device
from bezoar.llm.local import free_memory
from bezoar.llm.specs import open_model
from bezoar.llm.weights import content_identity, resolve_model_dir
from bezoar.processes import peak_rss_mb, rss_mb

log = logging.getLogger(__name__)

KINDS = ("mt_bench", "ifeval", "harness", "preference")


@dataclass
class Evaluation:
    """What one evaluation pass needs besides the checkpoints: its settings, where it writes, the student's
    settings (a checkpoint is opened with them), and what earlier steps handed on."""

    config: EvalConfig
    out_dir: Path
    student: ModelConfig
    judge: ModelConfig
    max_failure_rate: float = 0.05
    heldout_pairs: Path | None = None
    """The held-out HH-RLHF pairs an hh_slices step handed on: the default preference pairs."""
    references: dict[str, str] = field(default_factory=dict)
    """Checkpoint -> the model spec its DPO started from (its implicit reward is measured against it)."""
    summaries: dict[str, str] = field(default_factory=dict)
    """Filled in: "<kind>/<checkpoint>" -> the summary.json written (what compare reads)."""


def evaluate(evaluation: Evaluation, checkpoints: list[tuple[str, str]], models: Mapping[str, CachedModel],
             progress=None) -> dict:
    """Evaluate each checkpoint ((name, model spec), base first), write the comparison, return a summary.

    Memory: MT-Bench and IFEval run first, checkpoint by checkpoint, with the judge loaded; then the
    judge is let go of and the harness and preference accuracy load each checkpoint's weights alone.
    The model caches hold models weakly, so the step holds one student (plus, first, the judge) at a time."""
    judge = _mt_bench_judge(evaluation, models)
    done: dict[str, dict] = {}
    for index, (name, spec) in enumerate(checkpoints):
        role = "student" if name == "base" else f"student:{name}"
        answerer = _Answerer(evaluation, models, role, spec, judge)
        done[name] = _generating(evaluation, name, spec, judge, answerer)
        _close(models, role)
        if progress:
            progress(index + 1)
    usage = {judge.role: judge.usage.to_json()}
    _close(models, judge.role)
    del judge  # the scoring evaluations need only the checkpoint
    for name, spec in checkpoints:
        done[name].update(_scoring(evaluation, name, spec))
    summary: dict = {"checkpoints": done, "usage": usage, "summaries": dict(evaluation.summaries)}
    if evaluation.summaries:
        comparison = compare(evaluation.summaries, [n for n, _ in checkpoints], evaluation.out_dir / "comparison.json")
        summary["comparison"] = str(evaluation.out_dir / "comparison.json")
        summary["metrics"] = comparison["metrics"]
        summary["decoding"] = comparison["decoding"]  # one mode for every checkpoint, or "mixed"
    summary["failed_items"] = sum(result.get("mt_bench", {}).get("failed_items", 0) for result in done.values())
    return summary


@dataclass
class _Answerer:
    """The checkpoint as a chat model, opened on first use (an evaluation that needs no answers loads no
    weights): through the pipeline's models when there are (usage and budgets count it), else directly."""

    evaluation: Evaluation
    models: Mapping[str, CachedModel]
    role: str
    spec: str
    judge: CachedModel
    opened: CachedModel | None = None

    def __call__(self) -> CachedModel:
        if self.opened is None:
            config = self.evaluation.student.model_copy(update={"spec": self.spec})
            if self.role == "student" and "student" in self.models:
                self.opened = self.models["student"]
            elif hasattr(self.models, "open_extra"):
                self.opened = self.models.open_extra(self.role, config)
            else:  # a plain mapping: the checkpoint shares the judge's call cache
                self.opened = open_model(config, role=self.role, cache=self.judge.cache)
        return self.opened


def _close(models: Mapping[str, CachedModel], role: str) -> None:
    """Stop holding a role's model; the pipeline's models (`LazyModels`) still count what it spent."""
    if hasattr(models, "close"):
        models.close(role)


def _mt_bench_judge(evaluation: Evaluation, models) -> CachedModel:
    """eval.mt_bench.judge when the step names one (its own role in the usage table), else models.judge."""
    own = evaluation.config.mt_bench.judge
    if own is None:
        return models.get("judge") or open_model(evaluation.judge, role="judge")
    if hasattr(models, "open_extra"):  # the pipeline's models: usage table and budgets count it
        return models.open_extra("mt_bench_judge", own)
    return open_model(own, role="mt_bench_judge")


def _generating(evaluation: Evaluation, name: str, spec: str, judge: CachedModel, model: _Answerer) -> dict:
    """MT-Bench and IFEval: the checkpoint answers as a chat model (`model`, else opened here)."""
    config = evaluation.config
    identity = weights_identity(spec)
    done: dict = {}
    if config.mt_bench.enabled:
        done["mt_bench"] = _once(evaluation, "mt_bench", name, [config.mt_bench, identity, judge.identity],
                                 lambda out: _mt_bench(evaluation, name, spec, judge, model, out))
        _free(f"{name} mt_bench")
    if config.ifeval.enabled:
        done["ifeval"] = _once(evaluation, "ifeval", name, [config.ifeval, identity],
                               lambda out: _ifeval(evaluation, name, spec, judge, model, out))
        _free(f"{name} ifeval")
    return done


def _scoring(evaluation: Evaluation, name: str, spec: str) -> dict:
    """The harness and preference accuracy: each loads the checkpoint's weights itself and lets them go."""
    config = evaluation.config
    identity = weights_identity(spec)
    done: dict = {}
    if config.harness.enabled:

        done["harness"] = _once(evaluation, "harness", name, [config.harness, identity],
                                lambda out: run_harness(spec, config.harness, out))
        _free(f"{name} harness")
    if config.preference.enabled:
        preference = config.preference
        if preference.pairs is None and evaluation.heldout_pairs is not None:
            preference = preference.model_copy(update={"pairs": evaluation.heldout_pairs})
        if preference.pairs is None:
            log.warning("eval: preference accuracy skipped (no eval.preference.pairs, and no hh_slices step before "
                        "it handed on held-out HH-RLHF pairs)")
        else:
            reference = evaluation.references.get(name)
            signed_reference = weights_identity(reference) if reference else None  # its weights, not its path
            # The pairs by content too: the held-out slice lives in the run, whose path is no part of the result.
            signed = preference.model_dump(mode="json") | {"pairs": file_sha256(preference.pairs)}
            done["preference"] = _once(evaluation, "preference", name, [signed, identity, signed_reference],
                                       lambda out: _preference(spec, preference, out, reference))
            _free(f"{name} preference")
    return done


def _free(finished: str) -> None:
    """Free what the finished evaluation let go of, and log the RSS so a model that stays pinned shows."""

    free_memory()
    log.info("eval: %s done; RSS %s MB (peak %d MB)", finished, rss_mb() or "?", peak_rss_mb())


def _ifeval(evaluation: Evaluation, name: str, spec: str, judge: CachedModel, model: _Answerer, out: Path) -> dict:

    return run_ifeval(model(), evaluation.config.ifeval, out, name)


def _once(evaluation: Evaluation, kind: str, name: str, basis: list, work) -> dict:
    """Run `work(out_dir)` unless out_dir/summary.json was made from the same basis; record its summary.

    The basis includes the dtype the checkpoint decodes in where it is not fp32 (fast mode on a machine
    faster in bf16): a bf16 summary is not up to date for a deterministic run, nor the reverse, while an
    fp32 summary (made in either mode, or before the modes existed) stands for both."""
    out_dir = evaluation.out_dir / kind / name
    path = out_dir / "summary.json"
    evaluation.summaries[f"{kind}/{name}"] = str(path)
    dtype = plan_device(evaluation.student.dtype, deterministic()).dtype_name
    print_ = fingerprint(basis if dtype == "float32" else [*basis, dtype])
    found = recorded(path, print_)
    if found is not None:
        log.info("eval: %s is up to date", out_dir)
        return headline(found)
    return headline(record(path, print_, work(out_dir)))


def headline(summary: dict) -> dict:
    """The few numbers a step result carries (the files hold the rest)."""
    if "single" in summary:
        overall = summary["single"]["overall"]
        return {"score": overall["score"], "ci95": overall["ci95"], "errors": summary["single"]["errors"],
                "failed_items": summary.get("failed_items", 0)}
    if summary.get("kind") == "ifeval":
        return {name: {"value": row["value"], "ci95": row["ci95"]} for name, row in summary["metrics"].items()}
    if "tasks" in summary:
        return {name: {"metric": row["metric"], "value": row["value"], "ci95": row["ci95"]}
                for name, row in summary["tasks"].items()}
    return {"metric": summary.get("metric"), "accuracy": summary.get("accuracy"), "ci95": summary.get("ci95")}


def _mt_bench(evaluation: Evaluation, name: str, spec: str, judge: CachedModel, model: _Answerer, out: Path) -> dict:

    result = run_mt_bench(model(), judge, out, evaluation.config.mt_bench, name, spec_label(evaluation.judge.spec))
    guard = FailureLog(Path(result["failures_file"]), f"eval mt-bench {name}", evaluation.max_failure_rate)
    guard.tried, guard.failed = result["tried_items"], result["failed_items"]
    guard.check()
    return result


def _preference(spec: str, config, out: Path, reference: str | None) -> dict:

    return run_preference(spec, config, out, reference)


def weights_identity(spec: str) -> str:
    """What the model's outputs depend on: the weights' fingerprint for local models, else the spec."""
    if not spec.startswith("local"):
        return spec

    return content_identity(resolve_model_dir(spec.partition(":")[2] or None))
