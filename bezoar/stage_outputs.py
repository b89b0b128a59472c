"""What a stage hands on: recorded in the run's manifest, asked for by stage name.

A stage's summary (the pipeline records it in manifest.json once the stage is done) carries

    outputs      {name: path}  the files it hands on: generate's records per method and its constraint
                 prompts, filter's kept records per method, sft_hh's HH-RLHF slices, preferences' pairs
    checkpoints  {name: path}  the models it trained, in training order (sft-1-lamini, ..., sft-hh, dpo)

with paths relative to the run directory, so a moved run still resolves. A later stage asks here, by
the earlier stage's name, instead of scanning directories or knowing another stage's file names.
Only a stage the manifest marks done hands anything on (a failed or interrupted one has no outputs).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from bezoar.errors import DataError
from bezoar.stages import STAGE_NAMES

RECORDS_VERSION = 1
"""Part of every stage's fingerprint: bumped when what stages record changes, so that a run directory
made before re-runs its stages into the new shape (cheaply: calls come from the call cache, and a
finished training run is recognised by its own fingerprint and not trained again)."""

TRAINING = ("sft", "sft_hh", "dpo")
"""The stages that record checkpoints, in order: each continues from the newest before it."""


def handed_on(run_dir: Path, paths: Mapping[str, Path | str]) -> dict[str, str]:
    """`paths` as a summary records them: relative to the run directory when inside it."""
    root = Path(run_dir).resolve()
    recorded = {}
    for name, path in paths.items():
        full = Path(path).resolve()
        recorded[name] = os.path.relpath(full, root) if full.is_relative_to(root) else str(full)
    return recorded


def done_summary(run_dir: Path, stage: str) -> dict:
    """The summary the manifest records for `stage`, if that stage is done; else {}."""
    from bezoar.run_state import read_manifest

    path = Path(run_dir) / "manifest.json"
    if stage not in STAGE_NAMES or not path.exists():
        return {}
    entry = read_manifest(path)["stages"].get(stage) or {}
    return (entry.get("summary") or {}) if entry.get("status") == "done" else {}


def outputs(run_dir: Path, stage: str) -> dict[str, Path]:
    """Every file `stage` handed on, by name ({} until it is done)."""
    recorded = done_summary(run_dir, stage).get("outputs") or {}
    return {name: _resolve(run_dir, path) for name, path in recorded.items() if path}


def output(run_dir: Path, stage: str, name: str) -> Path | None:
    """The file `stage` handed on as `name`, or None if it has not (yet) recorded one."""
    return outputs(run_dir, stage).get(name)


def required_output(run_dir: Path, stage: str, name: str) -> Path:
    """`output`, or a one-line DataError saying which stage to run."""
    found = output(run_dir, stage, name)
    if found is None:
        raise DataError(f"{run_dir}: the {stage} stage has not handed on '{name}' (its manifest entry is missing, "
                        f"not done or has no such output); run that stage first (bezoar run RECIPE --from {stage})")
    return found


def checkpoints(run_dir: Path, stages: tuple[str, ...] = TRAINING) -> list[tuple[str, Path]]:
    """(name, directory) of every model the done `stages` trained, in training order."""
    found = []
    for stage in stages:
        recorded = done_summary(run_dir, stage).get("checkpoints") or {}
        found += [(name, _resolve(run_dir, path)) for name, path in recorded.items()]
    return found


def continued_from(run_dir: Path, before: str, student_spec: str) -> tuple[str, str]:
    """(name, model) that `before` trains or samples from: the newest checkpoint a done stage before it
    trained, as (its name, its directory); else ("base", the student spec)."""
    earlier = tuple(s for s in TRAINING if STAGE_NAMES.index(s) < STAGE_NAMES.index(before))
    trained = checkpoints(run_dir, earlier)
    return (trained[-1][0], str(trained[-1][1])) if trained else ("base", student_spec)


def _resolve(run_dir: Path, path: str) -> Path:
    return Path(path) if Path(path).is_absolute() else Path(run_dir) / path
