"""`bezoar run`: the recipe's steps in order over one run directory, with a manifest, skip/resume and budgets.

    runs/NAME/manifest.json   per step: status, times, fingerprint, input hashes, config, result,
                              calls/cache hits/tokens/wall time/cost per role (bezoar.run_state)
    runs/NAME/STEP/           each step's own folder
    runs/NAME/cache/          the call cache shared by every step of the run

A step is skipped when its fingerprint (its settings, the models it calls, the seed, its input files'
hashes, for a step that decodes the decoding mode, and the fingerprint of the step before) equals the
one recorded when it last finished, so changing a step re-runs it and every step after it. The manifest
is written when a step starts and again, last, when it ends: a step is done only once the manifest says
so. Each step runs in a child process of its own (`bezoar.processes`), so what one step allocates is gone
before the next; it decodes in the mode of `run.deterministic` or of `bezoar run --deterministic`.
"""
from __future__ import annotations

import logging
import os
import platform
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from bezoar.config import Recipe, RunConfig
from bezoar.errors import BatchPending, BezoarError, BudgetExceeded, ConfigError, DataError
from bezoar.handoff import RECORDS_VERSION
from bezoar.hashing import canonical_hash, file_sha256
from bezoar.llm.cache import CallCache, Usage
from bezoar.llm.device import deterministic, set_deterministic
from bezoar.plan import make_plan
from bezoar.processes import _portable, launched, run_call
from bezoar.roles import LazyModels, usage_from_json, usage_to_json
from bezoar.run_state import Manifest, ManifestCorrupt, ProgressFile, RunLock, read_manifest
from bezoar.steps.base import Progress, Step, StepContext, StepResult

log = logging.getLogger(__name__)

BATCH_PLUMBING = {"batch", "batch_price_factor", "batch_poll_s", "batch_wait_s", "batch_max_requests"}
"""How a role's calls travel, not what they answer (the call cache's keys leave them out too): switching
a role to provider batches, or polling it differently, re-runs no finished step."""
VERSIONED = ("bezoar", "torch", "transformers", "peft", "trl", "datasets", "accelerate", "lm_eval", "httpx")


def input_files(section: Any) -> list[Path]:
    """Every file path a step's settings name (seeds, pairs, question files, ...)."""
    found: list[Path] = []
    if isinstance(section, BaseModel) and getattr(section, "enabled", True) is False:
        return found  # a switched-off evaluation's default data path need not exist (eval.ifeval)
    if isinstance(section, BaseModel):
        for name in type(section).model_fields:
            found += input_files(getattr(section, name))
    elif isinstance(section, (list, tuple)):
        for item in section:
            found += input_files(item)
    elif isinstance(section, dict):
        for item in section.values():
            found += input_files(item)
    elif isinstance(section, Path):
        found.append(section)
    return found


def check_inputs(recipe: Recipe, names: list[str], source: Path) -> None:
    """Every named input exists, before any step starts (so nothing is touched on a typo)."""
    missing = [str(path) for name in names for path in input_files(recipe.step(name)) if not path.exists()]
    if missing:
        raise DataError(f"{source}: input file(s) not found: {', '.join(sorted(set(missing)))}")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in VERSIONED:
        try:
            found[package] = metadata.version(package.replace("_", "-"))
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def fingerprint(recipe: Recipe, step: Step, previous: str) -> tuple[str, dict[str, str]]:
    """What decides a step's result, hashed: (fingerprint, {input file: sha256})."""
    inputs = {str(p): file_sha256(p) for p in input_files(step) if p.is_file()}
    roles = {r: config.model_dump(mode="json", exclude=BATCH_PLUMBING) for r, (_, config) in step.roles(recipe).items()}
    basis = {"step": step.model_dump(mode="json"), "roles": roles, "seed": recipe.run.seed,
             "commercial": recipe.run.require_commercial_use, "inputs": inputs, "previous": previous,
             "records": RECORDS_VERSION}
    if step.DECODES and (recipe.run.deterministic or deterministic()):
        # Only then, so a run made before the modes existed (all fp32, as deterministic is) is not redone
        # in fast mode; switching modes re-runs the steps that decode (finished calls of a mode whose dtype
        # is unchanged come from the cache) and, through `previous`, every step after them.
        basis["decoding"] = "deterministic"
    return canonical_hash(basis), inputs


