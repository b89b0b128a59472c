"""recipes/rlvr.yaml at toy size through `bezoar run`: generate → preferences → dpo → grpo (prompts that
teach, then GRPO continuing the DPO adapter) → eval → report, killed after the grpo step's first
checkpoint and resumed; and the grpo step's plan (selection samples, rollouts, steps)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from killing import start_run, step_states
from recipe_dicts import shipped, step, write

BEZOAR = str(Path(sys.executable).parent / "bezoar")
TYPES = ["punctuation:no_comma", "startend:quotation", "change_case:english_lowercase"]
GRPO = dict(num_generations=2, per_device_train_batch_size=4, gradient_accumulation_steps=1, max_completion_length=12,
            max_steps=4, eval_steps=2, learning_rate=1e-3, lora={"r": 4, "alpha": 8})


def toy_recipe(tmp_path: Path, data_dir: Path) -> dict:
    recipe = shipped("rlvr", data_dir)
    recipe["run"]["run_dir"] = str(tmp_path / "run")
    step(recipe, "generate")["constraints"].update(n=6, types=TYPES)
    step(recipe, "hh_slices")["heldout_n"] = 2
    step(recipe, "preferences").update(k=3, max_new_tokens=12)
    step(recipe, "dpo").update(max_steps=1, num_train_epochs=1, per_device_train_batch_size=2,
                               gradient_accumulation_steps=1, warmup_steps=0)
    grpo = step(recipe, "grpo")
    grpo.update(GRPO, limit=None)
    grpo["selection"].update(k=4, max_new_tokens=12)
    evaluation = step(recipe, "eval")
    evaluation["preference"]["limit"] = 2
    evaluation["ifeval"].update(limit=2, max_new_tokens=12)
    return recipe


def test_the_plan_counts_selection_samples_rollouts_and_steps(tmp_path, data_dir):
    from bezoar.config import load_recipe
    from bezoar.plan import expected_completion, make_plan

    path = write(tmp_path / "rlvr.yaml", toy_recipe(tmp_path, data_dir))
    plan = make_plan(load_recipe(path), ["grpo"])
    selection, rollouts = plan.lines
    # the embedded student's answers are expected to end before their 12-token budget now and then
    assert (selection.role, selection.calls, selection.completion_tokens) == \
        ("student", 6 * 4, int(6 * 4 * expected_completion(12)))
    assert rollouts.calls == 4 * 4 and rollouts.completion_tokens == 4 * 4 * 12 and "4 steps" in rollouts.note
    assert rollouts.prompt_tokens > 0 and rollouts.wall_s > 0
    assert plan.wall_s["grpo"] > (selection.wall_s or 0) + rollouts.wall_s  # training time on top
    assert plan.assumptions["grpo_selection_kept_share"] == pytest.approx(0.43)


def test_prompts_from_a_file_plan_their_own_count_and_length(tmp_path, data_dir):
    from bezoar.config import load_recipe
    from bezoar.plan import make_plan
    from bezoar.records import write_jsonl
    from test_train_grpo import constraint_records

    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, constraint_records(data_dir, 10))
    recipe = {"run": {"name": "g", "run_dir": str(tmp_path / "run")},
              "steps": [{"type": "grpo", "prompts": str(prompts), **GRPO, "max_steps": None}]}
    plan = make_plan(load_recipe(write(tmp_path / "g.yaml", recipe)))
    rollouts, = plan.lines  # no selection: no sampling line
    assert rollouts.calls == 20 and "5 steps" in rollouts.note  # 10 prompts x 2 completions, 4 a step
    assert rollouts.prompt_tokens != 20 * 64  # measured on the file, not the typical prompt


def test_epochs_decide_the_steps_without_max_steps():
    from bezoar.steps.grpo import GRPOStep

    grpo = GRPOStep(num_generations=4, per_device_train_batch_size=8, gradient_accumulation_steps=2)
    assert grpo.rollouts(10) == (48.0, 3)  # 40 completions over 16 a step: 3 steps, 48 rollouts
    assert GRPOStep(num_iterations=2, per_device_train_batch_size=8, gradient_accumulation_steps=2).rollouts(8) == \
        (32.0, 4)  # each generated batch serves two optimizer steps


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_rlvr_runs_and_a_killed_grpo_step_resumes(tmp_path, data_dir):
    path, run_dir = write(tmp_path / "rlvr.yaml", toy_recipe(tmp_path, data_dir)), tmp_path / "run"
    first, env = start_run(path, tmp_path, data_dir)
    deadline = time.monotonic() + 2000
    while not (run_dir / "grpo" / "checkpoint-2" / "trainer_state.json").exists():
        assert first.poll() is None, "the run ended before the grpo step's first checkpoint"
        assert time.monotonic() < deadline, "no grpo checkpoint"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # mid-GRPO: steps 3 and 4 not taken
    first.wait()
    assert not (run_dir / "grpo" / "summary.json").exists()

    again = subprocess.run([BEZOAR, "run", str(path)], env=env, capture_output=True, text=True, timeout=2000)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "dpo: unchanged" in again.stderr
    steps = step_states(run_dir)
    assert all(s["status"] == "done" for s in steps.values())
    grpo = steps["grpo"]["result"]
    assert grpo["checkpoints"] == {"grpo": "grpo"} and grpo["reference"] == "dpo"  # continued the DPO adapter
    assert grpo["details"]["resumed_from"] == "checkpoint-2" and grpo["counts"]["steps"] == 4
    assert json.loads((run_dir / "grpo" / "bezoar-train.json").read_text())["base"].endswith("dpo")
    assert grpo["details"]["rollout"] == "bezoar"
    assert 0 < grpo["counts"]["kept"] <= grpo["counts"]["prompts"] == 6
    assert grpo["details"]["selection"]["candidates"] == 6 and (run_dir / "grpo" / "selection" / "kept.jsonl").exists()
    assert "reward" in grpo["headline"]
    rows = [json.loads(line) for line in (run_dir / "grpo" / "metrics.jsonl").open()]
    assert [r["step"] for r in rows if "reward" in r] == [1, 2, 3, 4]  # nothing repeated or lost
    assert (run_dir / "grpo" / "adapter_model.safetensors").exists() and not list((run_dir / "grpo").glob("checkpoint-*"))
    comparison = json.loads((run_dir / "eval" / "comparison.json").read_text())
    assert comparison["checkpoints"] == ["base", "grpo"] and "ifeval_inst_strict" in comparison["metrics"]
    assert 'alt="GRPO rewards"' in (run_dir / "report" / "index.html").read_text()
