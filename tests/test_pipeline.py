"""`bezoar run` end to end on a smoke-sized copy of recipes/tiny.yaml: the report in headless Chromium,
the bad inputs that must not touch a run, a budget stop. The run they use was SIGKILLed in every stage
and resumed (fixture `smoke_runs`, tests/chaos.py; its checks are in tests/test_chaos.py)."""
from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

import pytest
import yaml
from chaos import BEZOAR, smoke_recipe
from recipe_dicts import step

pytestmark = pytest.mark.xdist_group("smoke")  # one pytest-xdist worker builds the session's smoke runs

CHAOS_RUNS_S = 2700  # the first test to ask for the workspace waits for the chaos fixture's two runs


def bezoar(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([BEZOAR, *args], capture_output=True, text=True, cwd=cwd, timeout=1800)


def manifest(run_dir: Path) -> dict:
    path = run_dir / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {"steps": {}}


def cached_calls(run_dir: Path) -> int:
    path = run_dir / "cache" / "calls.sqlite"
    if not path.exists():
        return 0
    try:
        with closing(sqlite3.connect(path, timeout=5)) as conn:  # closed now, not whenever it is collected
            return conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


@pytest.fixture(scope="module")
def workspace(smoke_runs):
    """The chaos run's workspace (tests/chaos.py): runs/killed is complete, killed once in every stage."""
    return smoke_runs.root


@pytest.mark.slow
@pytest.mark.timeout(CHAOS_RUNS_S)
def test_report_renders_in_headless_chromium(workspace):
    report = workspace / "runs" / "killed" / "report" / "index.html"
    assert report.exists()
    screenshot = workspace / "report.png"
    base = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={workspace / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
            "--virtual-time-budget=5000", "--window-size=1200,4000"]
    dom = subprocess.run(base + ["--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-figures="ok' in dom.stdout, "a figure did not render"
    figures = int(dom.stdout.split('data-figures="ok ')[1].split('"')[0])
    assert figures >= 5  # funnel, lengths, losses, DPO rewards, MT-Bench categories
    console_errors = [line for line in dom.stderr.splitlines() if "CONSOLE" in line and ("Error" in line or "Uncaught" in line)]
    assert not console_errors, console_errors
    shot = subprocess.run(base + [f"--screenshot={screenshot}", report.as_uri()], capture_output=True, text=True,
                          timeout=120)
    assert shot.returncode == 0 and screenshot.stat().st_size > 10_000


def tree_digest(folder: Path) -> str:
    """Every file's path and bytes; SQLite's -wal/-shm side files come and go with the cache's readers."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.endswith(("-wal", "-shm")):
            digest.update(str(path).encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.mark.slow
@pytest.mark.timeout(CHAOS_RUNS_S)
def test_bad_inputs_never_touch_a_run(workspace, data_dir):
    run_dir = workspace / "runs" / "killed"
    before = tree_digest(run_dir)
    other = smoke_recipe(workspace / "other.yaml", "other", data_dir)
    cases = {
        "missing seed": (["run", "missing.yaml"], "input file(s) not found: /nonexistent/seeds.jsonl"),
        "unknown step": (["run", "killed.yaml", "--from", "trian"], "no step named 'trian' in this recipe; its steps "
                                                                    "are: generate, filter, sft, hh_slices, sft_hh, dpo, eval, report"),
        "other recipe": (["run", str(other), "--run-dir", "runs/killed"], "this run directory was made by recipe"),
    }
    broken = yaml.safe_load((workspace / "killed.yaml").read_text())
    step(broken, "generate")["lamini"]["seeds"] = ["/nonexistent/seeds.jsonl"]
    broken["run"]["name"] = "missing"  # its own run directory, so a run it wrongly started would show
    (workspace / "missing.yaml").write_text(yaml.safe_dump(broken))
    runs_before = sorted(p.name for p in (workspace / "runs").iterdir())
    for name, (args, message) in cases.items():
        result = bezoar(*args, cwd=workspace)
        assert result.returncode == 2, name
        assert message in result.stderr and "Traceback" not in result.stderr, (name, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (name, result.stderr)
    assert tree_digest(run_dir) == before
    assert sorted(p.name for p in (workspace / "runs").iterdir()) == runs_before  # no run directory made


@pytest.mark.slow
@pytest.mark.timeout(CHAOS_RUNS_S)
def test_a_budget_stops_the_step_cleanly_and_says_which(workspace):
    """The step runs in its own process: the budget error still reaches the user as one line, exit 2."""
    recipe = yaml.safe_load((workspace / "reference.yaml").read_text())
    recipe["run"]["name"] = "budget"
    recipe["models"]["teacher"] = {"spec": "local", "max_calls": 2}
    (workspace / "budget.yaml").write_text(yaml.safe_dump(recipe))
    result = bezoar("run", "budget.yaml", "--only", "generate", cwd=workspace)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "budget:" in line]
    assert errors and "role 'teacher'" in errors[0] and "max_calls=2" in errors[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    stage = manifest(workspace / "runs" / "budget")["steps"]["generate"]
    assert stage["status"] == "stopped" and "max_calls=2" in stage["error"]
    assert cached_calls(workspace / "runs" / "budget") <= 2  # never a call past the budget


@pytest.mark.slow
@pytest.mark.timeout(CHAOS_RUNS_S)
def test_a_step_whose_input_step_never_ran_says_which_to_run(workspace):
    """Step inputs come from the manifest: dpo alone, in a run where hh_slices never ran, asks for
    hh_slices's HH-RLHF slice by name and stops in one line, without scanning for a stray file."""
    recipe = yaml.safe_load((workspace / "reference.yaml").read_text())
    recipe["run"]["name"] = "dpo-alone"
    (workspace / "dpo-alone.yaml").write_text(yaml.safe_dump(recipe))
    stray = workspace / "runs" / "dpo-alone" / "hh_slices" / "dpo.jsonl"  # where hh_slices would write it
    stray.parent.mkdir(parents=True)
    stray.write_text("")
    result = bezoar("run", "dpo-alone.yaml", "--only", "dpo", cwd=workspace)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "the step 'hh_slices' has not handed on 'hh_dpo'" in result.stderr and "Traceback" not in result.stderr
    stage = manifest(workspace / "runs" / "dpo-alone")["steps"]["dpo"]
    assert stage["status"] == "failed" and "--from hh_slices" in stage["error"]