def refuse_foreign(recipe: Recipe, run_dir: Path, source: Path, data: dict | None = None) -> None:
    """Refuses a directory that another recipe made; reads only, so a refusal touches nothing (not even the lock)."""
    if data is None:
        try:
            data = read_manifest(run_dir / "manifest.json") if (run_dir / "manifest.json").exists() else {}
        except ManifestCorrupt:
            return  # rebuilt by open_run, under the lock
    made_by = data.get("run_name")
    if made_by is not None and made_by != recipe.run.name:
        raise ConfigError(f"{run_dir}: this run directory was made by recipe '{data.get('recipe_path')}' "
                          f"(run.name '{made_by}'), not by {source} (run.name '{recipe.run.name}'); "
                          "use another --run-dir or that recipe")


def open_run(recipe: Recipe, run_dir: Path, source: Path) -> Manifest:
    """The run's manifest; refuses a directory that another recipe made."""
    manifest = Manifest(run_dir)
    refuse_foreign(recipe, run_dir, source, manifest.data)
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest.data.update(run_name=recipe.run.name, recipe_path=str(source), versions=versions(),
                         recipe=recipe.model_dump(mode="json", by_alias=True), order=recipe.names())
    return manifest


def select(recipe: Recipe, start: str | None, only: str | None) -> tuple[list[str], set[str]]:
    """(steps to consider, steps forced to re-run), by name."""
    names = recipe.names()
    if only:
        recipe.step(only)
        return [only], {only}
    if start:
        recipe.step(start)
        return names, set(names[names.index(start):])
    return names, set()


def run(recipe: Recipe, source: Path, start: str | None = None, only: str | None = None,
        run_dir: Path | None = None, probe: bool = True, retry_failed: bool = False) -> dict:
    """Run the recipe; returns the manifest's data. Raises BezoarError on bad input or a budget stop.

    `retry_failed` asks again the items that failed (each step's failed.jsonl): the first step with
    failed items and every step after it run again; everything that succeeded comes from the cache."""
    from bezoar.preflight import probe_remote_roles, refuse_before_spending

    chosen, forced = select(recipe, start, only)
    run_dir = Path(run_dir or recipe.run.directory)
    check_inputs(recipe, chosen, source)
    refuse_foreign(recipe, run_dir, source)
    refuse_before_spending(recipe, source, chosen, run_dir)
    with RunLock(run_dir):  # a second `bezoar run` here refuses at once, naming this PID
        if probe:
            probe_remote_roles(recipe, chosen)
        manifest = open_run(recipe, run_dir, source)
        manifest.data["plan"] = make_plan(recipe, chosen, run_dir).over(manifest.data.get("plan"), chosen)
        manifest.save()  # the plan (and a rebuilt manifest) on disk even if every step is skipped
        if retry_failed:
            forced |= steps_with_failures(manifest, chosen)
        totals: dict[str, Usage] = {}  # per role, over this invocation: what budgets count
        previous = ""
        for step in recipe.steps:
            print_, inputs = fingerprint(recipe, step, previous)
            previous = print_
            if step.name not in chosen:
                continue
            record = manifest.step(step.name)
            if step.name not in forced and record.get("status") == "done" and record.get("fingerprint") == print_:
                log.info("%s: unchanged since %s, skipped", step.name, record.get("ended"))
                continue
            totals = run_step(step, recipe, run_dir, manifest, print_, inputs, totals, retry_failed)
        return manifest.data


def steps_with_failures(manifest: Manifest, names: list[str]) -> set[str]:
    """The first step that recorded failed items, and every step after it (their inputs change)."""
    failing = [n for n in names if manifest.step(n).get("failed_items")]
    return set(names[names.index(failing[0]):]) if failing else set()


