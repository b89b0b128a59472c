"""Do plans hold? Each recipe is run from nothing (fresh run directory and model cache), then every step's
plan is set against what its manifest entry says it did, per step and role.

Two plans are compared: the one made at `bezoar run` start (before anything ran: priors only) and the one
each step made as it started (with what the earlier steps of the run measured, as `bezoar status` uses).
Calls count answers (made or served from the run's cache), tokens the prompt plus completion tokens of the
calls made; a step's wall time is its manifest `wall_s` (model calls, training and scoring).

    python benchmarks/bench_plan.py                        # tiny, verifiable, rehearsal (~1.5 h idle)
    python benchmarks/bench_plan.py --runs DIR             # reuse finished runs under DIR
    python benchmarks/bench_plan.py --recipes tiny         # one of them
    python benchmarks/bench_plan.py --runs DIR --replan    # today's code's step plans against those runs
    python benchmarks/bench_plan.py --recipes tiny --seeds 7-12   # and tiny's generate step alone, seeds 7-12

`--seeds A-B` (or N: 1-N) runs tiny.yaml's generate step again with run.seed A..B: with 6 records a scheme and a 135M
teacher whose lists mostly do not parse, one run's calls stray from the mean; the JSON then says by how much
(`tiny_generate_over_seeds`: each role's plan, the calls of every run, and how many are within +-20%).

`--replan` plans each step of a finished run again with the code as it is now, as the step would have at its
start (what the earlier steps made is on disk); one difference: caches the run filled (the contamination
index) count as built.

Last line: {"max_call_error", "max_token_error", "max_time_error", ...} relative errors (plan / actual - 1)
over every step and role of every recipe, for the step-start plan, and the same for the start-of-run plan.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from functools import lru_cache
from pathlib import Path

import yaml

from common import DATA, REPO, emit, peak_rss_mb
from servers import bezoar_server  # tests/servers.py: `bezoar serve` on a free loopback port

BEZOAR = str(Path(sys.executable).parent / "bezoar")


def run_recipe(name: str, root: Path) -> Path:
    """The recipe run to completion in root/NAME (rehearsal behind its loopback server); its run dir."""
    run_dir = root / name
    if (run_dir / "manifest.json").exists() and _all_done(run_dir):
        return run_dir
    env = {**os.environ, "BEZOAR_DATA": str(DATA), "BEZOAR_CACHE_DIR": str(root / f"{name}-cache"),
           "HF_HUB_OFFLINE": "1", "REHEARSAL_API_KEY": "rehearsal"}
    command = [BEZOAR, "run", str(REPO / "recipes" / f"{name}.yaml"), "--run-dir", str(run_dir)]
    with (bezoar_server() if name == "rehearsal" else nullcontext("")) as url:
        if url:
            root_url = url.removesuffix("/v1")
            env |= {"REHEARSAL_TEACHER_URLS": url, "REHEARSAL_JUDGE_URL": url, "REHEARSAL_CLAUDE_URL": root_url}
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True)
        print(f"{name}: ran in {time.perf_counter() - started:.0f} s", flush=True)
    return run_dir


def seed_runs(root: Path, seeds: range) -> list[Path]:
    """tiny.yaml's generate step alone, once per run.seed, in root/tiny-seeds/seed-S."""
    recipe = yaml.safe_load((REPO / "recipes" / "tiny.yaml").read_text())
    env = {**os.environ, "BEZOAR_DATA": str(DATA), "BEZOAR_CACHE_DIR": str(root / "tiny-cache"), "HF_HUB_OFFLINE": "1"}
    found = []
    for seed in seeds:
        run_dir = root / "tiny-seeds" / f"seed-{seed}"
        if not (run_dir / "manifest.json").exists() or not _all_done(run_dir, ["generate"]):
            recipe["run"]["seed"] = seed
            path = run_dir.with_suffix(".yaml")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(recipe, sort_keys=False))
            subprocess.run([BEZOAR, "run", str(path), "--only", "generate", "--run-dir", str(run_dir)], env=env, check=True)
        found.append(run_dir)
    return found


def seed_range(text: str) -> range:
    first, _, last = text.rpartition("-")
    return range(int(first or 1), int(last) + 1)


def over_seeds(run_dirs: list[Path]) -> dict:
    """Per role of the generate step: what each run planned and made, and how many runs are within +-20%."""
    rows = [row for run_dir in run_dirs for row in errors(run_dir, "step") if row["role"] != "(wall)"
            and row["step"] == "generate"]
    figures = {}
    for role in sorted({row["role"] for row in rows}):
        mine = [row for row in rows if row["role"] == role]
        made = [row["calls"][1] for row in mine]
        figures[role] = {"planned": [row["calls"][0] for row in mine], "made": made,
                         "plan_vs_mean": round(mine[0]["calls"][0] / (sum(made) / len(made)) - 1, 3),
                         "calls_within_20pct": sum(abs(row["call_error"]) <= 0.2 for row in mine),
                         "tokens_within_20pct": sum(abs(row["token_error"]) <= 0.2 for row in mine)}
    return {"seeds": [int(d.name.removeprefix("seed-")) for d in run_dirs], **figures}


def _all_done(run_dir: Path, steps: list[str] | None = None) -> bool:
    entries = json.loads((run_dir / "manifest.json").read_text()).get("steps", {})
    wanted = [entries.get(name, {}) for name in steps] if steps else list(entries.values())
    return bool(wanted) and all(entry.get("status") == "done" for entry in wanted)


