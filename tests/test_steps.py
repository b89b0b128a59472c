"""The step protocol: a step type added from outside (tests/plugins/toy_step.py, registered through
BEZOAR_STEPS) runs in a recipe like a built-in one, and plan, validate and status loop over it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BEZOAR = str(Path(sys.executable).parent / "bezoar")
PLUGINS = Path(__file__).parent / "plugins"


def _recipe(tmp_path: Path, data_dir: Path, times: int = 2) -> Path:
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(f"""
run: {{name: toy}}
steps:
  - type: generate
    lamini: {{n: 0}}
    evol: {{n: 0}}
    orca: {{n: 0}}
    constraints: {{n: 3, seeds: ["{data_dir}/seeds/dolly15k_open_qa_subset.jsonl"]}}
  - type: shout
    times: {times}
  - type: shout
    name: louder
    source: shouted
    from: shout
    times: 2
""")
    return recipe


def _bezoar(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "BEZOAR_STEPS": "toy_step",
           "PYTHONPATH": os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([BEZOAR, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_a_step_type_from_outside_runs_in_a_recipe_like_a_built_in_one(tmp_path, data_dir):
    recipe = _recipe(tmp_path, data_dir)
    assert _bezoar(tmp_path, "validate", str(recipe)).returncode == 0
    planned = _bezoar(tmp_path, "plan", str(recipe), "--json")
    assert planned.returncode == 0, planned.stderr
    assert set(json.loads(planned.stdout)["wall_s"]) == {"generate", "shout", "louder"}
    done = _bezoar(tmp_path, "run", str(recipe))
    assert done.returncode == 0, done.stderr
    run_dir = tmp_path / "runs" / "toy"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["order"] == ["generate", "shout", "louder"]
    assert manifest["steps"]["shout"]["result"]["counts"] == {"lines": 6}
    assert manifest["steps"]["louder"]["result"]["counts"] == {"lines": 12}  # shouted twice again
    lines = (run_dir / "louder" / "shouted.jsonl").read_text().splitlines()
    assert len(lines) == 12 and json.loads(lines[0])["text"].isupper()
    status = _bezoar(tmp_path, "status", str(run_dir))
    assert "louder" in status.stdout and "lines 12" in status.stdout
    again = _bezoar(tmp_path, "run", str(recipe))  # unchanged: every step skipped
    assert again.returncode == 0 and "skipped" in again.stderr


def test_a_step_types_own_check_and_unknown_types_are_one_line_each(tmp_path, data_dir):
    refused = _bezoar(tmp_path, "validate", str(_recipe(tmp_path, data_dir, times=0)))
    assert refused.returncode == 2
    assert f"{tmp_path / 'toy.yaml'}:10: steps.1.times: 0 copies make an empty file" in refused.stderr
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("steps:\n  - type: shout\n  - type: shuot\n")
    answer = _bezoar(tmp_path, "validate", str(unknown))
    assert answer.returncode == 2 and f"{unknown}:3: steps.1: `type` must be one of:" in answer.stderr
    assert "shout" in answer.stderr and "Traceback" not in answer.stderr


@pytest.mark.parametrize("layout", ["generate:\n  lamini: {n: 1}\n", "run: {name: x}\nsft_hh: {}\n"])
def test_the_old_layout_is_refused_with_one_line_saying_how_to_write_it(tmp_path, layout):
    recipe = tmp_path / "old.yaml"
    recipe.write_text(layout)
    answer = subprocess.run([BEZOAR, "validate", str(recipe)], capture_output=True, text=True)
    assert answer.returncode == 2 and len(answer.stderr.strip().splitlines()) == 1
    assert "a recipe lists its steps now" in answer.stderr and "- type:" in answer.stderr
