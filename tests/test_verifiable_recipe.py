"""recipes/verifiable.yaml end to end at toy size: constraint prompts -> on-policy pairs -> DPO ->
IFEval on base and dpo, through `bezoar run` (every step in its own process)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from recipe_dicts import step

BEZOAR = str(Path(sys.executable).parent / "bezoar")
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~3 min idle; six step processes, three model loads, one DPO step
def test_verifiable_recipe_runs_at_toy_size(tmp_path, data_dir):
    recipe = yaml.safe_load((REPO / "recipes/verifiable.yaml").read_text())
    recipe["run"]["run_dir"] = str(tmp_path / "run")
    step(recipe, "generate")["constraints"].update(n=8, types=["punctuation:no_comma", "startend:quotation",
                                                               "change_case:english_lowercase"])
    step(recipe, "hh_slices")["heldout_n"] = 4
    step(recipe, "preferences").update(k=3, max_new_tokens=12, margin=0.5)
    step(recipe, "dpo").update(max_steps=1, num_train_epochs=1, per_device_train_batch_size=2,
                               gradient_accumulation_steps=1, max_validation_examples=2, eval_steps=1)
    step(recipe, "eval")["preference"].update(limit=2)
    step(recipe, "eval")["ifeval"].update(limit=2, max_new_tokens=12)
    path = tmp_path / "verifiable.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {"BEZOAR_DATA": str(data_dir), "BEZOAR_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    import os

    result = subprocess.run([BEZOAR, "run", str(path)], capture_output=True, text=True, timeout=1700,
                            env={**os.environ, **env})
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "run"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    stages = manifest["steps"]
    assert all(stages[name]["status"] == "done" for name in stages), {n: s["status"] for n, s in stages.items()}
    # no filter, no SFT: the steps are the recipe's, each run once
    assert manifest["order"] == list(stages) == ["generate", "hh_slices", "preferences", "dpo", "eval", "report"]
    prefs = stages["preferences"]["result"]["counts"]
    assert prefs["prompts"] == 8 and prefs["pairs"] + prefs["ties"] + prefs["all_fail"] + prefs["unscored"] == 8
    assert prefs["pairs"] >= 1 and stages["dpo"]["result"]["counts"]["generated_pairs"] == prefs["pairs"]
    pairs = [json.loads(line) for line in (run_dir / "preferences/pairs.jsonl").read_text().splitlines()]
    assert pairs[0]["licence"]["commercial_use"] == "yes" and pairs[0]["meta"]["instruction_id_list"]
    comparison = json.loads((run_dir / "eval/comparison.json").read_text())
    assert comparison["checkpoints"] == ["base", "dpo"] and "ifeval_inst_strict" in comparison["metrics"]
    assert (run_dir / "report/index.html").read_text().count("IFEval by instruction type") == 1