def actuals(entry: dict) -> dict[str, dict[str, float]]:
    """Role -> {calls, tokens} a step's manifest entry records."""
    found: dict[str, dict[str, float]] = {}
    for role, usage in (entry.get("usage") or {}).items():
        made, answered = usage["calls"], usage["calls"] + usage["cache_hits"]
        # The plan counts the tokens of every call answered; the manifest those of the calls made (a cache
        # hit costs none): scale to the calls answered, at the made calls' mean.
        tokens = (usage["prompt_tokens"] + usage["completion_tokens"]) * answered / made if made else 0
        totals = found.setdefault(_role(role), {"calls": 0, "tokens": 0})  # eval's checkpoints add up
        totals["calls"] += answered
        totals["tokens"] += round(tokens)
    return found


def _role(role: str) -> str:
    """A checkpoint answering as `student:NAME` is the plan's student."""
    return role.split(":")[0]


def planned(plan: dict, step: str) -> tuple[dict[str, dict[str, float]], float | None]:
    """Role -> {calls, tokens} and the step's wall time, from a plan's JSON."""
    found: dict[str, dict[str, float]] = {}
    for line in plan.get("lines", []):
        if line["step"] == step:
            role = found.setdefault(line["role"], {"calls": 0, "tokens": 0})
            role["calls"] += line["calls"]
            role["tokens"] += line["prompt_tokens"] + line["completion_tokens"]
    return found, (plan.get("wall_s") or {}).get(step)


@lru_cache(maxsize=None)  # the run-start plan is the same for every step of a run: made once
def replanned(run_dir: Path, step: str | None) -> dict:
    """The plan made now (`--replan`): of `step`, with the finished run's earlier steps on disk; of every step
    (None) as at the run's start, before anything ran."""
    from bezoar.config import load_recipe
    from bezoar.plan import make_plan

    os.environ.setdefault("BEZOAR_DATA", str(DATA))
    recipe = load_recipe(REPO / "recipes" / f"{run_dir.name}.yaml")
    if step is None:
        with tempfile.TemporaryDirectory() as nothing_ran:
            return make_plan(recipe, None, Path(nothing_ran)).to_json()
    return make_plan(recipe, [step], run_dir).to_json()


def errors(run_dir: Path, which: str) -> list[dict]:
    """One row per step and role: planned, actual and the relative errors."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    rows = []
    for step, entry in manifest["steps"].items():
        if which.startswith("replan"):
            plan = replanned(run_dir, None if which == "replan_start" else step)
        else:
            plan = entry.get("planned") if which == "step" else manifest.get("plan")
        roles, wall = planned(plan or {}, step)
        done = actuals(entry)
        for role in sorted(set(roles) | set(done)):
            want, got = roles.get(role, {"calls": 0, "tokens": 0}), done.get(role, {"calls": 0, "tokens": 0})
            rows.append({"recipe": run_dir.name, "step": step, "role": role, "calls": (want["calls"], got["calls"]),
                         "tokens": (want["tokens"], got["tokens"]), "call_error": _relative(want["calls"], got["calls"]),
                         "token_error": _relative(want["tokens"], got["tokens"])})
        if entry.get("wall_s", 0) >= 10:  # a step of a few seconds is start-up noise, not a plan to hold
            rows.append({"recipe": run_dir.name, "step": step, "role": "(wall)", "wall_s": (wall, entry["wall_s"]),
                         "time_error": _relative(wall or 0, entry["wall_s"])})
    return rows


def _relative(planned_value: float, actual: float) -> float | None:
    if not actual and not planned_value:
        return None
    return round(planned_value / actual - 1, 3) if actual else float("inf")


def worst(rows: list[dict], key: str) -> float | None:
    values = [abs(r[key]) for r in rows if r.get(key) is not None]
    return max(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=["tiny", "verifiable", "rehearsal"])
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "bench_plan")
    parser.add_argument("--replan", action="store_true", help="plan the finished runs' steps with today's code")
    parser.add_argument("--seeds", type=seed_range, default=range(0), help="also run tiny's generate step with "
                        "seeds A-B (or N: 1-N)")
    args = parser.parse_args()
    args.runs.mkdir(parents=True, exist_ok=True)
    run_dirs = [run_recipe(name, args.runs) for name in args.recipes]
    figures: dict = {"recipes": args.recipes, "plans": "replanned now" if args.replan else "recorded in the runs"}
    for which in ("replan", "replan_start") if args.replan else ("step", "start"):
        rows = [row for run_dir in run_dirs for row in errors(run_dir, which)]
        if not which.endswith("start"):
            for row in rows:
                print(json.dumps(row))
        suffix = "_at_run_start" if which.endswith("start") else ""
        figures |= {f"max_call_error{suffix}": worst(rows, "call_error"),
                    f"max_token_error{suffix}": worst(rows, "token_error"),
                    f"max_time_error{suffix}": worst(rows, "time_error")}
    if args.seeds:
        figures["tiny_generate_over_seeds"] = over_seeds(seed_runs(args.runs, args.seeds))
    emit(figures | {"peak_rss_mb_driver": round(peak_rss_mb())})


if __name__ == "__main__":
    main()
