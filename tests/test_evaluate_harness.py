"""The harness: bezoar's local task YAMLs load in lm-eval with the real data, and a score from the
Python API equals the one lm-eval's own CLI computes on the same rendered YAML."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bezoar.errors import ConfigError, DataError
from bezoar.evaluate.config import HarnessConfig
from bezoar.evaluate.harness_tasks import expand_tasks, render_tasks

LM_EVAL = str(Path(sys.executable).parent / "lm_eval")
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _task_manager(path: Path):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(path))


def test_leaderboard_renders_every_task_with_local_data(tmp_path, data_dir):
    harness = data_dir / "eval/harness"
    local, other = expand_tasks(["leaderboard", "arc_easy"], harness, {})
    assert local == ["arc_challenge", "hellaswag", "truthfulqa_mc2", "mmlu", "gsm8k"]  # no winogrande data here
    assert other == ["arc_easy"]  # a standard lm-eval name passes through untouched
    names = render_tasks(local, harness, {}, tmp_path)
    manager = _task_manager(tmp_path)
    sizes = {"bezoar_arc_challenge": 1172, "bezoar_hellaswag": 10042, "bezoar_truthfulqa_mc2": 817, "bezoar_gsm8k": 1319}
    for name, size in sizes.items():
        task = manager.load([name])["tasks"][name]
        assert len(task.eval_docs) == size
    arc = manager.load(["bezoar_arc_challenge"])["tasks"]["bezoar_arc_challenge"]
    doc = arc.eval_docs[0]
    assert arc.doc_to_text(doc).startswith("Question: ") and arc.doc_to_text(doc).endswith("\nAnswer:")
    assert arc.doc_to_choice(doc)[arc.doc_to_target(doc)] == next(o["text"] for o in doc["options"] if o["label"] == doc["answer"])
    loaded = manager.load(["bezoar_mmlu"])
    assert len(loaded["tasks"]) == 57 and sum(len(t.eval_docs) for t in loaded["tasks"].values()) == 14079
    anatomy = loaded["tasks"]["bezoar_mmlu_anatomy"]
    assert anatomy.config.description == "The following are multiple choice questions (with answers) about anatomy.\n\n"
    assert "bezoar_mmlu" in names


def test_winogrande_runs_from_a_user_given_file(tmp_path, data_dir):
    """No Winogrande copy ships with the data; with a file in its original format the task works."""
    with pytest.raises(DataError, match="no data for bezoar_winogrande"):
        expand_tasks(["bezoar_winogrande"], data_dir / "eval/harness", {})
    rows = [  # Winograd-schema sentences in Winogrande's format (the classic trophy/suitcase pair)
        {"sentence": "The trophy doesn't fit into the brown suitcase because the _ is too large.",
         "option1": "trophy", "option2": "suitcase", "answer": "1"},
        {"sentence": "The trophy doesn't fit into the brown suitcase because the _ is too small.",
         "option1": "trophy", "option2": "suitcase", "answer": "2"},
    ]
    path = tmp_path / "dev.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = HarnessConfig(tasks=["bezoar_winogrande"], data_paths={"bezoar_winogrande": path})
    local, _ = expand_tasks(config.tasks, config.data_dir, config.data_paths)
    render_tasks(local, config.data_dir, config.data_paths, tmp_path / "tasks")
    task = _task_manager(tmp_path / "tasks").load(["bezoar_winogrande"])["tasks"]["bezoar_winogrande"]
    doc = task.eval_docs[1]
    assert task.doc_to_choice(doc) == ["The trophy doesn't fit into the brown suitcase because the trophy",
                                       "The trophy doesn't fit into the brown suitcase because the suitcase"]
    assert task.doc_to_text(doc) == 1 and task.doc_to_target(doc) == "is too small."


def test_unknown_task_and_chat_api_are_refused(data_dir):
    with pytest.raises(ValueError, match="no local task named"):
        HarnessConfig(data_paths={"winogrand": "x"})
    with pytest.raises(DataError, match="no local task 'bezoar_arc'"):
        expand_tasks(["bezoar_arc"], data_dir / "eval/harness", {})
    from bezoar.evaluate.harness import model_args

    with pytest.raises(ConfigError, match="lm-eval needs token log-likelihoods"):
        model_args("anthropic:claude-2.1")


@pytest.mark.slow
def test_score_equals_lm_eval_cli_on_the_same_yaml(tmp_path, data_dir):
    from bezoar.evaluate.harness import run_harness

    config = HarnessConfig(tasks=["bezoar_arc_challenge"], data_dir=data_dir / "eval/harness", limit=4,
                           num_fewshot=1, batch_size=8)
    summary = run_harness("local", config, tmp_path / "ours")
    row = summary["tasks"]["bezoar_arc_challenge"]
    assert row["metric"] == "acc_norm,none" and row["n"] == 4 and row["num_fewshot"] == 1
    assert 0.0 <= row["value"] <= 1.0 and len(row["items"]) == 4
    assert row["value"] == pytest.approx(sum(row["items"].values()) / 4)
    # lm-eval's own CLI, on the very YAML folder bezoar rendered, with the printed command line
    command = shlex.split(summary["lm_eval_command"])
    assert command[0] == "lm_eval"
    cli = subprocess.run([LM_EVAL, *command[1:], "--output_path", str(tmp_path / "cli")], capture_output=True,
                         text=True, env={**os.environ, **OFFLINE}, timeout=900)
    assert cli.returncode == 0, cli.stderr[-2000:]
    result_file = next((tmp_path / "cli").rglob("results_*.json"))
    theirs = json.loads(result_file.read_text())["results"]["bezoar_arc_challenge"]
    assert theirs["acc_norm,none"] == row["value"]
    assert theirs["acc,none"] == json.loads((tmp_path / "ours/results.json").read_text())["results"]["bezoar_arc_challenge"]["acc,none"]
