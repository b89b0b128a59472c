"""Training in two processes on this CPU (gloo), started by bezoar under the real `accelerate launch`.

At the same global batch (1 process x 4 examples, or 2 processes x 2), SFT and DPO follow the same
loss curve and end with the same adapter; a two-process run whose whole process group is SIGKILLed
resumes from its checkpoint; `bezoar run` starts the ranks for the sft step only, and its manifest
(written by the one main process) carries the ranks' summary and memory.

Tolerances. Loss: 1e-4 absolute. In fp32 the two set-ups differ only in reduction order (the
gradient all-reduce, per-rank token sums) and padding widths (each rank pads to its own longest
row), i.e. noise of ~1e-6 relative (measured 1.5e-6 on losses of ~2.5); a batch that differed by
one example would move the loss by > 1e-2. Adapter: 1e-3 absolute. Adam's update of an element is
~lr x m/sqrt(v), so an element with a near-zero gradient can take a noticeably different step from
1e-6 noise; 1e-3 is a third of one step at lr 3e-3 (measured 5e-5; weights reach ~0.05).
"""
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

from bezoar.records import write_jsonl
from test_train_sft import dolly_records

REPO = Path(__file__).resolve().parents[1]
SFT = dict(dtype="float32", max_steps=3, per_device_train_batch_size=4, gradient_accumulation_steps=1,
           warmup_steps=0, learning_rate=3e-3, eval_steps=2, logging_steps=1, max_length=64,
           validation_fraction=0.0, lora={"r": 4, "alpha": 8})
DPO = {**SFT, "learning_rate": 5e-3, "max_length": 96}
LOSS_TOL, WEIGHT_TOL = 1e-4, 1e-3
TIMEOUT_S = 900
BEZOAR = str(Path(sys.executable).parent / "bezoar")


def per_rank(settings: dict, processes: int = 2) -> dict:
    """The same global batch split over `processes` ranks."""
    return {**settings, "per_device_train_batch_size": settings["per_device_train_batch_size"] // processes}


def losses(out: Path) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in map(json.loads, (out / "metrics.jsonl").open()) if "loss" in row}


