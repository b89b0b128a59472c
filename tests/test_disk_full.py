"""A full disk mid-generate, mid-filter, mid-checkpoint and mid-report: one line naming the path and
"no space left", exit 2, nothing already written corrupted; once space is freed the same command
completes with the reference's result.

For each stage the complete reference run (fixture `smoke_reference`, tests/chaos.py) is copied without
that stage's outputs, and a tmpfs the test mounts (root, as in CI) over the stage's output folder holds
about half of what the stage writes there. So the disk fills in the stage's own writes, not in the
bookkeeping before them (manifest, stage record, call cache), and the run's disk has the room that
`bezoar run`'s own free-space check asks for. Freeing space is growing that tmpfs (a remount keeps its
files). Calls come from the copied call cache, so the stage repeats the reference's model work exactly
and quickly; training is real (it has no cache)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path

import pytest
from chaos import BEZOAR, LOSS_TOLERANCE, record_ids, training

PAGE = 4096
SIZE_MB = 96
# What each stage writes (removed before it runs), and the share of it that fits on the disk. sft: half
# the first adapter, so the first checkpoint (adapter, optimizer state, trainer state) cannot be written.
STAGE_OUTPUTS = {"generate": ["generate"], "filter": ["filter"], "sft": ["sft"], "report": ["report"]}


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    """A tmpfs mount of SIZE_MB, unmounted at the end."""
    point = tmp_path_factory.mktemp("tmpfs")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE_MB}m", "tmpfs", str(point)],
                             capture_output=True, text=True, timeout=30)
    assert mounted.returncode == 0, f"this test mounts a tmpfs and needs root (as in CI): {mounted.stderr}"
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], capture_output=True, timeout=60)


def stage_paths(run_dir: Path, stage: str) -> list[Path]:
    return [p for pattern in STAGE_OUTPUTS[stage] for p in run_dir.glob(pattern)]


def size_on_disk(paths: list[Path]) -> int:
    files = [f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()]
    return sum(-(-f.stat().st_size // PAGE) * PAGE for f in files)


def fill(disk: Path, leave: int) -> Path:
    """A ballast file that leaves `leave` bytes free."""
    stat = os.statvfs(disk)
    ballast = disk / f"ballast-{uuid.uuid4().hex[:6]}"
    with open(ballast, "wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, max(0, stat.f_bavail * stat.f_frsize - leave))
    return ballast


OUTPUT_MOUNT = {"generate": "generate", "filter": "filter", "sft": "sft/sft-1-lamini", "report": "report"}
"""Where each stage's small disk is mounted: the folder it writes most into (sft: its first adapter's)."""


def room_for(reference: Path, stage: str) -> int:
    """The small disk's size: `stage` starts writing there but cannot finish."""
    if stage == "sft":  # its logs and metrics, then half the first checkpoint's adapter
        adapter = reference / OUTPUT_MOUNT["sft"] / "adapter_model.safetensors"
        return 64 * 1024 + adapter.stat().st_size // 2
    return size_on_disk([reference / OUTPUT_MOUNT[stage]]) // 2


def mount_tmpfs(point: Path, size: int, remount: bool = False) -> None:
    options = f"{'remount,' if remount else ''}size={max(PAGE, size) // 1024}k"
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                             capture_output=True, text=True, timeout=30)
    assert mounted.returncode == 0, f"this test mounts a tmpfs and needs root (as in CI): {mounted.stderr}"


@contextmanager
def small_disk(point: Path, size: int):
    """A tmpfs of `size` bytes over `point`, unmounted at the end."""
    point.mkdir(parents=True, exist_ok=True)
    mount_tmpfs(point, size)
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], capture_output=True, timeout=60)


def digest(run_dir: Path, stage: str) -> dict[str, bytes]:
    """Every file outside the stage's outputs and the bookkeeping, by path."""
    found = {}
    for path in sorted(run_dir.rglob("*")):
        name = str(path.relative_to(run_dir))
        if path.is_file() and not any(fnmatch(name, p) or fnmatch(name, f"{p}/*") for p in STAGE_OUTPUTS[stage]) \
                and path.name not in ("manifest.json", ".lock") and path.parent.name not in ("state", "cache"):
            found[name] = path.read_bytes()
    return found


def damage(run_dir: Path) -> dict[str, list[str]]:
    """JSON files that do not parse, JSONL lines that do not parse (but a torn last line), temp files.
    A Trainer checkpoint is written file by file: a torn one (no trainer_state.json) is deleted on resume."""
    found: dict[str, list[str]] = {}
    for path in run_dir.rglob("*"):
        name = str(path.relative_to(run_dir))
        if any(part.startswith("checkpoint-") for part in path.relative_to(run_dir).parts):
            continue
        if ".tmp" in path.name:
            found.setdefault(name, []).append("temporary file left behind")
        elif path.suffix == ".json" and path.is_file():
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except ValueError as error:
                found.setdefault(name, []).append(f"torn JSON: {error}")
        elif path.suffix == ".jsonl" and path.is_file():
            lines = path.read_text(encoding="utf-8").split("\n")
            for number, line in enumerate(lines[:-1], 1):  # the part after the last newline may be torn
                try:
                    json.loads(line) if line.strip() else None
                except ValueError:
                    found.setdefault(name, []).append(f"line {number} does not parse")
    return found