def run_step(step: Step, recipe: Recipe, run_dir: Path, manifest: Manifest, print_: str, inputs: dict,
             totals: dict[str, Usage], retry_failed: bool = False) -> dict[str, Usage]:
    """One step, in a process of its own; returns the run's usage totals with this step's added."""

    log.info("%s: starting", step.name)
    started = time.perf_counter()
    planned = make_plan(recipe, [step.name], run_dir).to_json()  # with what earlier steps of this run measured
    manifest.update(step.name, type=step.type, status="running", started=_now(), ended=None, fingerprint=None,
                    error=None, pid=os.getpid(), host=platform.node(), inputs=inputs,
                    config=step.model_dump(mode="json", by_alias=True), planned=planned)
    sent: dict = {}
    try:
        outcome = run_call("bezoar.pipeline:run_step_process", {
            "recipe": recipe.model_dump(mode="json", context={"credentials": True}),  # the child needs URL credentials
            "run_dir": str(run_dir), "name": step.name, "totals": usage_to_json(totals),
            "retry_failed": retry_failed}, run_dir)
        sent = outcome.result
        sent["peak_rss_mb"] = max([*outcome.peak_rss_mb, *sent.get("launched_rss_mb", [])])
        if sent.get("error") is not None:
            raise sent["error"]
    except BaseException as error:
        status = {BudgetExceeded: "stopped", BatchPending: "waiting"}.get(type(error), "failed")
        message = str(error) if isinstance(error, BezoarError) else f"{type(error).__name__}: {error}"
        _finish(manifest, step.name, sent, started, status=status, error=message)
        raise
    result = StepResult.model_validate(sent["result"])
    _finish(manifest, step.name, sent, started, status="done", result=result.model_dump(mode="json"),
            fingerprint=print_, failed_items=result.failed_items)
    log.info("%s: done in %.0f s", step.name, time.perf_counter() - started)
    return usage_from_json(sent.get("totals") or {}) or totals


def _finish(manifest: Manifest, name: str, sent: dict, started: float, **fields) -> None:
    launched_rss = sent.get("launched_rss_mb") or []
    if launched_rss:  # a launched training step: each rank's peak (every rank loads the model)
        fields["ranks_peak_rss_mb"] = launched_rss
    manifest.update(name, ended=_now(), wall_s=round(time.perf_counter() - started, 2), usage=sent.get("usage", {}),
                    peak_rss_mb=max(sent.get("peak_rss_mb", 0), sum(launched_rss)), **fields)


def run_step_process(recipe: dict, run_dir: str, name: str, totals: dict, retry_failed: bool = False) -> dict:
    """In the step's own process: run it (or start its ranks under accelerate and wait); returns its result,
    what each role spent, the run's totals since, and an error it raised (BezoarError or Ctrl-C)."""

    built = Recipe.model_validate(recipe)
    follow_run(built.run)
    step = built.step(name)
    launch = getattr(step, "launch", None)
    if launch is not None and launch.wanted and not launched():  # this process only starts the ranks and waits
        ranks = run_call("bezoar.pipeline:run_step_here", {"recipe": recipe, "run_dir": run_dir, "name": name},
                         Path(run_dir), launch.num_processes, launch.config_file)
        return {"result": ranks.result, "usage": {}, "totals": totals, "launched_rss_mb": ranks.peak_rss_mb}
    models = LazyModels(dict(built.models), CallCache(Path(run_dir) / "cache" / "calls.sqlite",
                                                      retry_failures=retry_failed), usage_from_json(totals))
    context = StepContext(built, Path(run_dir), name, models, retry_failed, Progress(ProgressFile(Path(run_dir), name)))
    sent: dict = {"result": None, "error": None}
    try:
        sent["result"] = step.run(context).model_dump(mode="json")
    except (BezoarError, KeyboardInterrupt) as error:
        sent["error"] = _portable(error)
    return {**sent, "usage": models.spent(), "totals": usage_to_json(models.totals())}


def run_step_here(recipe: dict, run_dir: str, name: str) -> dict:
    """On each rank of a launched training step: run the step in place (ranks call no model roles)."""
    built = Recipe.model_validate(recipe)
    follow_run(built.run)
    return built.step(name).run(StepContext(built, Path(run_dir), name)).model_dump(mode="json")


def follow_run(run: RunConfig) -> None:
    """In a step's process: `run.deterministic: true` switches it (and the ranks it starts) to deterministic
    decoding. False leaves the mode it inherited: `bezoar run --deterministic` sets BEZOAR_DETERMINISTIC in
    the parent, which every step process inherits."""
    if run.deterministic:
        set_deterministic(True)


def is_interrupted(entry: dict) -> bool:
    """A step marked running whose process is gone (killed, crashed) on this host."""
    if entry.get("status") != "running" or entry.get("host") != platform.node() or not entry.get("pid"):
        return False
    try:
        os.kill(entry["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
