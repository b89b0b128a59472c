"""`bezoar run` end to end on a smoke-sized copy of recipes/tiny.yaml: a run killed (SIGKILL)
mid-generate, mid-filter, mid-train and mid-eval and resumed each time to a complete run, the same data
as a run never killed, the status table, the report in headless Chromium, and the bad inputs that must
not touch a run."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BEZOAR = str(Path(sys.executable).parent / "bezoar")

SMOKE = {  # what differs from recipes/tiny.yaml: every count cut to the bone
    ("generate", "lamini", "n"): 3, ("generate", "evol", "n"): 3, ("generate", "orca", "n"): 3,
    ("generate", "lamini", "response_sampling", "max_new_tokens"): 32,
    ("generate", "evol", "response_sampling", "max_new_tokens"): 32,
    ("generate", "orca", "response_sampling", "max_new_tokens"): 32,
    ("generate", "evol", "evolve_sampling", "max_new_tokens"): 64,
    ("sft", "max_steps"): 2, ("sft", "eval_steps"): 1, ("sft_hh", "max_steps"): 2, ("sft_hh", "eval_steps"): 1,
    ("sft_hh", "data", "sft_n"): 16, ("sft_hh", "data", "dpo_n"): 16, ("sft_hh", "data", "heldout_n"): 8,
    ("sft_hh", "max_validation_examples"): 8, ("dpo", "max_validation_examples"): 8,
    ("dpo", "max_steps"): 2, ("dpo", "eval_steps"): 1,
    ("eval", "checkpoints"): ["dpo"], ("eval", "mt_bench", "limit"): 1, ("eval", "mt_bench", "max_new_tokens"): 32,
    ("eval", "harness", "limit"): 2, ("eval", "preference", "limit"): 8,
    # 32-token replies are mostly cut short: keep them, so the judge has nine records to grade one
    # call at a time (a kill lands between two judge calls, not before the first or after the last)
    ("filter", "heuristics", "truncated"): False, ("filter", "judge", "chunk_size"): 1,
}


def smoke_recipe(path: Path, name: str, data_dir: Path) -> Path:
    recipe = yaml.safe_load((REPO / "recipes" / "tiny.yaml").read_text())
    for keys, value in SMOKE.items():
        node = recipe
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    recipe["run"]["name"] = name
    path.write_text(yaml.safe_dump(recipe).replace("${BEZOAR_DATA:-../shared/data}", str(data_dir)))
    return path


def bezoar(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([BEZOAR, *args], capture_output=True, text=True, cwd=cwd, timeout=1800)


def manifest(run_dir: Path) -> dict:
    path = run_dir / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {"stages": {}}


def cached_calls(run_dir: Path) -> int:
    path = run_dir / "cache" / "calls.sqlite"
    if not path.exists():
        return 0
    try:
        return sqlite3.connect(path, timeout=5).execute("SELECT COUNT(*) FROM calls").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def kill_when(command: list[str], cwd: Path, stage: str, ready, timeout_s: float = 900) -> None:
    """Start the run, wait until `stage` is running and `ready()` holds, then SIGKILL it."""
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    deadline = time.time() + timeout_s
    try:
        while time.time() < deadline:
            assert process.poll() is None, f"run ended before the kill at {stage}: {process.stderr.read()[-3000:]}"
            if manifest(cwd / "runs" / "killed").get("stages", {}).get(stage, {}).get("status") == "running" and ready():
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=60)
                return
            time.sleep(0.2)
        raise TimeoutError(f"never reached a kill point in {stage}")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def grew_since_first_check(run_dir: Path, by: int):
    """A kill condition: `by` more calls cached than when it was first asked (at the stage's start)."""
    first: list[int] = []

    def ready() -> bool:
        count = cached_calls(run_dir)
        first.append(count)
        return count >= first[0] + by

    return ready


def record_ids(run_dir: Path, folder: str) -> dict[str, list[str]]:
    files = [run_dir / "data" / folder / f"{method}.jsonl" for method in ("evol", "lamini", "orca")]
    return {f.name: sorted(json.loads(line)["meta"]["id"] for line in f.read_text().splitlines() if line.strip())
            for f in files if f.exists()}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("pipeline")
    smoke_recipe(root / "reference.yaml", "reference", data_dir)
    smoke_recipe(root / "killed.yaml", "killed", data_dir)
    return root


@pytest.mark.slow
@pytest.mark.timeout(2400)  # a reference run and a run killed four times: ~15 min on a busy 2-core machine
def test_killed_at_every_stage_resumes_to_a_complete_run(workspace):
    run_dir = workspace / "runs" / "killed"
    command = [BEZOAR, "run", "killed.yaml"]
    kill_when(command, workspace, "generate", lambda: cached_calls(run_dir) >= 3)
    status = bezoar("status", "runs/killed", cwd=workspace)
    assert "interrupted" in status.stdout  # the killed stage is not shown as still running
    kill_when(command, workspace, "filter", grew_since_first_check(run_dir, by=2))
    generate = manifest(run_dir)["stages"]["generate"]
    assert generate["status"] == "done" and generate["usage"]["teacher"]["cache_hits"] >= 3
    kill_when(command, workspace, "sft", lambda: any((run_dir / "models").glob("sft-*/checkpoint-*/trainer_state.json")))
    kill_when(command, workspace, "eval", lambda: any((run_dir / "eval").rglob("*.jsonl")))
    result = bezoar("run", "killed.yaml", cwd=workspace)
    assert result.returncode == 0, result.stderr[-4000:]

    stages = manifest(run_dir)["stages"]
    assert [s for s in stages if stages[s]["status"] == "done"] == \
        ["generate", "filter", "sft", "sft_hh", "dpo", "eval", "report"]
    assert {name: len(ids) for name, ids in record_ids(run_dir, "generated").items()} == \
        {"evol.jsonl": 3, "lamini.jsonl": 3, "orca.jsonl": 3}
    assert stages["generate"]["inputs"] and all(len(h) == 64 for h in stages["generate"]["inputs"].values())
    assert stages["filter"]["usage"]["judge"]["cache_hits"] > 0  # judged before the kill: not asked again
    assert any(run.get("resumed_from", "").startswith("checkpoint-") for run in stages["sft"]["summary"]["steps"])
    assert (run_dir / "models" / "dpo" / "README.md").exists()  # model card
    assert list((run_dir / "data" / "filtered" / "cards").glob("*.md"))  # data set cards

    again = bezoar("run", "killed.yaml", cwd=workspace)  # unchanged: every stage but the report skipped
    assert again.returncode == 0 and "generate: unchanged" in again.stderr and "eval: unchanged" in again.stderr
    status = bezoar("status", "runs/killed", cwd=workspace)
    assert status.returncode == 0 and "done" in status.stdout and "teacher" in status.stdout


@pytest.mark.slow
def test_resumed_data_equals_an_uninterrupted_run(workspace):
    """Generate and filter again, never killed: the same records as the run killed in both."""
    for stage in ("generate", "filter"):
        result = bezoar("run", "reference.yaml", "--only", stage, cwd=workspace)
        assert result.returncode == 0, result.stderr[-4000:]
    killed, reference = workspace / "runs" / "killed", workspace / "runs" / "reference"
    assert record_ids(reference, "generated") and record_ids(killed, "generated") == record_ids(reference, "generated")
    assert record_ids(killed, "filtered") == record_ids(reference, "filtered")
    assert manifest(reference)["stages"]["generate"]["usage"]["teacher"]["cache_hits"] == 0  # its own calls


@pytest.mark.slow
def test_report_renders_in_headless_chromium(workspace):
    report = workspace / "runs" / "killed" / "report" / "index.html"
    assert report.exists(), "run the resume test first (same module)"
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
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(str(path).encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.mark.slow
def test_bad_inputs_never_touch_a_run(workspace, data_dir):
    run_dir = workspace / "runs" / "killed"
    before = tree_digest(run_dir)
    other = smoke_recipe(workspace / "other.yaml", "other", data_dir)
    cases = {
        "missing seed": (["run", "missing.yaml"], "input file(s) not found: /nonexistent/seeds.jsonl"),
        "unknown stage": (["run", "killed.yaml", "--from", "trian"], "unknown stage 'trian'; the stages are: "
                                                                       "generate, filter, sft, sft_hh, dpo, eval, report"),
        "other recipe": (["run", str(other), "--run-dir", "runs/killed"], "this run directory was made by recipe"),
    }
    broken = yaml.safe_load((workspace / "killed.yaml").read_text())
    broken["generate"]["lamini"]["seeds"] = ["/nonexistent/seeds.jsonl"]
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
def test_a_budget_stops_the_stage_cleanly_and_says_which(workspace):
    """The stage runs in its own process: the budget error still reaches the user as one line, exit 2."""
    recipe = yaml.safe_load((workspace / "reference.yaml").read_text())
    recipe["run"]["name"] = "budget"
    recipe["models"]["teacher"] = {"spec": "local", "max_calls": 2}
    (workspace / "budget.yaml").write_text(yaml.safe_dump(recipe))
    result = bezoar("run", "budget.yaml", "--only", "generate", cwd=workspace)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "budget:" in line]
    assert errors and "role 'teacher'" in errors[0] and "max_calls=2" in errors[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    stage = manifest(workspace / "runs" / "budget")["stages"]["generate"]
    assert stage["status"] == "stopped" and "max_calls=2" in stage["error"]
    assert cached_calls(workspace / "runs" / "budget") <= 2  # never a call past the budget