def assert_same_curve_and_adapter(one: Path, two: Path) -> float:
    from safetensors.torch import load_file

    first, second = losses(one), losses(two)
    assert first.keys() == second.keys() and len(first) == 3, (first, second)
    worst = max(abs(first[s] - second[s]) for s in first)
    assert worst < LOSS_TOL, (first, second)
    a, b = load_file(one / "adapter_model.safetensors"), load_file(two / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < WEIGHT_TOL
    return worst


def bezoar(*args: str, recipe: dict, tmp: Path, new_session: bool = False) -> subprocess.Popen:
    path = tmp / f"recipe-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([BEZOAR, *args, "--recipe", str(path)], env=env,
                            cwd=REPO, start_new_session=new_session, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def survivors(group: int) -> list[int]:
    """Live (not zombie) processes still in process group `group`."""
    import psutil

    found = []
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == group and process.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(process.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == 0, output[-3000:]
    return output


@pytest.fixture(scope="module")
def dolly(data_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ddp-data") / "dolly.jsonl"
    # 24: length-grouped sampling cuts its mega-batches from a multiple of the batch that depends on the
    # data size (24 // 16 global vs 24 // 8 per rank), so only such a size shows per-rank mega-batches
    write_jsonl(path, dolly_records(data_dir, 24))
    return path


@pytest.fixture(scope="module")
def sft_one(dolly, tmp_path_factory) -> Path:
    from bezoar.train.config import SFTStageConfig
    from bezoar.train.sft import train_sft

    out = tmp_path_factory.mktemp("sft-one") / "adapter"
    train_sft("local", [dolly], out, SFTStageConfig(**SFT))
    return out


@pytest.fixture(scope="module")
def sft_run(dolly, tmp_path_factory) -> Path:
    """`bezoar run --only sft` with the sft step's `launch.num_processes: 2` (the pipeline's own step process)."""
    from bezoar.config import load_recipe
    from bezoar.pipeline import run

    root = tmp_path_factory.mktemp("sft-run")
    source = root / "recipe.yaml"
    step = {"type": "sft", **per_rank(SFT), "launch": {"num_processes": 2},
            "datasets": [{"name": "dolly", "path": str(dolly)}]}
    source.write_text(yaml.safe_dump({"run": {"name": "ddp", "run_dir": str(root / "run")}, "steps": [step]}))
    run(load_recipe(source), source, only="sft")
    return root / "run"


def test_sft_step_in_two_processes_matches_one(sft_one, sft_run):
    manifest = json.loads((sft_run / "manifest.json").read_text())
    record = manifest["steps"]["sft"]
    assert record["status"] == "done" and list(manifest["steps"]) == ["sft"]
    step = record["result"]["details"]["runs"][0]
    assert step["global_step"] == 3 and record["result"]["checkpoints"] == {"sft-1-dolly": "sft/sft-1-dolly"}
    ranks = record["ranks_peak_rss_mb"]
    assert len(ranks) == 2 and all(r > 300 for r in ranks)  # two ranks, each loaded the model
    assert record["peak_rss_mb"] >= sum(ranks)  # the manifest counts the ranks, not just the waiting parent
    assert not list(sft_run.glob(".call-*"))  # the call and result files are cleaned up
    out = sft_run / "sft/sft-1-dolly"
    assert "1 threads" in json.loads((out / "summary.json").read_text())["plan"]  # 2 cores shared by 2 ranks
    assert_same_curve_and_adapter(sft_one, out)


def test_killed_process_group_resumes(dolly, sft_run, tmp_path):
    """SIGKILL the whole group of `bezoar sft --num-processes 2` after its step-2 checkpoint; the same
    command resumes there and ends where the uninterrupted two-process run ended."""
    out = tmp_path / "adapter"
    args = ("sft", "--data", str(dolly), "--out", str(out), "--num-processes", "2")
    recipe = {"steps": [{"type": "sft", **per_rank(SFT)}]}
    process = bezoar(*args, recipe=recipe, tmp=tmp_path, new_session=True)
    deadline = time.time() + TIMEOUT_S
    while not (out / "checkpoint-2" / "trainer_state.json").exists():
        assert process.poll() is None, process.stdout.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    time.sleep(1)
    assert not survivors(process.pid)  # no rank survived the kill
    assert not (out / "summary.json").exists()

    finish(bezoar(*args, recipe=recipe, tmp=tmp_path))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"] == "checkpoint-2" and summary["global_step"] == 3
    assert sorted(losses(out)) == [1, 2, 3]  # nothing repeated or lost
    assert_same_curve_and_adapter(sft_run / "sft/sft-1-dolly", out)


@pytest.fixture(scope="module")
def short_pairs(data_dir, tmp_path_factory) -> Path:
    from bezoar.hh_rlhf import read_hh_pairs

    pairs, _ = read_hh_pairs(data_dir / "preferences/hh-rlhf/harmless-base/test.jsonl.gz")
    short = [p for p in pairs if sum(len(m.content) for m in p.prompt) < 200][:4]
    path = tmp_path_factory.mktemp("ddp-pairs") / "pairs.jsonl"
    write_jsonl(path, short)
    return path


def test_dpo_in_two_processes_matches_one(short_pairs, tmp_path):
    from bezoar.train.config import DPOStageConfig
    from bezoar.train.dpo import train_dpo
    from bezoar.hh_rlhf import read_pairs

    train_dpo("local", read_pairs(short_pairs), tmp_path / "one", DPOStageConfig(**DPO), ref_cache_dir=tmp_path / "r1")
    finish(bezoar("dpo", "--pairs", str(short_pairs), "--out", str(tmp_path / "two"), "--num-processes", "2",
                  "--ref-cache", str(tmp_path / "r2"), recipe={"steps": [{"type": "dpo", **per_rank(DPO)}]}, tmp=tmp_path))
    assert abs(losses(tmp_path / "two")[1] - 0.6931) < 1e-3  # policy == reference at step 1 on both ranks
    assert_same_curve_and_adapter(tmp_path / "one", tmp_path / "two")
    assert len(list((tmp_path / "r2").glob("*.json"))) == 1  # one cache file, written by rank 0


def test_fsdp_config_trains_the_same_on_cpu(dolly, sft_one, tmp_path):
    """recipes/accelerate/fsdp.yaml (FSDP2, one shard per decoder layer) with two CPU processes."""
    out = tmp_path / "fsdp"
    finish(bezoar("sft", "--data", str(dolly), "--out", str(out), "--num-processes", "2",
                  "--accelerate-config", str(REPO / "recipes/accelerate/fsdp.yaml"),
                  recipe={"steps": [{"type": "sft", **per_rank(SFT)}]}, tmp=tmp_path))
    assert_same_curve_and_adapter(sft_one, out)
