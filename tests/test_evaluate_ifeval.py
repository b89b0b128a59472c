"""IFEval offline: the embedded model's answers scored by lm-eval's checkers, equal to lm-eval's own
`ifeval` task run on the same answers; the eval step's entry and the comparison table."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BEZOAR = str(Path(sys.executable).parent / "bezoar")
IFEVAL = "eval/ifeval/input_data.jsonl"


def test_punkt_tables_are_written_offline_in_nltk_layout(tmp_path):
    from nltk.tokenize.punkt import PunktTokenizer

    from bezoar.evaluate.ifeval import PUNKT_FILES, ensure_punkt

    root = ensure_punkt(tmp_path / "nltk_data")
    folder = root / "tokenizers/punkt_tab/english"
    assert sorted(p.name for p in folder.iterdir()) == sorted(PUNKT_FILES)
    tokenizer = PunktTokenizer("english")  # nltk.data.find resolves it: NLTK's own loader reads our files
    assert tokenizer.tokenize("Mr. Smith met Dr. Brown at 5 p.m. on Jan. 3. They talked.") == [
        "Mr. Smith met Dr. Brown at 5 p.m. on Jan. 3.", "They talked."]


def _lm_eval_ifeval(tmp_path: Path, lines: list[dict]) -> dict:
    """lm-eval's own `ifeval` task (its YAML, its process_results and aggregation) replaying our answers."""
    import lm_eval
    from lm_eval.api.model import LM
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks.ifeval import utils

    answers = {line["prompt"]: line["response"] for line in lines}

    class Replay(LM):
        def loglikelihood(self, requests):
            raise NotImplementedError

        def loglikelihood_rolling(self, requests):
            raise NotImplementedError

        def generate_until(self, requests):
            return [answers[request.args[0]] for request in requests]

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    data = tasks / "data.jsonl"
    fields = ("key", "prompt", "instruction_id_list", "kwargs")
    data.write_text("".join(json.dumps({f: line[f] for f in fields}) + "\n" for line in lines))
    (tasks / "ifeval_replay.yaml").write_text(
        f"include: {Path(utils.__file__).parent / 'ifeval.yaml'}\ntask: ifeval_replay\n"
        f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    train: {data}\n")
    results = lm_eval.simple_evaluate(model=Replay(), tasks=["ifeval_replay"],
                                      task_manager=TaskManager(include_path=str(tasks)))
    return results["results"]["ifeval_replay"]


@pytest.mark.slow
def test_ifeval_command_scores_equal_lm_evals_own_task(tmp_path, data_dir, monkeypatch):
    from bezoar.evaluate.ifeval import LM_EVAL_NAMES, ensure_punkt

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    out = tmp_path / "out"
    result = subprocess.run([BEZOAR, "eval", "ifeval", "--prompts", str(data_dir / IFEVAL), "--limit", "4",
                             "--max-new-tokens", "32", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "inst_strict" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    lines = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert summary["prompts"] == len(lines) == 4 and all(line["response"] for line in lines)
    ensure_punkt()
    theirs = _lm_eval_ifeval(tmp_path, lines)
    for name, lm_name in LM_EVAL_NAMES.items():
        assert summary["metrics"][name]["value"] == pytest.approx(theirs[f"{lm_name},none"], abs=1e-12), name
        low, high = summary["metrics"][name]["ci95"]
        assert low <= summary["metrics"][name]["value"] <= high
    instructions = sum(len(line["instruction_id_list"]) for line in lines)
    assert summary["metrics"]["inst_strict"]["n"] == instructions
    assert sum(row["n"] for row in summary["by_type"].values()) == instructions
    missing = subprocess.run([BEZOAR, "eval", "ifeval", "--prompts", str(tmp_path / "none.jsonl"), "--out", str(out)],
                             capture_output=True, text=True, timeout=600)
    assert missing.returncode == 2 and missing.stderr.strip() == f"{tmp_path / 'none.jsonl'}: no such file"


def test_checkers_read_known_answers(data_dir):
    """A response written to satisfy a prompt's instructions passes; one that breaks them fails."""
    from bezoar.evaluate.ifeval import follow, share_followed

    doc = {"key": 1, "prompt": "Write about cats.", "instruction_id_list": [
        "change_case:english_lowercase", "punctuation:no_comma"], "kwargs": [{}, {}]}
    assert follow(doc, "cats sleep a lot and purr when happy.")["prompt_level_strict_acc"] is True
    assert share_followed(doc, "Cats sleep, a lot.") == 0.0
    assert share_followed(doc, "cats sleep a lot and purr when they are happy, then they eat their dinner.") == 0.5


def test_paired_instruction_delta_resamples_prompts():
    from bezoar.evaluate.ifeval import paired_inst_delta

    old = {f"{p}:{i}": 0.0 for p in range(40) for i in range(2)}
    new = {key: 1.0 if key.endswith(":0") else 0.0 for key in old}
    delta = paired_inst_delta(new, old, samples=200)
    assert delta["delta"] == 0.5 and delta["prompts"] == 40 and delta["ci95"] == [0.5, 0.5]
    mixed = {key: 1.0 if int(key.split(":")[0]) % 2 else 0.0 for key in old}
    spread = paired_inst_delta(mixed, old, samples=200)
    assert spread["ci95"][0] < 0.5 < spread["ci95"][1]


@pytest.mark.slow
def test_eval_step_ifeval_entry_reaches_the_comparison(tmp_path, data_dir, embedded):
    from bezoar.config import load_recipe
    from bezoar.llm.cache import CachedModel, CallCache
    from bezoar.steps.base import StepContext

    run_dir = tmp_path / "run"
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(f"""
run: {{name: ifeval-step, run_dir: {run_dir}}}
steps:
  - type: eval
    mt_bench: {{enabled: false}}
    harness: {{enabled: false}}
    preference: {{enabled: false}}
    ifeval: {{enabled: true, prompts: {data_dir / IFEVAL}, limit: 2, max_new_tokens: 16}}
""")
    recipe = load_recipe(recipe_file)
    cache = CallCache(tmp_path / "calls.sqlite")
    models = {"judge": CachedModel(embedded, cache, role="judge"), "student": CachedModel(embedded, cache, role="student")}
    summary = recipe.step("eval").run(StepContext(recipe, run_dir, "eval", models)).details
    assert set(summary["checkpoints"]["base"]["ifeval"]) == {"prompt_strict", "inst_strict", "prompt_loose", "inst_loose"}
    assert "ifeval_inst_strict" in summary["metrics"]
    written = json.loads((run_dir / "eval/ifeval/base/summary.json").read_text())
    assert written["prompts"] == 2 and written["fingerprint"]
    again = recipe.step("eval").run(StepContext(recipe, run_dir, "eval", models)).details  # up to date: no new call
    assert again["checkpoints"]["base"] == summary["checkpoints"]["base"] and models["student"].usage.calls == 2
