"""A stage run in its own process: its result, usage and errors come back as if it had run in-process."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from bezoar.config import load_recipe
from bezoar.errors import BezoarError, BudgetExceeded, StageFailed
from bezoar.llm.cache import Usage
from bezoar.stage_process import run_stage_process

REPO = Path(__file__).resolve().parents[1]


# Stage functions the child imports by name (`test_stage_process:...`), with the stage contract.
def summarises(recipe, run_dir, models) -> dict:
    return {"run": recipe.run.name, "pid": os.getpid(), "carried_calls": models.carried["teacher"].calls}


def crashes(recipe, run_dir, models) -> dict:
    return 1 // 0


def over_budget(recipe, run_dir, models) -> dict:
    raise BudgetExceeded("budget: role 'teacher' would make 9 calls, over max_calls=8")


class ElsewhereError(BezoarError):
    """A BezoarError subclass defined outside bezoar.errors (as generate's GenerationIncomplete is)."""


def raises_elsewhere(recipe, run_dir, models) -> dict:
    raise ElsewhereError("3 of 8 records made; run again to resume")


def dies(recipe, run_dir, models) -> dict:
    os.kill(os.getpid(), signal.SIGKILL)
    return {}


def run(function: str, tmp_path: Path):
    recipe = load_recipe(REPO / "recipes" / "tiny.yaml")
    return run_stage_process(f"test_stage_process:{function}", recipe, tmp_path, tmp_path / "calls.sqlite",
                             {"teacher": Usage(calls=5)})


def test_the_stage_runs_in_another_process_and_sends_back_its_summary(tmp_path):
    outcome = run("summarises", tmp_path)
    outcome.raise_error("generate")
    assert outcome.summary["run"] == "tiny" and outcome.summary["pid"] != os.getpid()
    assert outcome.summary["carried_calls"] == 5  # budgets count from the run's totals
    assert outcome.totals["teacher"].calls == 5 and outcome.usage == {} and outcome.peak_rss_mb > 0


def test_a_bezoar_error_keeps_its_type_and_message(tmp_path):
    with pytest.raises(BudgetExceeded, match=r"^budget: role 'teacher' would make 9 calls, over max_calls=8$"):
        run("over_budget", tmp_path).raise_error("generate")


def test_an_error_class_from_any_module_keeps_its_type(tmp_path):
    with pytest.raises(ElsewhereError, match=r"^3 of 8 records made; run again to resume$"):
        run("raises_elsewhere", tmp_path).raise_error("generate")


def test_a_crash_is_one_line_naming_the_stage(tmp_path):
    with pytest.raises(StageFailed, match=r"^stage sft failed: ZeroDivisionError: integer division or modulo by zero"):
        run("crashes", tmp_path).raise_error("sft")


def test_a_killed_stage_process_is_reported_with_its_signal(tmp_path):
    with pytest.raises(StageFailed, match=r"ended without a result \(exit code -9"):
        run("dies", tmp_path)


def test_a_closed_role_lets_go_of_its_model_and_keeps_its_usage(tmp_path, embedded):
    import gc
    import weakref

    from bezoar.llm.cache import CallCache
    from bezoar.stage_process import LazyModels

    models = LazyModels(load_recipe(REPO / "recipes" / "tiny.yaml"), CallCache(tmp_path / "calls.sqlite"),
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
