"""The rehearsal recipe online against `batch: true` (teacher and filter judge through OpenAI Batch, the
MT-Bench judge through Anthropic Message Batches), all against one `bezoar serve`; the batch run is
SIGKILLed while it polls the judge's batch and run again.

Reports: the same records both ways, items submitted twice after the kill (goal 0), the cost ratio batch /
online from the runs' manifests (goal 0.5), the wall time of each, and the requests and bytes each sent.
On loopback a batch ends in seconds, so the wall times measure the polling overhead, not the providers' 24 h.

    .venv/bin/python benchmarks/bench_batch.py [--workdir DIR] [--steps generate,filter,eval]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import DATA, emit, peak_rss_mb
from rehearsal import model_server, record_ids, rehearse
from rehearsal_batch import small_recipe, batch_traffic, items_sent_twice, kill_mid_poll
from servers import free_port

from bezoar.llm.batch_store import batches_in

PROXIES = ("teacher_a", "teacher_b", "judge", "claude")


def run_cost(run_dir: Path) -> float:
    """USD the manifest says the run's calls cost (each role at its own rate: batch roles at the batch rate)."""
    steps = json.loads((run_dir / "manifest.json").read_text())["steps"]
    return sum(u.get("cost_usd", 0.0) for s in steps.values() for u in (s.get("usage") or {}).values())


def priced(recipe: Path, workdir: Path) -> Path:
    """Every remote role priced like the paper's GPT-4 (the rehearsal prices the judge alone), so the cost
    ratio covers teacher, judge and MT-Bench judge."""
    import yaml

    data = yaml.safe_load(recipe.read_text())
    eval_step = next(s for s in data["steps"] if s["type"] == "eval")
    for role in (data["models"]["teacher"], data["models"]["judge"], eval_step["mt_bench"]["judge"]):
        role.update(input_price_per_mtok=30.0, output_price_per_mtok=60.0)
    out = workdir / recipe.name
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--steps", default="generate,filter,eval",
                        help="steps to run (each with --only, in order); the training steps make no remote call")
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench-batch-"))
    root.mkdir(parents=True, exist_ok=True)
    steps = args.steps.split(",")
    online_recipe = priced(small_recipe(root / "online-recipe", DATA, batch=False), root / "online-recipe")
    batch_recipe_path = priced(small_recipe(root / "batch-recipe", DATA, batch=True), root / "batch-recipe")
    with model_server(root / "serve.log") as upstream:
        online_runs, started = [], time.perf_counter()
        for step in steps:
            online_runs.append(rehearse(root / "online", upstream, online_recipe, faulty=False, args=("--only", step)))
            assert online_runs[-1].returncode == 0, online_runs[-1].stderr[-2000:]
        online_s = time.perf_counter() - started
        ports = {name: free_port() for name in PROXIES}
        batch_runs, started, killed = [], time.perf_counter(), None
        for step in steps:
            killing = step == "filter"  # the judge's batch never ends in that run, so the kill finds it polling
            run = rehearse(root / "batch", upstream, batch_recipe_path, faulty=False, ports=ports, args=("--only", step),
                           watch=kill_mid_poll(ports["judge"]) if killing else None,
                           batch_faults={"judge": ("never-ends",)} if killing else None)
            if run.killed_at is not None:
                killed = run
                batch_runs.append(run)
                run = rehearse(root / "batch", upstream, batch_recipe_path, faulty=False, ports=ports, args=("--only", step))
            assert run.returncode == 0, run.stderr[-2000:]
            batch_runs.append(run)
        batch_s = time.perf_counter() - started
    online_dir, batch_dir = online_runs[-1].run_dir, batch_runs[-1].run_dir
    same = all(record_ids(online_dir, f) == record_ids(batch_dir, f) for f in ("generated", "filtered"))
    twice = items_sent_twice(*batch_runs)
    online_cost, batch_cost = run_cost(online_dir), run_cost(batch_dir)
    traffic = {"online": _sum(batch_traffic(r) for r in online_runs), "batch": _sum(batch_traffic(r) for r in batch_runs)}
    states = batches_in(batch_dir / "cache" / "calls.sqlite")
    print(f"records equal: {same}; items submitted twice: {twice}; killed mid-poll: {killed is not None}")
    print(f"cost online ${online_cost:.4f}, batch ${batch_cost:.4f}: ratio {batch_cost / online_cost:.3f}")
    print(f"wall online {online_s:.0f} s, batch {batch_s:.0f} s (ratio {batch_s / online_s:.2f}); "
          f"{len(states)} batches")
    print(f"traffic: {traffic}")
    emit({"steps": steps, "records_equal": same, "items_submitted_twice": twice, "killed_mid_poll": killed is not None,
          "cost_online_usd": round(online_cost, 4), "cost_batch_usd": round(batch_cost, 4),
          "cost_ratio": round(batch_cost / online_cost, 3) if online_cost else None,
          "wall_s_online": round(online_s, 1), "wall_s_batch": round(batch_s, 1), "wall_ratio": round(batch_s / online_s, 2),
          "batches": len(states), "requests_online": traffic["online"]["requests"], "requests_batch": traffic["batch"]["requests"],
          "bytes_uploaded_online": traffic["online"]["bytes_uploaded"], "bytes_uploaded_batch": traffic["batch"]["bytes_uploaded"],
          "items_in_batches": traffic["batch"]["items_in_batches"], "peak_rss_mb_driver": round(peak_rss_mb())})


def _sum(rows) -> dict:
    total: dict = {}
    for row in rows:
        for key, value in row.items():
            total[key] = total.get(key, 0) + value
    return total


if __name__ == "__main__":
    main()
