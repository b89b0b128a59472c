"""recipes/rehearsal.yaml end to end with `batch: true` on the teacher, the filter judge (OpenAI Batch) and the
MT-Bench judge (Anthropic Message Batches) through `bezoar serve`: SIGKILLed while it polls the judge's batch,
then run with `--no-wait` (exit 75 while batches run), then again: the online run's records, no item
submitted twice, every batch done. See
tests/rehearsal_batch.py."""
from __future__ import annotations

import json
import sqlite3
import subprocess

import pytest

from bezoar.errors import BatchPending
from bezoar.llm.batch_store import batches_in
from bezoar.llm.batches import NO_WAIT_ENV
from rehearsal import BIN, model_server, record_ids, rehearse
from rehearsal_batch import items_sent_twice, kill_mid_poll, small_recipe
from servers import free_port


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_batch_rehearsal_killed_mid_poll_resumes(tmp_path, data_dir):
    with model_server(tmp_path / "serve.log") as upstream:
        online = tmp_path / "online"
        for step in ("generate", "filter"):
            done = rehearse(online, upstream, small_recipe(tmp_path / "online-recipe", data_dir, batch=False), faulty=False,
                            args=("--only", step))
            assert done.returncode == 0, done.stderr[-3000:]
        recipe = small_recipe(tmp_path / "batch-recipe", data_dir, batch=True)
        ports = {name: free_port() for name in ("teacher_a", "teacher_b", "judge", "claude")}  # the URLs are the recipe's
        killed = rehearse(tmp_path / "batch", upstream, recipe, faulty=False, ports=ports,
                          batch_faults={"teacher_a": ("poll-500",), "judge": ("never-ends",)},  # polled until killed
                          watch=kill_mid_poll(ports["judge"]))
        # `bezoar run --no-wait` (the variable it sets): submits, polls once, exits 75 while batches run.
        pending = rehearse(tmp_path / "batch", upstream, recipe, faulty=False, ports=ports,
                           batch_faults={"judge": ("never-ends",) * 4, "claude": ("never-ends",) * 4},
                           extra_env={NO_WAIT_ENV: "1"})
        resumed = rehearse(tmp_path / "batch", upstream, recipe, faulty=False, ports=ports)
    assert killed.killed_at is not None and killed.returncode != 0, "the run was never killed mid-poll"
    assert pending.returncode == BatchPending.EXIT_CODE, pending.stderr[-3000:]
    assert "run the same command again to collect them" in pending.stderr
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    # The batch run's records are the online run's.
    assert record_ids(resumed.run_dir, "generated") == record_ids(done.run_dir, "generated")
    assert record_ids(resumed.run_dir, "filtered") == record_ids(done.run_dir, "filtered")

    # Every remote call went out in a batch, none twice; the batch that was polled when the run died was
    # collected by the next run, which submitted nothing that was already in flight.
    online_calls = [r["path"] for r in resumed.requests()
                    if r.get("method", "POST") == "POST" and "/batches" not in r["path"] and "/files" not in r["path"]]
    assert online_calls == ["/v1/messages"]  # the probe's one-token call (Anthropic has no free route to probe)
    assert items_sent_twice(killed, pending, resumed) == 0
    states = batches_in(resumed.run_dir / "cache" / "calls.sqlite")
    assert states and {b.state for b in states} == {"done"}
    # where each batch lives (its record's endpoint: the role's first URL), not its role's identity, which lists
    # the URLs sorted (it keys the call cache) and so named teacher_b first whenever its port sorted lower
    with sqlite3.connect(resumed.run_dir / "cache" / "calls.sqlite") as cache:
        endpoints = [row[0] for row in cache.execute("SELECT endpoint FROM batches")]
    polled_at = {int(url.split("127.0.0.1:")[1].split("/")[0]) for url in endpoints}
    assert {ports["teacher_a"], ports["judge"], ports["claude"]} <= polled_at, (ports, polled_at)
    assert any(r["action"] == "poll-500" for r in killed.requests("teacher_a"))
    manifest = json.loads((resumed.run_dir / "manifest.json").read_text())
    assert all(manifest["steps"][s]["status"] == "done"
               for s in ("generate", "filter", "sft", "hh_slices", "sft_hh", "dpo", "eval", "report"))
    status = subprocess.run([str(BIN / "bezoar"), "status", str(resumed.run_dir)], capture_output=True, text=True, timeout=120)
    assert status.returncode == 0
