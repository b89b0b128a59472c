"""The eval step on a run directory with real LoRA adapters, and the comparison table.

Two adapters over the embedded model stand in for the training steps' output: `sft-1-tiny` with
random LoRA weights (a different model) and `dpo` freshly initialised (B = 0, so exactly the base
model). The identity adapter must score exactly as the base on every metric, with zero deltas."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from recipe_dicts import hand_on, run_step

BEZOAR = str(Path(sys.executable).parent / "bezoar")


def _adapter(directory: Path, random_weights: bool) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bezoar.llm.weights import resolve_model_dir

    base = resolve_model_dir(None)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=not random_weights)
    get_peft_model(model, config).save_pretrained(directory)
    AutoTokenizer.from_pretrained(base).save_pretrained(directory)


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir, embedded):
    from bezoar.config import load_recipe
    from bezoar.llm.cache import CachedModel, CallCache

    tmp = tmp_path_factory.mktemp("eval-step")
    run_dir = tmp / "run"
    _adapter(run_dir / "sft" / "sft-1-tiny", random_weights=True)
    _adapter(run_dir / "dpo", random_weights=False)
    (run_dir / "sft" / "notes").mkdir()  # not a checkpoint the manifest records: ignored
    # as `bezoar run` records the training steps it finished
    hand_on(run_dir, "sft", checkpoints={"sft-1-tiny": run_dir / "sft" / "sft-1-tiny"})
    hand_on(run_dir, "dpo", checkpoints={"dpo": run_dir / "dpo"}, reference="base")
    recipe_file = tmp / "recipe.yaml"
    recipe_file.write_text(f"""
run: {{name: step-test, run_dir: {run_dir}, max_failure_rate: 1.0}}
steps:
  - {{type: sft}}
  - {{type: dpo}}
  - type: eval
    mt_bench: {{questions: {data_dir}/eval/mt_bench/question.jsonl, limit: 1, max_new_tokens: 16,
               judge_max_new_tokens: 16, judge_retries: 0}}
    harness: {{tasks: [bezoar_truthfulqa_mc2], data_dir: {data_dir}/eval/harness, limit: 2, batch_size: 8}}
    preference: {{pairs: {data_dir}/preferences/hh-rlhf/harmless-base/test.jsonl.gz, heldout_n: 3}}
