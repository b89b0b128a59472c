"""What steps hand on to each other: read from the run's manifest, by step and output name.

A done step's result (`bezoar.steps.base.StepResult`, recorded in manifest.json) carries `outputs`
{name: path} and `checkpoints` {name: directory}, relative to the run directory so that a moved run
still resolves. A later step asks here for a name among the steps before it, nearest first (or in the
one step `from:` names), instead of scanning folders or knowing another step's file names. Only a step
the manifest marks done hands anything on: a failed or interrupted one has no outputs.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from bezoar.errors import DataError
from bezoar.run_state import read_manifest

RECORDS_VERSION = 2
"""Part of every step's fingerprint: bumped when what steps record changes, so that a run directory made
before re-runs its steps into the new shape (calls come from the call cache)."""


def relative(run_dir: Path, paths: Mapping[str, Path | str]) -> dict[str, str]:
    """`paths` as a result records them: relative to the run directory when inside it."""
    root = Path(run_dir).resolve()
    recorded = {}
    for name, path in paths.items():
        full = Path(path).resolve()
        recorded[name] = os.path.relpath(full, root) if full.is_relative_to(root) else str(full)
    return recorded


def done_results(run_dir: Path) -> dict[str, dict]:
    """Step name -> its recorded result, for every step the manifest marks done."""

    path = Path(run_dir) / "manifest.json"
    if not path.exists():
        return {}
    steps = read_manifest(path).get("steps", {})
    return {name: entry.get("result") or {} for name, entry in steps.items() if entry.get("status") == "done"}


def find(run_dir: Path, before: Iterable[str], output: str, source: str | None = None) -> Path | None:
    """The file handed on as `output` by `source`, or by the nearest done step in `before` that has one."""
    results = done_results(run_dir)
    names = [source] if source else list(before)[::-1]
    for name in names:
        path = (results.get(name) or {}).get("outputs", {}).get(output)
        if path:
            return resolve(run_dir, path)
    return None


def required(run_dir: Path, before: Iterable[str], output: str, source: str | None = None,
             maker: str | None = None) -> Path:
    """`find`, or a one-line DataError saying which step to run: `maker`, the step that would hand it on."""
    before = list(before)
    found = find(run_dir, before, output, source)
    if found is None and maker:
        named = f"the step '{maker}'" + (" (its `from:`)" if maker == source else "")
        raise DataError(f"{run_dir}: {named} has not handed on '{output}' (it is not done in this run); run it "
                        f"first: bezoar run RECIPE --from {maker}")
    if found is None:
        where = f"the step '{source}' (its `from:`) has not" if source else \
            f"no done step before this one ({', '.join(before) or 'none'})"
        raise DataError(f"{run_dir}: {where} handed on '{output}'; run the step that makes it first "
                        "(bezoar run RECIPE --from STEP), or check the recipe's step order and `from:`")
    return found


def checkpoints(run_dir: Path, steps: Iterable[str]) -> list[tuple[str, Path]]:
    """(name, directory) of every model the done `steps` trained, in their order."""
    results = done_results(run_dir)
    found = []
    for step in steps:
        recorded = (results.get(step) or {}).get("checkpoints") or {}
        found += [(name, resolve(run_dir, path)) for name, path in recorded.items()]
    return found


def result_of(run_dir: Path, step: str) -> dict:
    """The recorded result of `step` if it is done, else {}."""
    return done_results(run_dir).get(step, {})


def resolve(run_dir: Path, path: str) -> Path:
    return Path(path) if Path(path).is_absolute() else Path(run_dir) / path
