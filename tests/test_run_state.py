"""Run state that cannot be confused: one `bezoar run` per run directory (a real second process is
refused at once, naming the holder's PID; a SIGKILLed holder's lock is taken over) and a corrupt
manifest that is one line from `bezoar status` and is rebuilt by `bezoar run` from the step records; and
`bezoar status` showing a running step's progress."""
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

from bezoar.run_state import ManifestCorrupt, RunLock, RunLocked, load_manifest, read_manifest

REPO = Path(__file__).resolve().parents[1]
BEZOAR = str(Path(sys.executable).parent / "bezoar")
HOLDER = ("import sys, time; from pathlib import Path; from bezoar.run_state import RunLock; "
          "lock = RunLock(Path(sys.argv[1])); print('held', flush=True); time.sleep(120)")


def bezoar(*args: str, cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess:
    from conftest import DATA

    env = {**os.environ, "BEZOAR_DATA": str(DATA)}  # the data-path defaults of sections tiny.yaml leaves out
    return subprocess.run([BEZOAR, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)


def hold_lock(run_dir: Path) -> subprocess.Popen:
    """Another process holding the run's lock, as a running `bezoar run` does."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def tiny_recipe(folder: Path, data_dir: Path) -> Path:
    recipe = yaml.safe_load((REPO / "recipes" / "tiny.yaml").read_text())
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe).replace("${BEZOAR_DATA:-../shared/data}", str(data_dir)))
    return path


def test_second_run_is_refused_at_once_naming_the_holder(tmp_path, data_dir):
    run_dir = tmp_path / "runs" / "tiny"
    holder = hold_lock(run_dir)
    try:
        started = time.perf_counter()
        result = bezoar("run", str(tiny_recipe(tmp_path, data_dir)), "--run-dir", str(run_dir), cwd=tmp_path)
        elapsed = time.perf_counter() - started
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"PID {holder.pid}" in lines[0] and str(run_dir) in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert elapsed < 60  # the refusal comes before any model is loaded: seconds, mostly imports
    assert not (run_dir / "manifest.json").exists()  # nothing of the run was touched


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    holder = hold_lock(run_dir)
    with pytest.raises(RunLocked, match=f"PID {holder.pid}"):
        RunLock(run_dir)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=10)
    with RunLock(run_dir):  # the kernel dropped the dead process's flock
        assert (run_dir / ".lock").read_text().strip() == str(os.getpid())
    with RunLock(run_dir):  # and a released lock can be taken again
        pass


def test_status_on_a_corrupt_manifest_is_one_line(tmp_path):
    content = '{"run_name": "x", "steps": {"generate": {"sta'  # torn mid-write
    (tmp_path / "manifest.json").write_text(content)
    result = bezoar("status", str(tmp_path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(tmp_path / "manifest.json") in lines[0] and "bezoar run" in lines[0]
    assert (tmp_path / "manifest.json").read_text() == content  # status only reads


@pytest.mark.parametrize("content", ["", "\x00\x00\x00", "[1, 2]", '{"steps": 3}', "\udcff".encode("utf-8", "surrogateescape")])
def test_every_kind_of_damage_is_one_line(tmp_path, content):
    path = tmp_path / "manifest.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ManifestCorrupt) as caught:
        read_manifest(path)
    assert len(str(caught.value).splitlines()) == 1 and str(path) in str(caught.value)


def test_corrupt_manifest_is_rebuilt_from_step_records(tmp_path):
    """What `bezoar run` does on opening a run: the damaged file moved aside, the steps read back."""
    from bezoar.run_state import Manifest

    manifest = Manifest(tmp_path)
    manifest.update("generate", status="done", fingerprint="abc", result={"counts": {"lamini": 3}})
    manifest.update("filter", status="running", pid=1)
    text = (tmp_path / "manifest.json").read_text()
    (tmp_path / "manifest.json").write_text(text[: len(text) // 2])  # torn by a crash
    with pytest.raises(ManifestCorrupt):
        read_manifest(tmp_path / "manifest.json")

    rebuilt = Manifest(tmp_path)
    assert rebuilt.step("generate") == {"status": "done", "fingerprint": "abc", "result": {"counts": {"lamini": 3}}}
    assert rebuilt.step("filter")["status"] == "interrupted"  # its writer is gone; it runs again
    aside = list(tmp_path.glob("manifest.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text() == text[: len(text) // 2]
    assert not (tmp_path / "manifest.json").exists()  # rewritten by the run at its next update
    rebuilt.update("generate", status="done")
    assert read_manifest(tmp_path / "manifest.json")["steps"]["generate"]["fingerprint"] == "abc"


def test_without_step_records_bookkeeping_restarts(tmp_path, caplog):
    (tmp_path / "manifest.json").write_text("{not json")
    assert load_manifest(tmp_path)["steps"] == {}
    assert "bookkeeping restarted" in caplog.text and list(tmp_path.glob("manifest.json.corrupt-*"))


def test_bezoar_run_rebuilds_a_corrupt_manifest(tmp_path, data_dir):
    """End to end, in a real process: `bezoar run` on a torn manifest says so in one line, keeps what the
    step records say (generate stays done, so it would be skipped) and goes on."""
    from bezoar.run_state import Manifest

    recipe = tiny_recipe(tmp_path, data_dir)
    run_dir = tmp_path / "runs" / "tiny"
    Manifest(run_dir).update("generate", status="done", fingerprint="f" * 64, result={"counts": {"lamini": 3}})
    (run_dir / "manifest.json").write_text('{"run_name": "tiny", "steps": {"generate": {"sta')
    result = bezoar("run", str(recipe), "--only", "report", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    said = " ".join(result.stderr.split())  # the log line is wrapped at the terminal width
    assert said.count("manifest.json: corrupt") == 1 and "rebuilt from 1 step record" in said, result.stderr
    data = json.loads((run_dir / "manifest.json").read_text())
    assert data["steps"]["generate"]["fingerprint"] == "f" * 64 and data["steps"]["report"]["status"] == "done"
    assert data["run_name"] == "tiny" and len(list(run_dir.glob("manifest.json.corrupt-*"))) == 1


def test_status_shows_a_running_steps_progress(tmp_path):
    """A running step reports work done out of planned (state/NAME.progress); `bezoar status` shows it
    in the step's row, and a done step its result's counts."""
    import platform

    from bezoar.run_state import Manifest, ProgressFile

    manifest = Manifest(tmp_path)
    manifest.data.update(run_name="x", order=["generate", "preferences", "dpo"])
    manifest.update("generate", status="done", result={"counts": {"lamini": 3, "orca": 2}})
    # running, in a process that is alive on this host (this one): not "interrupted"
    manifest.update("preferences", status="running", pid=os.getpid(), host=platform.node(),
                    started="2024-01-01T00:00:00+00:00")
    ProgressFile(tmp_path, "preferences")({"done": 340, "total": 1600, "unit": "prompts sampled"})
    shown = bezoar("status", str(tmp_path))
    assert shown.returncode == 0, shown.stderr[-2000:]
    rows = {name: line for line in shown.stdout.splitlines() for name in ("generate", "preferences", "dpo")
            if f" {name} " in line}
    assert "running" in rows["preferences"] and "340/1,600 prompts sampled" in rows["preferences"], shown.stdout
    assert "lamini 3, orca 2" in rows["generate"] and "pending" in rows["dpo"], shown.stdout