""")
    recipe = load_recipe(recipe_file)
    judge = CachedModel(embedded, CallCache(tmp / "calls.sqlite"), role="judge")  # students share its cache
    summary = run_step(recipe, run_dir, "eval", {"judge": judge}).details
    return {"recipe": recipe, "run_dir": run_dir, "summary": summary, "judge": judge}


@pytest.mark.slow
def test_every_checkpoint_is_evaluated_into_its_folder(run):
    run_dir = run["run_dir"]
    assert list(run["summary"]["checkpoints"]) == ["base", "sft-1-tiny", "dpo"]
    for checkpoint in ("base", "sft-1-tiny", "dpo"):
        for kind in ("mt_bench", "harness", "preference"):
            assert (run_dir / "eval" / kind / checkpoint / "summary.json").exists()
        assert (run_dir / "eval/mt_bench" / checkpoint / "model_answer" / f"{checkpoint}.jsonl").exists()
    dpo = json.loads((run_dir / "eval/preference/dpo/summary.json").read_text())
    assert dpo["metric"] == "dpo_reward" and dpo["reference"] == "local"  # DPO started from the base student


@pytest.mark.slow
def test_identity_adapter_scores_exactly_as_the_base(run):
    run_dir = run["run_dir"]

    def answers(checkpoint):
        path = run_dir / "eval/mt_bench" / checkpoint / "model_answer" / f"{checkpoint}.jsonl"
        return [json.loads(line)["choices"] for line in path.read_text().splitlines()]

    assert answers("dpo") == answers("base")
    assert answers("sft-1-tiny") != answers("base")  # random LoRA weights do change the model
    comparison = json.loads((run_dir / "eval/comparison.json").read_text())
    assert comparison["checkpoints"] == ["base", "sft-1-tiny", "dpo"] and comparison["baseline"] == "base"
    assert {"mt_bench", "bezoar_truthfulqa_mc2", "preference_loglik", "preference_dpo_reward"} <= set(comparison["metrics"])
    rows = {row["checkpoint"]: row["metrics"] for row in comparison["rows"]}
    for metric in ("bezoar_truthfulqa_mc2", "preference_loglik"):
        assert rows["dpo"][metric]["value"] == rows["base"][metric]["value"]
        assert rows["dpo"][metric]["delta_vs_base"]["delta"] == 0.0
        assert rows["dpo"][metric]["delta_vs_base"]["ci95"] == [0.0, 0.0]
    assert "delta_vs_base" not in rows["base"]["bezoar_truthfulqa_mc2"]
    assert "preference_dpo_reward" in rows["dpo"] and "preference_dpo_reward" not in rows["base"]


@pytest.mark.slow
def test_rerun_skips_up_to_date_evaluations_and_compare_prints(run):
    run_dir = run["run_dir"]
    stamps = {p: p.stat().st_mtime_ns for p in (run_dir / "eval").rglob("summary.json")}
    again = run_step(run["recipe"], run_dir, "eval", {"judge": run["judge"]}).details
    assert {p: p.stat().st_mtime_ns for p in (run_dir / "eval").rglob("summary.json")} == stamps
    assert again["checkpoints"] == run["summary"]["checkpoints"]
    shown = subprocess.run([BEZOAR, "compare", str(run_dir), "--only", "base,dpo", "--json", "--out",
                            str(run_dir / "two.json")], capture_output=True, text=True, timeout=600)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["checkpoints"] == ["base", "dpo"]
    table = subprocess.run([BEZOAR, "compare", str(run_dir)], capture_output=True, text=True, timeout=600)
    assert table.returncode == 0 and "sft-1-tiny" in table.stdout and "Δ" in table.stdout


def test_eval_step_errors_name_file_line_and_key(tmp_path):
    from bezoar.config import UNKNOWN_KEY, load_recipe
    from bezoar.errors import ConfigError

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("steps:\n  - type: eval\n    mt_bench:\n      judge_repeat: 3\n    harness:\n"
                      "      data_paths: {winogrand: /x}\n    preference:\n      heldout_n: 0\n")
    with pytest.raises(ConfigError) as error:
        load_recipe(recipe)
    lines = str(error.value).splitlines()
    assert lines[0] == f"{recipe}:4: steps.0.mt_bench.judge_repeat: {UNKNOWN_KEY}"
    assert lines[1].startswith(f"{recipe}:6: steps.0.harness.data_paths: no local task named ['winogrand']")
    assert lines[2].startswith(f"{recipe}:8: steps.0.preference.heldout_n: Input should be greater than or equal to 1")


def test_checkpoints_are_what_the_manifest_records_in_training_order(tmp_path):
    from bezoar.config import Recipe
    from bezoar.errors import ConfigError
    from bezoar.run_state import Manifest
    from bezoar.steps.base import StepContext

    def chosen(run_dir, **settings) -> list[tuple[str, str]]:
        recipe = Recipe.model_validate({"steps": [{"type": "sft"}, {"type": "sft_hh"}, {"type": "dpo"},
                                                  {"type": "eval", **settings}]})
        return recipe.step("eval").chosen(StepContext(recipe, run_dir, "eval"))

    run_dir = tmp_path / "run"
    sft = ("sft-1-lamini", "sft-2-evol", "sft-10-orca")
    folders = {**{name: run_dir / "sft" / name for name in (*sft, "sft-3-stray")},
               "sft_hh": run_dir / "sft_hh", "dpo": run_dir / "dpo"}
    for folder in folders.values():
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text("{}")
    hand_on(run_dir, "sft", checkpoints={n: folders[n] for n in sft})
    hand_on(run_dir, "sft_hh", checkpoints={"sft_hh": folders["sft_hh"]})
    # A dpo step running again: its old result hands nothing on until the step is done.
    Manifest(run_dir).update("dpo", status="running", result={"checkpoints": {"dpo": "dpo"}})
    names = [name for name, _ in chosen(run_dir)]
    assert names == ["base", *sft, "sft_hh"]  # sft-3-stray is a folder, not a recorded checkpoint
    Manifest(run_dir).update("dpo", status="done")
    moved = run_dir.rename(tmp_path / "moved")  # recorded paths are relative to the run: a moved run resolves
    found = chosen(moved)
    assert [name for name, _ in found] == ["base", *sft, "sft_hh", "dpo"]
    assert found[-1][1] == f"local:{(moved / 'dpo').resolve()}"
    only = chosen(moved, checkpoints=["dpo"], include_base=False)
    assert only == [found[-1]]
    with pytest.raises(ConfigError, match=r"eval.checkpoints: \['sft-9'\] are not among the checkpoints"):
        chosen(moved, checkpoints=["sft-9"])


def test_an_adapter_saved_twice_has_one_identity(tmp_path):
    """Two processes save the same adapter with PEFT's target_modules in their own hash order, and the
    Trainer's training_args.bin names its run's path: neither makes another model (else a resumed run
    evaluates "another" checkpoint, with other cache keys, than an uninterrupted one)."""
    from bezoar.llm.weights import content_identity

    for name, modules in (("a", ["q_proj", "k_proj", "v_proj"]), ("b", ["v_proj", "q_proj", "k_proj"])):
        adapter = tmp_path / name / "dpo"
        adapter.mkdir(parents=True)
        (adapter / "adapter_config.json").write_text(json.dumps({"r": 8, "target_modules": modules}))
        (adapter / "adapter_model.safetensors").write_bytes(b"weights")
        (adapter / "training_args.bin").write_bytes(f"runs/{name}".encode())
    assert content_identity(tmp_path / "a" / "dpo") == content_identity(tmp_path / "b" / "dpo")
    (tmp_path / "b" / "dpo" / "adapter_config.json").write_text(json.dumps({"r": 16, "target_modules": ["q_proj"]}))
    assert content_identity(tmp_path / "a" / "dpo") != content_identity(tmp_path / "b" / "dpo")
