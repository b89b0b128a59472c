"""`bezoar run`: the stages in order over one run directory, with a manifest, skip/resume and budgets.

    runs/NAME/manifest.json   per stage: status, times, fingerprint, input hashes, config, summary,
                              calls/cache hits/tokens/wall time/cost per role; plus versions and recipe
    runs/NAME/cache/          the call cache shared by every stage of the run

A stage is skipped when its fingerprint (its config, the models it uses, the seed, its input files'
hashes and the fingerprint of the stage before) equals the one recorded when it last finished, so
changing a stage re-runs it and everything after it. The manifest is written when a stage starts and
again, last, when it ends: a stage is done only once the manifest says so. Each stage runs in a
child process of its own (`bezoar.stage_process`), so what one stage allocates is gone before the next.
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

from bezoar.config import Recipe
from bezoar.errors import BezoarError, BudgetExceeded, ConfigError, DataError
from bezoar.hashing import canonical_hash, file_sha256
from bezoar.llm.cache import Usage
from bezoar.records import write_json
from bezoar.stage_outputs import RECORDS_VERSION
from bezoar.stages import STAGE_NAMES, STAGES, Stage, stage_named

log = logging.getLogger(__name__)

VERSIONED = ("bezoar", "torch", "transformers", "peft", "trl", "datasets", "accelerate", "lm_eval", "httpx")


def input_files(section: Any) -> list[Path]:
    """Every file path a config section names (seeds, pairs, question files, ...)."""
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


def check_inputs(recipe: Recipe, stages: list[Stage], source: Path) -> None:
    """Every named input exists, before any stage starts (so nothing is touched on a typo)."""
    missing = [f"{path}" for stage in stages for section in stage.sections
               for path in input_files(getattr(recipe, section)) if not path.exists()]
    if missing:
        raise DataError(f"{source}: input file(s) not found: {', '.join(sorted(set(missing)))}")


class Manifest:
    """runs/NAME/manifest.json, rewritten atomically at every change."""

    def __init__(self, run_dir: Path):
        from bezoar.run_state import load_manifest

        self.path = run_dir / "manifest.json"
        self.data: dict = load_manifest(run_dir)  # a corrupt one is moved aside and rebuilt
        self.data.setdefault("stages", {})

    def stage(self, name: str) -> dict:
        return self.data["stages"].get(name, {})

    def update(self, name: str, **fields) -> None:
        from bezoar.run_state import save_stage_record

        self.data["stages"].setdefault(name, {}).update(fields)
        self.save()
        save_stage_record(self.path.parent, name, self.data["stages"][name])  # what a rebuild reads

    def save(self) -> None:
        write_json(self.path, self.data)


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in VERSIONED:
        try:
            found[package] = metadata.version(package.replace("_", "-"))
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def fingerprint(recipe: Recipe, stage: Stage, previous: str) -> tuple[str, dict[str, str]]:
    inputs = {str(p): file_sha256(p) for s in stage.sections for p in input_files(getattr(recipe, s)) if p.is_file()}
    config = {s: getattr(recipe, s).model_dump(mode="json") for s in stage.sections}
    roles = {r: getattr(recipe.models, r).model_dump(mode="json") for r in stage.roles}
    basis = {"stage": stage.name, "config": config, "roles": roles, "seed": recipe.run.seed,
             "commercial": recipe.run.require_commercial_use, "inputs": inputs, "previous": previous,
             "records": RECORDS_VERSION}
    return canonical_hash(basis), inputs


def refuse_foreign(recipe: Recipe, run_dir: Path, source: Path, data: dict | None = None) -> None:
    """Refuses a directory that another recipe made; reads only, so a refusal touches nothing (not even the lock)."""
    if data is None:
        from bezoar.run_state import ManifestCorrupt, read_manifest

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
                         recipe=recipe.model_dump(mode="json"))
    return manifest


def select(start: str | None, only: str | None) -> tuple[list[Stage], set[str]]:
    """(stages to consider, stages forced to re-run)."""
    if only:
        return [stage_named(only)], {only}
    if start:
        first = STAGE_NAMES.index(stage_named(start).name)
        return list(STAGES), set(STAGE_NAMES[first:])
    return list(STAGES), set()


def run(recipe: Recipe, source: Path, start: str | None = None, only: str | None = None,
        run_dir: Path | None = None, probe: bool = True, retry_failed: bool = False) -> dict:
    """Run the recipe; returns the manifest's data. Raises BezoarError on bad input or a budget stop.

    `retry_failed` asks again the items that failed (each stage's failed.jsonl): the first stage with
    failed items and every stage after it run again; everything that succeeded comes from the cache."""
    from bezoar.plan import make_plan
    from bezoar.preflight import probe_remote_roles, refuse_before_spending
    from bezoar.run_state import RunLock

    stages, forced = select(start, only)
    run_dir = Path(run_dir or recipe.run.directory)
    check_inputs(recipe, stages, source)
    refuse_foreign(recipe, run_dir, source)
    refuse_before_spending(recipe, source, [s.name for s in stages], run_dir)
    with RunLock(run_dir):  # a second `bezoar run` here refuses at once, naming this PID
        if probe:
            probe_remote_roles(recipe, [s.name for s in stages])
        manifest = open_run(recipe, run_dir, source)
        names = [s.name for s in stages]
        manifest.data["plan"] = make_plan(recipe, names).over(manifest.data.get("plan"), names)
        manifest.save()  # the plan (and a rebuilt manifest) on disk even if every stage is skipped
        if retry_failed:
            forced |= stages_with_failures(manifest, stages)
        totals: dict[str, Usage] = {}  # per role, over this invocation: what budgets count
        previous = ""
        for stage in STAGES:
            print_, inputs = fingerprint(recipe, stage, previous)
            previous = print_
            if stage not in stages:
                continue
            record = manifest.stage(stage.name)
            if stage.name not in forced and record.get("status") == "done" and record.get("fingerprint") == print_:
                log.info("%s: unchanged since %s, skipped", stage.name, record.get("ended"))
                continue
            totals = run_stage(stage, recipe, run_dir, manifest, print_, inputs, totals, retry_failed)
        return manifest.data


def stages_with_failures(manifest: Manifest, stages: list[Stage]) -> set[str]:
    """The first stage that recorded failed items, and every stage after it (their inputs change)."""
    names = [s.name for s in stages]
    failing = [n for n in names if manifest.stage(n).get("failed_items")]
    return set(names[names.index(failing[0]):]) if failing else set()


def run_stage(stage: Stage, recipe: Recipe, run_dir: Path, manifest: Manifest, print_: str, inputs: dict,
              totals: dict[str, Usage], retry_failed: bool = False) -> dict[str, Usage]:
    """One stage, in a process of its own (see `bezoar.stage_process`); returns the updated totals."""
    from bezoar.stage_process import StageOutcome, run_stage_process

    log.info("%s: starting", stage.name)
    started = time.perf_counter()
    manifest.update(stage.name, status="running", started=_now(), ended=None, fingerprint=None, error=None,
                    pid=os.getpid(), host=platform.node(),
                    inputs=inputs, config={s: getattr(recipe, s).model_dump(mode="json") for s in stage.sections})
    outcome = StageOutcome()
    try:
        outcome = run_stage_process(stage.function, recipe, run_dir, run_dir / "cache" / "calls.sqlite", totals,
                                    retry_failures=retry_failed)
        outcome.raise_error(stage.name)
    except BaseException as error:
        status = "stopped" if isinstance(error, BudgetExceeded) else "failed"
        message = str(error) if isinstance(error, BezoarError) else f"{type(error).__name__}: {error}"
        _finish(manifest, stage, outcome, started, status=status, error=message)
        raise
    _finish(manifest, stage, outcome, started, status="done", summary=outcome.summary, fingerprint=print_,
            failed_items=(outcome.summary or {}).get("failed_items", 0))
    log.info("%s: done in %.0f s", stage.name, time.perf_counter() - started)
    return outcome.totals


def _finish(manifest: Manifest, stage: Stage, outcome, started: float, **fields) -> None:
    # A training stage under `accelerate launch` (bezoar.train.launch) reports its ranks' peaks: their sum.
    launched = ((outcome.summary or {}).get("launch") or {}).get("peak_rss_mb_total", 0)
    manifest.update(stage.name, ended=_now(), wall_s=round(time.perf_counter() - started, 2), usage=outcome.usage,
                    peak_rss_mb=max(outcome.peak_rss_mb, launched), **fields)


def is_interrupted(stage: dict) -> bool:
    """A stage marked running whose process is gone (killed, crashed) on this host."""
    if stage.get("status") != "running" or stage.get("host") != platform.node() or not stage.get("pid"):
        return False
    try:
        os.kill(stage["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
