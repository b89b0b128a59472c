"""Kill `bezoar run` in every stage, resume, and get what the mode promises (the CI-sized run of
tests/chaos.py; benchmarks/bench_chaos.py does the same at 20+ random moments).

Deterministic mode: the session fixture `smoke_runs` (tests/conftest.py) runs a smoke-sized recipe once
uninterrupted with its own cache (`runs/reference`), then again in a fresh run directory (`runs/killed`),
SIGKILLing the whole process group once in each of the seven stages and restarting the same command after
each kill: the result is the reference's. tests/test_pipeline.py reuses the killed run for the status,
report and bad-input checks.

Fast mode (`fast_smoke_runs`): the recipe's decoding steps (generate, filter, eval of the base student,
report), killed in each in `runs/fast`, then run again from a copy of its call cache alone (`runs/replay`):
no call is made, and every record and evaluation output is the one the cache makes, so no finished call was
lost, repeated or changed. (Training resumes alike in both modes; bench_chaos.py --mode fast kills the
whole recipe.)"""
from __future__ import annotations

import subprocess

import pytest

from bezoar.llm.device import plan_device
from chaos import BEZOAR, DECODING_STEPS, STAGES, TARGETS, manifest, record_ids

pytestmark = pytest.mark.xdist_group("smoke")  # one pytest-xdist worker builds the session's smoke runs


@pytest.mark.slow
@pytest.mark.timeout(2700)  # a reference run and a run killed seven times: ~12 min on a busy 2-core machine
def test_killed_in_every_stage_resumes_to_the_reference_result(smoke_runs):
    figures, chaos = smoke_runs.figures, smoke_runs.chaos
    print({k: v for k, v in figures.items() if k != "training"})
    assert chaos.kills == 7 and chaos.stages_hit == list(TARGETS), [(a.target, a.stage_at_kill) for a in chaos.attempts]
    assert figures["failures"] == [] and figures["identical"]
    assert figures["lost_records"] == figures["duplicate_records"] == figures["torn_or_duplicated_lines"] == 0
    assert figures["extra_calls"] <= 0 and figures["calls_completed_twice"] == 0
    assert figures["reference_calls"] > 0 and figures["max_eval_loss_diff"] <= figures["loss_tolerance"]
    trained = [run for runs in figures["training"].values() for run in runs if run["global_step"] is not None]
    assert len(trained) >= 3 and all(run["global_step"] == 2 for run in trained)  # max_steps, resumed or not
    killed = manifest(smoke_runs.root / "runs" / "killed")["steps"]
    assert killed["generate"]["usage"]["teacher"]["model"].endswith(":float32")  # deterministic mode decodes in fp32


@pytest.mark.slow
@pytest.mark.timeout(2700)
def test_the_killed_run_resumed_rather_than_started_over(smoke_runs):
    run_dir = smoke_runs.root / "runs" / "killed"
    assert "interrupted" in smoke_runs.statuses[0]  # the killed stage is not shown as still running
    stages = manifest(run_dir)["steps"]
    assert [s for s in stages if s in STAGES and stages[s]["status"] == "done"] == list(STAGES)
    assert manifest(run_dir)["order"] == list(STAGES)  # the tiny recipe lists no preferences step
    assert stages["generate"]["status"] == "done" and stages["generate"]["usage"]["teacher"]["cache_hits"] >= 3
    generated = record_ids(run_dir, "generate")
    assert {name: len(generated.get(name, [])) for name in ("evol.jsonl", "lamini.jsonl", "orca.jsonl")} == \
        {"evol.jsonl": 3, "lamini.jsonl": 3, "orca.jsonl": 3}
    assert stages["generate"]["inputs"] and all(len(h) == 64 for h in stages["generate"]["inputs"].values())
    assert stages["filter"]["usage"]["judge"]["cache_hits"] > 0  # judged before the kill: not asked again
    sft_runs = stages["sft"]["result"]["details"]["runs"]
    assert any(run.get("resumed_from", "").startswith("checkpoint-") for run in sft_runs)
    cards = {p.name for p in (run_dir / "report" / "cards").glob("*.md")}
    assert "dpo.md" in cards and {"lamini.md", "evol.md", "orca.md"} & cards  # model and data set cards
    reference = manifest(smoke_runs.root / "runs" / "reference")["steps"]
    assert reference["generate"]["usage"]["teacher"]["cache_hits"] == 0  # the reference made its own calls

    again = subprocess.run([BEZOAR, "run", "killed.yaml"], cwd=smoke_runs.root, capture_output=True, text=True,
                           timeout=600)  # unchanged: every stage but the report skipped
    assert again.returncode == 0 and "generate: unchanged" in again.stderr and "eval: unchanged" in again.stderr
    status = subprocess.run([BEZOAR, "status", "runs/killed"], cwd=smoke_runs.root, capture_output=True, text=True,
                            timeout=120)
    assert status.returncode == 0 and "done" in status.stdout and "teacher" in status.stdout


@pytest.mark.slow
@pytest.mark.timeout(2700)
def test_fast_mode_killed_in_every_stage_keeps_every_finished_call(fast_smoke_runs):
    figures, chaos = fast_smoke_runs.figures, fast_smoke_runs.chaos
    print({k: v for k, v in figures.items() if k != "training"})
    # every step that decodes was killed (a kill aimed at the short report step may land between steps)
    assert chaos.kills == len(DECODING_STEPS) and {"generate", "filter", "eval"} <= set(chaos.stages_hit), \
        [(a.target, a.stage_at_kill) for a in chaos.attempts]
    assert figures["failures"] == [] and figures["kept_from_cache"]
    assert figures["lost_records"] == figures["duplicate_records"] == figures["torn_or_duplicated_lines"] == 0
    assert figures["calls_completed_twice"] == 0 and figures["replay_calls"] == 0 and figures["calls"] > 0
    assert figures["data_files"] > 0 and figures["eval_files"] > 0
    fast = manifest(fast_smoke_runs.root / "runs" / "fast")["steps"]
    assert fast["generate"]["usage"]["teacher"]["model"].endswith(f":{plan_device('auto', exact=False).dtype_name}")