def run_only(stage: str, run_dir: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([BEZOAR, "run", "reference.yaml", "--only", stage, "--run-dir", str(run_dir)],
                          cwd=cwd, capture_output=True, text=True, timeout=900)


# Functions a step's process imports by name (bezoar.processes): each writes onto the full tmpfs as a step does.
def appends_records(run_dir: str) -> dict:
    from bezoar.records import append_jsonl

    append_jsonl(Path(run_dir) / "data.jsonl", [{"text": "x" * 1000}] * 200)
    return {}


def saves_an_adapter(run_dir: str) -> dict:
    import torch
    from safetensors.torch import save_file

    save_file({"lora": torch.zeros(100_000)}, str(Path(run_dir) / "adapter_model.safetensors"))
    return {}


def saves_optimizer_state(run_dir: str) -> dict:
    import torch

    torch.save({"exp_avg": torch.zeros(100_000)}, Path(run_dir) / "optimizer.pt")
    return {}


@pytest.mark.parametrize("function, named", [("appends_records", "data.jsonl"), ("saves_an_adapter", ""),
                                             ("saves_optimizer_state", "")])
def test_a_step_process_that_fills_the_disk_reports_one_line_naming_the_path(function, named, disk, monkeypatch):
    """safetensors and torch.save drop the errno (Rust's "os error 28", "unexpected pos N vs M"): still
    one line, no traceback; the run directory is named when the library does not say which file."""
    from bezoar.errors import DiskFull
    from bezoar.processes import run_call

    # the child is a fresh interpreter: it imports this module through PYTHONPATH
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(Path(__file__).parent),
                                                                    os.environ.get("PYTHONPATH")])))
    run_dir = disk / function
    run_dir.mkdir()
    ballast = fill(disk, 64 * 1024)
    try:
        with pytest.raises(DiskFull) as caught:
            run_call(f"test_disk_full:{function}", {"run_dir": str(run_dir)}, run_dir)
    finally:
        ballast.unlink()
    assert str(caught.value).startswith(f"{run_dir / named}: no space left on device".replace("/: ", ": "))
    assert "\n" not in str(caught.value)


def test_a_command_that_fills_the_disk_says_so_in_one_line_and_leaves_no_temp_file(disk, tmp_path):
    from bezoar.records import Record, write_jsonl

    records = tmp_path / "records.jsonl"
    write_jsonl(records, [Record.model_validate({"messages": [{"role": "user", "content": f"question {i}?"},
                                                              {"role": "assistant", "content": "an answer"}],
                                                 "meta": {"method": "lamini"}}).with_id() for i in range(5)])
    out = disk / "stats" / "stats.json"
    out.parent.mkdir()
    ballast = fill(disk, 0)
    try:
        result = subprocess.run([BEZOAR, "stats", str(records), "--json", str(out)], capture_output=True, text=True,
                                timeout=300)
    finally:
        ballast.unlink()
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [f"{out}: no space left on device; free some space and run the "
                                                  "same command again to resume (what was written so far is kept)"]
    assert list(out.parent.iterdir()) == []  # no half-written temp file


@pytest.mark.xdist_group("smoke")  # beside the other users of the session's smoke runs
@pytest.mark.slow
@pytest.mark.timeout(2700)  # the reference run when this module runs first, then ~3 min
@pytest.mark.parametrize("stage", list(STAGE_OUTPUTS))
def test_a_full_disk_is_one_line_and_the_same_command_completes_once_space_is_freed(stage, smoke_reference, tmp_path):
    reference = smoke_reference.root / "runs" / "reference"
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir, ignore=shutil.ignore_patterns("checkpoint-*"))
    for path in stage_paths(run_dir, stage):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    before = digest(run_dir, stage)
    with small_disk(run_dir / OUTPUT_MOUNT[stage], room_for(reference, stage)) as output:
        run_and_free(stage, run_dir, reference, smoke_reference.root, before, output)


def run_and_free(stage: str, run_dir: Path, reference: Path, cwd: Path, before: dict, output: Path) -> None:
    full = run_only(stage, run_dir, cwd)
    said = [line for line in full.stderr.splitlines() if "no space left" in line.lower()]
    print(f"{stage}: exit {full.returncode}: {said}")
    assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr[-3000:]
    assert len(said) == 1 and str(run_dir) in said[0], full.stderr[-3000:]
    named = said[0].split(": no space left")[0].split()[-1]
    if stage != "sft":  # torch and safetensors do not say which file: then the run directory is named
        assert any(fnmatch(named, f"{run_dir}/{pattern}*") for pattern in STAGE_OUTPUTS[stage]), said
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["steps"][stage]["status"] != "done"
    assert damage(run_dir) == {}
    assert digest(run_dir, stage) == before  # other stages' outputs untouched

    mount_tmpfs(output, 64 * 2**20, remount=True)  # space freed: the files written so far stay
    again = run_only(stage, run_dir, cwd)
    assert again.returncode == 0, again.stderr[-3000:]
    torn = [p for p in run_dir.rglob("*.jsonl") if p.stat().st_size and not p.read_bytes().endswith(b"\n")]
    assert damage(run_dir) == {} and torn == []  # the torn last line was dropped on resume
    if stage in ("generate", "filter"):
        assert record_ids(run_dir, stage) == record_ids(reference, stage) != {}
    elif stage == "sft":
        want, got = training(reference)["sft"], training(run_dir)["sft"]
        assert [(r["output"], r["global_step"]) for r in got] == [(r["output"], r["global_step"]) for r in want]
        assert all(w["eval_loss"] == g["eval_loss"] is None or abs(w["eval_loss"] - g["eval_loss"]) <= LOSS_TOLERANCE
                   for w, g in zip(want, got, strict=True))  # None: too few records to hold any out, in both
    else:
        assert sorted(p.name for p in (run_dir / "report").rglob("*")) == \
            sorted(p.name for p in (reference / "report").rglob("*"))
