"""Recipes as plain dicts for tests that change a shipped recipe (its steps found by name or type), and a
run's manifest entry for a step a test did not run."""
from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DATA_DEFAULT = "${BEZOAR_DATA:-../shared/data}"


def shipped(name: str, data_dir: Path) -> dict:
    """recipes/NAME.yaml as a dict, its data paths pointing at `data_dir`."""
    return yaml.safe_load((REPO / "recipes" / f"{name}.yaml").read_text().replace(DATA_DEFAULT, str(data_dir)))


def step(recipe: dict, key: str) -> dict:
    """The step of `recipe` named `key`, else the first of type `key` (a KeyError when there is none)."""
    steps = recipe["steps"]
    found = next((s for s in steps if s.get("name") == key), None) or next((s for s in steps if s["type"] == key), None)
    if found is None:
        raise KeyError(f"no step {key!r} in {[s.get('name') or s['type'] for s in steps]}")
    return found


def without(recipe: dict, *types: str) -> dict:
    """`recipe` with its steps of these types left out."""
    return {**recipe, "steps": [s for s in recipe["steps"] if s["type"] not in types]}


def write(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def hand_on(run_dir: Path, name: str, outputs: dict | None = None, checkpoints: dict | None = None,
            **result) -> None:
    """Record in RUN_DIR's manifest that step `name` is done and handed on these files and checkpoints, as
    the pipeline does when a step ends (so that a test can run the next step alone, in-process)."""
    from bezoar.handoff import relative
    from bezoar.run_state import Manifest
    from bezoar.steps.base import StepResult

    done = StepResult(outputs=relative(run_dir, outputs or {}), checkpoints=relative(run_dir, checkpoints or {}),
                      **result)
    Manifest(run_dir).update(name, status="done", result=done.model_dump(mode="json"))


def run_step(recipe, run_dir: Path, name: str, models=None):
    """Step `name` of a loaded recipe run in this process, its result recorded as done in RUN_DIR's manifest
    (what the pipeline does around a step's process, so that the next step finds what it handed on)."""
    from bezoar.run_state import Manifest
    from bezoar.steps.base import StepContext

    result = recipe.step(name).run(StepContext(recipe, Path(run_dir), name, models or {}))
    Manifest(Path(run_dir)).update(name, status="done", result=result.model_dump(mode="json"))
    return result
