"""The `eval` stage: every chosen evaluation on every checkpoint of a run, then the comparison.

The checkpoints (sft-1-*, sft-hh, dpo), DPO's reference and the held-out HH-RLHF pairs are what the
training stages handed on in the run's manifest (`bezoar.stage_outputs`); the base student comes first.

    run_dir/eval/mt_bench/<checkpoint>/ FastChat answer and judgment files, summary.json
    run_dir/eval/harness/<checkpoint>/  rendered task YAMLs, lm-eval results, summary.json
    run_dir/eval/preference/<checkpoint>/summary.json
    run_dir/eval/ifeval/<checkpoint>/   answers.jsonl (with the checkers' verdicts), summary.json
    run_dir/eval/comparison.json        one table across checkpoints (bezoar compare)

Each summary.json is written last and carries a signature of what produced it (settings, model
weights, judge); a re-run skips every evaluation whose signature is unchanged, and MT-Bench resumes
from the call cache after a kill.
"""
from __future__ import annotations

import json
import logging
import os
import resource
from collections.abc import Mapping
from pathlib import Path

from bezoar.config import Recipe
from bezoar.errors import ConfigError
from bezoar.evaluate.compare import compare
from bezoar.evaluate.config import EvalConfig
from bezoar.failures import FailureLog
from bezoar.hashing import canonical_hash, file_sha256
from bezoar.llm.cache import CachedModel
from bezoar.records import write_json
from bezoar.stage_outputs import checkpoints, done_summary, output

log = logging.getLogger(__name__)

def find_checkpoints(run_dir: Path, config: EvalConfig, student_spec: str) -> list[tuple[str, str]]:
    """(name, model spec) for the base student and every model the run's training stages recorded as done
    in its manifest, in training order."""
    found = [("base", student_spec)] if config.include_base else []
    for name, path in checkpoints(run_dir):
        if path.is_dir():
            found.append((name, f"local:{path.resolve()}"))
        else:
            log.warning("eval: checkpoint %s is recorded in the manifest but %s is gone; skipped", name, path)
    if config.checkpoints is not None:
        names = [name for name, _ in found]
        unknown = [c for c in config.checkpoints if c not in names]
        if unknown:
            manifest = Path(run_dir) / "manifest.json"
            raise ConfigError(f"eval.checkpoints: {unknown} are not among the checkpoints {manifest} records "
                              f"(found: {names})")
        found = [(n, s) for n, s in found if n in config.checkpoints or (n == "base" and config.include_base)]
    return found


def run_eval(recipe: Recipe, run_dir: Path, models: Mapping[str, CachedModel]) -> dict:
    """The stage contract: evaluate each checkpoint, write the comparison, return a JSON summary.

    Memory: MT-Bench and IFEval run first, checkpoint by checkpoint, with the judge loaded; then the
    judge is let go of and the harness and preference accuracy load each checkpoint's weights alone.
    The model caches hold models weakly, so the stage holds one student (plus, first, the judge) at a time."""
    config: EvalConfig = recipe.eval
    run_dir = Path(run_dir)
    checkpoints = find_checkpoints(run_dir, config, recipe.models.student.spec)
    judge = _mt_bench_judge(recipe, models)
    done: dict[str, dict] = {}
    for name, spec in checkpoints:
        done[name] = _generating(recipe, run_dir, name, spec, judge, models.get("student") if name == "base" else None)
        _close(models, "student")
    usage = {judge.role: judge.usage.to_json()}
    _close(models, judge.role)
    del judge  # the scoring evaluations need only the checkpoint
    for name, spec in checkpoints:
        done[name].update(_scoring(recipe, run_dir, name, spec))
    summary: dict = {"checkpoints": done, "skipped": [], "usage": usage}
    if done:
        comparison = compare(run_dir)
        summary["comparison"] = str(run_dir / "eval" / "comparison.json")
        summary["metrics"] = comparison["metrics"]
    summary["failed_items"] = sum(result.get("mt_bench", {}).get("failed_items", 0) for result in done.values())
    return summary


def _close(models: Mapping[str, CachedModel], role: str) -> None:
    """Stop holding a role's model; the pipeline's models (`LazyModels`) still count what it spent."""
    if hasattr(models, "close"):
        models.close(role)


def _mt_bench_judge(recipe: Recipe, models) -> CachedModel:
    """eval.mt_bench.judge when the recipe names one (its own role in the usage table), else models.judge."""
    from bezoar.llm.specs import open_model

    own = recipe.eval.mt_bench.judge
    if own is None:
        return models.get("judge") or open_model(recipe.models.judge, role="judge")
    if hasattr(models, "open_extra"):  # the pipeline's models: usage table and budgets count it
        return models.open_extra("mt_bench_judge", own)
    return open_model(own, role="mt_bench_judge")


def _generating(recipe: Recipe, run_dir: Path, name: str, spec: str, judge: CachedModel,
                model: CachedModel | None) -> dict:
    """MT-Bench and IFEval: the checkpoint answers as a chat model (`model`, else opened here)."""
    config: EvalConfig = recipe.eval
    identity = _weights_identity(spec)
    done: dict = {}
    if config.mt_bench.enabled:
        done["mt_bench"] = _once(run_dir / "eval" / "mt_bench" / name, [config.mt_bench, identity, judge.identity],
                                 lambda out: _mt_bench(recipe, name, spec, judge, model, out))
        _free(f"{name} mt_bench")
    if config.ifeval.enabled:
        done["ifeval"] = _once(run_dir / "eval" / "ifeval" / name, [config.ifeval, identity],
                               lambda out: _ifeval(recipe, name, spec, judge, model, out))
        _free(f"{name} ifeval")
    return done


