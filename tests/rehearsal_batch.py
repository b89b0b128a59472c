"""The rehearsal (recipes/rehearsal.yaml) with `batch: true` on every remote role: the teacher and the filter
judge through OpenAI Batch, the MT-Bench judge through Anthropic Message Batches, all answered by one
`bezoar serve`. Shared by tests/test_rehearsal_batch.py and benchmarks/bench_batch.py.

A batch run is SIGKILLed while it polls a judge batch (`kill_mid_poll`), then run again on the same URLs:
the same records as the online run, and no item submitted twice (`items_sent_twice`)."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

from rehearsal import Rehearsal, recipe_for

POLL_S = 0.5
BATCH_ROLES = ("models.teacher", "models.judge", "eval.mt_bench.judge")


SMALL = {"generate.lamini.n": 1, "generate.evol.n": 1, "generate.orca.n": 2,
         "generate.lamini.instruction_sampling": {"temperature": 1.0, "max_new_tokens": 48},
         "generate.lamini.response_sampling": {"temperature": 0.7, "max_new_tokens": 16},
         "generate.evol.evolve_sampling": {"temperature": 0.8, "max_new_tokens": 32},
         "generate.evol.response_sampling": {"temperature": 0.8, "max_new_tokens": 16},
         "generate.orca.response_sampling": {"temperature": 0.7, "max_new_tokens": 16},
         "models.judge.timeout_s": 300}
"""The rehearsal at half its sizes, and a judge that may take 300 s (not 20: no hang is injected here): on a
shared 2-core machine the full rehearsal took over an hour per run and online judge calls timed out."""


def small_recipe(workdir: Path, data_dir: Path, batch: bool) -> Path:
    """recipes/rehearsal.yaml at SMALL sizes; with `batch`, every remote role sends provider batches, polled
    every POLL_S."""
    changes = dict(SMALL)
    for role in BATCH_ROLES if batch else ():
        changes.update({f"{role}.batch": True, f"{role}.batch_poll_s": POLL_S})
    return recipe_for(workdir, data_dir, **changes)


def kill_mid_poll(port: int):
    """A `rehearse(watch=...)` that SIGKILLs the run (its whole process group) as soon as a batch sent to
    127.0.0.1:PORT is on record and not yet done. A loopback batch may end before its first poll: give that
    endpoint's proxy the never-ends batch fault in the run to be killed."""
    from bezoar.llm.batch_store import batches_in

    def watch(process: subprocess.Popen, run_dir: Path) -> float | None:
        cache = run_dir / "cache" / "calls.sqlite"
        while process.poll() is None:
            try:
                polling = [b for b in batches_in(cache) if f":{port}" in b.model and b.state in ("submitted", "in_progress")]
            except Exception:  # the cache is being created: look again
                polling = []
            if polling:
                os.killpg(process.pid, signal.SIGKILL)
                return time.time()
            time.sleep(0.05)
        return None

    return watch


def items_sent_twice(*runs: Rehearsal) -> int:
    """Items (request bodies) that went out in more than one batch upload or create, over these runs."""
    sent = Counter(h for run in runs for r in run.requests() for h in r.get("items", []))
    return sum(count - 1 for count in sent.values() if count > 1)


def batch_traffic(run: Rehearsal) -> dict:
    """Requests and bytes this run sent to the providers (batch and online), from the proxies' logs."""
    rows = run.requests()
    return {"requests": len(rows), "posts": sum(1 for r in rows if r.get("method", "POST") == "POST"),
            "bytes_uploaded": sum(r.get("bytes", 0) for r in rows if r.get("method", "POST") == "POST"),
            "items_in_batches": sum(len(r.get("items", [])) for r in rows)}
