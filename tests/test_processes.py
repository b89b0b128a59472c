"""Every child process bezoar starts (bezoar/processes.py): a call run in a process of its own sends back
its result, its peak RSS and its errors as if it had run in-process; a training step's ranks are started
by the real accelerate launcher; a step's process counts its usage from the run's totals."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from bezoar.errors import BezoarError, BudgetExceeded, StageFailed
from bezoar.llm.cache import Usage
from bezoar.processes import accelerate_command, run_call

REPO = Path(__file__).resolve().parents[1]


# Functions the child imports by name (`test_processes:...`), called with the call's JSON keyword arguments.
def summarises(run: str) -> dict:
    return {"run": run, "pid": os.getpid()}


def crashes() -> dict:
    return 1 // 0


def over_budget() -> dict:
    raise BudgetExceeded("budget: role 'teacher' would make 9 calls, over max_calls=8")


class ElsewhereError(BezoarError):
    """A BezoarError subclass defined outside bezoar.errors (as generate's GenerationIncomplete is)."""


def raises_elsewhere() -> dict:
    raise ElsewhereError("3 of 8 records made; run again to resume")


def dies() -> dict:
    os.kill(os.getpid(), signal.SIGKILL)
    return {}


@pytest.fixture(autouse=True)
def importable(monkeypatch):
    """The child is a fresh `python -m bezoar.processes`: it imports this module through PYTHONPATH (pytest
    put tests/ on this process's sys.path only)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(Path(__file__).parent),
                                                                    os.environ.get("PYTHONPATH")])))


def run(function: str, tmp_path: Path, **kwargs):
    return run_call(f"test_processes:{function}", kwargs, tmp_path)


def test_the_call_runs_in_another_process_and_sends_back_its_result(tmp_path, monkeypatch):
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the call and outcome files go
    outcome = run("summarises", tmp_path / "run", run="tiny")
    assert outcome.result["run"] == "tiny" and outcome.result["pid"] != os.getpid()
    assert len(outcome.peak_rss_mb) == 1 and outcome.peak_rss_mb[0] > 0
    assert list(scratch.iterdir()) == [] and not (tmp_path / "run").exists()  # nothing left, nothing in the run


def test_a_bezoar_error_keeps_its_type_and_message(tmp_path):
    with pytest.raises(BudgetExceeded, match=r"^budget: role 'teacher' would make 9 calls, over max_calls=8$"):
        run("over_budget", tmp_path)


def test_an_error_class_from_any_module_keeps_its_type(tmp_path):
    with pytest.raises(ElsewhereError, match=r"^3 of 8 records made; run again to resume$"):
        run("raises_elsewhere", tmp_path)


def test_a_crash_is_one_line_naming_the_function(tmp_path):
    with pytest.raises(StageFailed, match=r"^test_processes:crashes failed: ZeroDivisionError: integer division or "
                                          r"modulo by zero"):
        run("crashes", tmp_path)


def test_a_killed_process_is_reported_with_its_signal(tmp_path):
    with pytest.raises(StageFailed, match=r"ended with exit code -9 and no result"):
        run("dies", tmp_path)


def test_a_steps_process_counts_from_the_runs_totals(tmp_path):
    """The pipeline's child side: budgets count across steps, so the usage a step's process is handed comes
    back in the run's totals (a step that made no call adds nothing to them)."""
    from bezoar.config import Recipe

    recipe = Recipe.model_validate({"run": {"name": "tiny"}, "steps": [
        {"type": "generate", "lamini": {"n": 0}, "evol": {"n": 0}, "orca": {"n": 0}}]})
    outcome = run_call("bezoar.pipeline:run_step_process", {
        "recipe": recipe.model_dump(mode="json"), "run_dir": str(tmp_path), "name": "generate",
        "totals": {"teacher": Usage(calls=5).to_json()}}, tmp_path)
    sent = outcome.result
    assert sent["error"] is None and sent["result"]["counts"] == {} and sent["usage"] == {}
    assert sent["totals"]["teacher"]["calls"] == 5


def test_command_is_the_real_accelerate_launcher(tmp_path):
    call = tmp_path / "call.json"
    ddp = accelerate_command(2, None, call)
    assert ddp[1:3] == ["-m", "accelerate.commands.launch"] and "--multi_gpu" in ddp
    assert ddp[ddp.index("--num_processes") + 1] == "2" and ddp[-3:] == ["-m", "bezoar.processes", str(call)]
    config = tmp_path / "fsdp.yaml"
    config.write_text("distributed_type: FSDP\n")
    fsdp = accelerate_command(2, config, call)
    assert fsdp[fsdp.index("--config_file") + 1] == str(config) and "--multi_gpu" not in fsdp
    with pytest.raises(BezoarError, match="launch.config_file: .*missing.yaml not found"):
        accelerate_command(1, tmp_path / "missing.yaml", call)


def test_a_closed_role_lets_go_of_its_model_and_keeps_its_usage(tmp_path, embedded):
    import gc
    import weakref

    from bezoar.config import load_recipe
    from bezoar.llm.cache import CallCache
    from bezoar.roles import LazyModels

    models = LazyModels(dict(load_recipe(REPO / "recipes" / "tiny.yaml").models), CallCache(tmp_path / "calls.sqlite"),
                        {"student": Usage(calls=5)})
    student = models["student"]
    student.usage.calls += 2
    backend = weakref.ref(student.backend)
    del student
    models.close("student")
    gc.collect()
    assert backend() is None  # the weights go once nobody uses them
    assert models.totals()["student"].calls == 7 and models.spent()["student"]["calls"] == 2
    assert models["student"].usage.calls == 7  # opened again, it counts on