def _scoring(recipe: Recipe, run_dir: Path, name: str, spec: str) -> dict:
    """The harness and preference accuracy: each loads the checkpoint's weights itself and lets them go."""
    config: EvalConfig = recipe.eval
    identity = _weights_identity(spec)
    done: dict = {}
    if config.harness.enabled:
        from bezoar.evaluate.harness import run_harness

        done["harness"] = _once(run_dir / "eval" / "harness" / name, [config.harness, identity],
                                lambda out: run_harness(spec, config.harness, out))
        _free(f"{name} harness")
    if config.preference.enabled:
        preference = _preference_config(recipe, run_dir)
        if preference.pairs is None:
            log.warning("eval: preference accuracy skipped (no eval.preference.pairs, and sft_hh handed on no "
                        "held-out HH-RLHF pairs: sft_hh.data)")
        else:
            reference = _dpo_reference(recipe, run_dir, name)
            signed_reference = _weights_identity(reference) if reference else None  # its weights, not its path
            # The pairs by content too: the held-out slice lives in the run, whose path is no part of the result.
            signed = preference.model_dump(mode="json") | {"pairs": file_sha256(preference.pairs)}
            done["preference"] = _once(run_dir / "eval" / "preference" / name, [signed, identity, signed_reference],
                                       lambda out: _preference(spec, preference, out, reference))
            _free(f"{name} preference")
    return done


def _free(finished: str) -> None:
    """Free what the finished evaluation let go of, and log the RSS so a model that stays pinned shows."""
    from bezoar.llm.local import free_memory

    free_memory()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # as the stage's manifest entry
    try:  # Linux: resident pages now (statm's second field)
        now_mb = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20
        log.info("eval: %s done; RSS %d MB (peak %d MB)", finished, now_mb, peak_mb)
    except (OSError, ValueError):
        log.info("eval: %s done; peak RSS %d MB", finished, peak_mb)


def _ifeval(recipe: Recipe, name: str, spec: str, judge: CachedModel, model: CachedModel | None, out: Path) -> dict:
    from bezoar.evaluate.ifeval import run_ifeval

    model = model or _open_checkpoint(recipe, name, spec, judge)
    return run_ifeval(model, recipe.eval.ifeval, out, name)


def _open_checkpoint(recipe: Recipe, name: str, spec: str, judge: CachedModel) -> CachedModel:
    """The checkpoint with the student's settings, sharing the judge's call cache."""
    from bezoar.config import ModelConfig
    from bezoar.llm.specs import open_model

    settings = recipe.models.student.model_dump() | {"spec": spec}
    return open_model(ModelConfig(**settings), role=f"student:{name}", cache=judge.cache)


def _once(out_dir: Path, inputs: list, work) -> dict:
    """Run `work(out_dir)` unless out_dir/summary.json was made from the same inputs."""
    signature = canonical_hash([i.model_dump(mode="json") if hasattr(i, "model_dump") else i for i in inputs])
    path = out_dir / "summary.json"
    if path.exists():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            previous = {}
        if previous.get("signature") == signature:
            log.info("eval: %s is up to date", out_dir)
            return _headline(previous)
    result = work(out_dir)
    result["signature"] = signature
    write_json(path, result)
    return _headline(result)


def _headline(summary: dict) -> dict:
    """The few numbers the stage summary carries (the files hold the rest)."""
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


def _mt_bench(recipe: Recipe, name: str, spec: str, judge: CachedModel, model: CachedModel | None, out: Path) -> dict:
    from bezoar.config import ModelConfig
    from bezoar.evaluate.mt_bench import run_mt_bench
    from bezoar.evaluate.mt_bench_files import spec_label
    from bezoar.llm.specs import open_model

    if model is None:
        student = recipe.models.student
        settings = student.model_dump() | {"spec": spec}
        model = open_model(ModelConfig(**settings), role=f"student:{name}", cache=judge.cache)
    result = run_mt_bench(model, judge, out, recipe.eval.mt_bench, name, spec_label(recipe.models.judge.spec))
    guard = FailureLog(Path(result["failures_file"]), f"eval mt-bench {name}", recipe.run.max_failure_rate)
    guard.tried, guard.failed = result["tried_items"], result["failed_items"]
    guard.check()
    return result


def _preference_config(recipe: Recipe, run_dir: Path):
    """eval.preference with its pairs defaulting to the held-out HH-RLHF slice the sft_hh stage handed on."""
    config = recipe.eval.preference
    heldout = output(run_dir, "sft_hh", "hh_heldout") if config.pairs is None else None
    return config.model_copy(update={"pairs": heldout}) if heldout else config


def _dpo_reference(recipe: Recipe, run_dir: Path, name: str) -> str | None:
    """For the dpo checkpoint: the model DPO started from (its stage records the checkpoint's name, or
    "base" for the student), which DPO's implicit reward is measured against."""
    reference = done_summary(run_dir, "dpo").get("reference") if name == "dpo" else None
    if reference == "base":
        return recipe.models.student.spec
    path = dict(checkpoints(run_dir)).get(reference) if reference else None
    return f"local:{path.resolve()}" if path else None


def _preference(spec: str, config, out: Path, reference: str | None) -> dict:
    from bezoar.evaluate.preference import run_preference

    return run_preference(spec, config, out, reference)


def _weights_identity(spec: str) -> str:
    """What the model's outputs depend on: the weights' fingerprint for local models, else the spec."""
    if not spec.startswith("local"):
        return spec
    from bezoar.llm.weights import content_identity, resolve_model_dir

    return content_identity(resolve_model_dir(spec.partition(":")[2] or None))
