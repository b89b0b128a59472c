"""recipes/iterative.yaml at toy size: preferences → dpo → preferences → dpo, each round sampling from the
newest model, killed in round 2 and resumed like any other run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

BEZOAR = str(Path(sys.executable).parent / "bezoar")
REPO = Path(__file__).resolve().parents[1]


def toy_recipe(tmp_path: Path) -> Path:
    recipe = yaml.safe_load((REPO / "recipes/iterative.yaml").read_text())
    recipe["run"]["run_dir"] = str(tmp_path / "run")
    steps = recipe["steps"]
    steps[0]["constraints"].update(n=6, types=["punctuation:no_comma", "startend:quotation",
                                               "change_case:english_lowercase"])
    steps[1]["heldout_n"] = 2
    for step in steps:
        if step["type"] == "preferences":
            step.update(k=3, max_new_tokens=12)
        if step["type"] == "dpo":
            step.update(max_steps=1, num_train_epochs=1, per_device_train_batch_size=2, gradient_accumulation_steps=1,
                        warmup_steps=0)
    steps[-2]["preference"]["limit"] = 2
    steps[-2]["ifeval"].update(limit=2, max_new_tokens=12)
    path = tmp_path / "iterative.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _state(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "manifest.json").read_text()).get("steps", {})
    except (OSError, ValueError):
        return {}


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_rounds_sample_from_the_newest_model_and_a_killed_round_resumes(tmp_path, data_dir):
    recipe, run_dir = toy_recipe(tmp_path), tmp_path / "run"
    env = {**os.environ, "BEZOAR_DATA": str(data_dir), "BEZOAR_CACHE_DIR": str(tmp_path / "cache"),
           "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen([BEZOAR, "run", str(recipe)], env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 2000
    while _state(run_dir).get("preferences-2", {}).get("status") != "running" and first.poll() is None:
        assert time.monotonic() < deadline, "round 2 never started"
        time.sleep(0.2)
    time.sleep(3)
    os.killpg(first.pid, signal.SIGKILL)  # mid-round 2: its sampling is cut short
    first.wait()
    assert _state(run_dir)["dpo-1"]["status"] == "done"
    again = subprocess.run([BEZOAR, "run", str(recipe)], env=env, capture_output=True, text=True, timeout=2000)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "dpo-1: unchanged" in again.stderr  # round 1 is not done again
    steps = _state(run_dir)
    assert all(s["status"] == "done" for s in steps.values())
    round_2 = steps["preferences-2"]["result"]["details"]["student"]
    assert round_2 != steps["preferences-1"]["result"]["details"]["student"]  # sampled from dpo-1, not the base
    assert steps["dpo-1"]["result"]["reference"] == "base" and steps["dpo-2"]["result"]["reference"] == "dpo-1"
    comparison = json.loads((run_dir / "eval" / "comparison.json").read_text())
    assert comparison["checkpoints"] == ["base", "dpo-1", "dpo-2"] and "ifeval_inst_strict" in comparison["metrics"]
    assert (run_dir / "report" / "index.html").read_text().count("IFEval by instruction type") == 1
