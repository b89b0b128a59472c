"""`bezoar run` decodes in the mode that `--deterministic` or the recipe's `run.deterministic` asks for, in
the step's own process, and the eval step records it: in each summary.json, the comparison and its result.
Switching modes re-runs a step that decodes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

BEZOAR = str(Path(sys.executable).parent / "bezoar")
pytestmark = pytest.mark.timeout(900)
DETERMINISTIC = {"mode": "deterministic", "dtype": "float32"}


def _recipe(tmp_path: Path, data_dir: Path, name: str, deterministic: bool) -> Path:
    ifeval = {"enabled": True, "prompts": str(data_dir / "eval/ifeval/input_data.jsonl"), "limit": 2,
              "max_new_tokens": 8, "bootstrap_samples": 10}
    recipe = {"run": {"name": name, "run_dir": str(tmp_path / name), "deterministic": deterministic},
              "steps": [{"type": "eval", "mt_bench": {"enabled": False}, "harness": {"enabled": False},
                         "preference": {"enabled": False}, "ifeval": ifeval}]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _run(recipe: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "BEZOAR_DETERMINISTIC": "0"}  # the default, fast: only the recipe or the flag may change it
    done = subprocess.run([BEZOAR, "run", str(recipe), "--no-probe", *flags], capture_output=True, text=True,
                          env=env, timeout=800)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _recorded(run_dir: Path) -> tuple[dict, dict]:
    """(the IFEval summary's decoding, the eval step's result) of a run."""
    summary = json.loads((run_dir / "eval" / "ifeval" / "base" / "summary.json").read_text())
    return summary["decoding"], json.loads((run_dir / "manifest.json").read_text())["steps"]["eval"]["result"]


def test_the_flag_and_the_recipe_switch_the_step_process_to_deterministic_decoding(tmp_path, data_dir):
    from bezoar.llm.device import plan_device

    fast_dtype = plan_device("auto", exact=False).dtype_name  # what this machine decodes in by default
    recipe = _recipe(tmp_path, data_dir, "modes", deterministic=False)
    _run(recipe)
    decoding, result = _recorded(tmp_path / "modes")
    assert decoding == {"mode": "fast", "dtype": fast_dtype}
    compared = DETERMINISTIC if fast_dtype == "float32" else decoding  # fp32 is batch-invariant in either mode
    assert result["details"]["decoding"] == compared
    assert json.loads((tmp_path / "modes" / "eval" / "comparison.json").read_text())["decoding"] == compared
    assert f"{compared['mode']} mode ({fast_dtype})" in result["headline"]

    again = _run(recipe, "--deterministic")  # the same recipe: the eval step decodes, so it runs again
    assert "unchanged since" not in again.stderr
    decoding, result = _recorded(tmp_path / "modes")
    assert decoding == DETERMINISTIC
    assert result["details"]["decoding"] == DETERMINISTIC
    assert "deterministic mode (float32)" in result["headline"]
    assert "unchanged since" in _run(recipe, "--deterministic").stderr  # and is then up to date

    _run(_recipe(tmp_path, data_dir, "in-recipe", deterministic=True))  # run.deterministic alone, no flag
    decoding, result = _recorded(tmp_path / "in-recipe")
    assert decoding == DETERMINISTIC and result["details"]["decoding"] == DETERMINISTIC
