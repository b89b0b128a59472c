"""Chaos for `bezoar run`: SIGKILL the whole process group at chosen or random moments, start the same
command again after each kill until it completes, and check what a resumed run promises in its mode.

- Deterministic mode (`run.deterministic: true`): the result is the one of a run never killed (`compare`).
- Fast mode (the default): every finished call is kept and none is repeated, so the result is what the
  call cache alone makes: the same recipe run again in a fresh directory from a copy of the killed run's
  call cache makes no call and writes the same records, training steps and evaluation outputs
  (`replay`, `compare_fast`); only calls in flight at a kill may have come out otherwise than in a run
  never killed, so nothing is compared with one.

Shared by tests/test_chaos.py (a handful of kills, in CI) and benchmarks/bench_chaos.py (20 or more).

A kill is aimed at a stage and a delay into it (`Kill`): the run is started, and once the manifest shows
that stage (or a later one) running, the kill lands `after_s` later, or as soon as `ready()` holds. Where
it really landed is read from the manifest at the moment of the kill. Random plans are drawn over the
reference run's own timeline, one moment inside every stage and the rest anywhere, so that every stage,
report included, is hit.

Model calls are counted from the run's call cache: every completed call is committed there with its
time (`created`), so a snapshot of {key: created} after each attempt says which calls that attempt
completed; a call completed twice (a lost cache write) shows as a changed `created`. Calls in flight
at a kill never reach the cache: they are the only calls a resumed run may repeat.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

REPO = Path(__file__).resolve().parents[1]
BEZOAR = str(Path(sys.executable).parent / "bezoar")
STAGES = ("generate", "filter", "sft", "hh_slices", "sft_hh", "dpo", "eval", "report")
"""The steps of the smoke recipe (recipes/tiny.yaml's), in order."""
TARGETS = ("generate", "filter", "sft", "sft_hh", "dpo", "eval", "report")
"""The steps the smoke recipe spends time in (hh_slices is done at once)."""
TRAINED = ("sft", "sft_hh", "dpo")
LOSS_TOLERANCE = 0.02
"""Largest |difference| allowed between a resumed and an uninterrupted adapter's validation loss. A
resumed Trainer restores the optimizer, scheduler, RNG state and data order, so the losses agree to
float rounding (measured: 0); the margin allows for reduction-order differences between thread counts."""


SMOKE = {  # what differs from recipes/tiny.yaml: every count cut to the bone
    ("generate", "lamini", "n"): 3, ("generate", "evol", "n"): 3, ("generate", "orca", "n"): 3,
    # shorter instruction or evolution budgets cost more than they save: cut-off lists do not parse
    # and cut-off evolutions leak the template, so more calls are needed for the same three records
    ("generate", "lamini", "response_sampling", "max_new_tokens"): 32,
    ("generate", "evol", "response_sampling", "max_new_tokens"): 32,
    ("generate", "orca", "response_sampling", "max_new_tokens"): 32,
    ("generate", "evol", "evolve_sampling", "max_new_tokens"): 64,
    ("sft", "max_steps"): 2, ("sft", "eval_steps"): 1, ("sft_hh", "max_steps"): 2, ("sft_hh", "eval_steps"): 1,
    ("sft_hh", "gradient_accumulation_steps"): 1, ("dpo", "gradient_accumulation_steps"): 1,
    ("hh_slices", "sft_n"): 8, ("hh_slices", "dpo_n"): 8, ("hh_slices", "heldout_n"): 4,
    ("sft_hh", "max_validation_examples"): 4, ("dpo", "max_validation_examples"): 4,
    ("dpo", "max_steps"): 2, ("dpo", "eval_steps"): 1,
    ("eval", "checkpoints"): ["dpo"], ("eval", "mt_bench", "limit"): 1, ("eval", "mt_bench", "max_new_tokens"): 24,
    ("eval", "harness", "limit"): 1, ("eval", "preference", "limit"): 4,
    # 32-token replies are mostly cut short: keep them, so the judge has nine records to grade one
    # call at a time (a kill lands between two judge calls, not before the first or after the last)
    ("filter", "heuristics", "truncated"): False, ("filter", "judge", "chunk_size"): 1,
}


DECODING_STEPS = ("generate", "filter", "eval", "report")
"""The smoke recipe without its training steps: the CI-sized fast-mode run, whose promise is about calls
(training resumes the same way in both modes: the deterministic run checks it; bench_chaos runs fast mode
on the whole recipe). Its eval step scores the base student on MT-Bench and the harness."""


def smoke_recipe(path: Path, name: str, data_dir: Path, deterministic: bool = True,
                 steps: tuple[str, ...] = STAGES) -> Path:
    """recipes/tiny.yaml with SMOKE's counts, run.name `name`, the decoding mode, and the data at `data_dir`;
    only `steps` kept (without training steps the eval step scores the base student alone)."""
    recipe = yaml.safe_load((REPO / "recipes" / "tiny.yaml").read_text())
    for keys, value in SMOKE.items():
        set_step_key(recipe, keys, value)
    recipe["steps"] = [s for s in recipe["steps"] if s["type"] in steps]
    if not set(TRAINED) & set(steps):
        set_step_key(recipe, ("eval", "checkpoints"), [])
        set_step_key(recipe, ("eval", "preference", "enabled"), False)  # its held-out pairs come from hh_slices
    recipe["run"]["name"] = name
    recipe["run"]["deterministic"] = deterministic
    path.write_text(yaml.safe_dump(recipe).replace("${BEZOAR_DATA:-../shared/data}", str(data_dir)))
    return path


def set_step_key(recipe: dict, keys: tuple, value) -> None:
    """recipe[step whose type (or name) is keys[0]][keys[1]]...[keys[-1]] = value."""
    node = next(s for s in recipe["steps"] if keys[0] in (s.get("name"), s["type"]))
    for key in keys[1:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


def mode_env(deterministic: bool) -> dict[str, str]:
    """The environment a run in the chosen mode starts with: BEZOAR_DETERMINISTIC is what `--deterministic`
    sets, and what a run started from a test (which decodes deterministically by default) must say."""
    return {**os.environ, "BEZOAR_DETERMINISTIC": "1" if deterministic else "0"}


@dataclass
class Kill:
    stage: str
    after_s: float = 0.0
    ready: Callable[[], bool] | None = None
    """When given, the kill lands as soon as this holds (polled every 0.1 s) once `stage` runs."""
    after_kill: Callable[[], None] | None = None
    """Called once the killed process group is gone (to look at the run between attempts)."""
    fraction: float | None = None
    """With `durations`: the kill lands this share of the stage's reference duration into it. A resumed
    run may start past the stage aimed at (done by an earlier attempt): the kill is then aimed at the
    first stage it runs, at the same share of it. A stage that ends before its kill lands (a resumed
    stage is faster) is killed as soon as the next one starts, so no kill skips a stage."""
    durations: dict[str, float] = field(default_factory=dict)

    def delay_s(self, stage: str) -> float:
        return self.after_s if self.fraction is None else self.fraction * self.durations.get(stage, 0.0)


@dataclass
class Attempt:
    """One start of the command: killed (where, when) or run to its end."""

    target: str
    killed: bool
    stage_at_kill: str | None = None
    seconds: float = 0.0
    calls_completed: int = 0
    returncode: int | None = None


@dataclass
class ChaosRun:
    attempts: list[Attempt] = field(default_factory=list)
    calls_completed: int = 0
    calls_repeated: int = 0

    @property
    def kills(self) -> int:
        return sum(a.killed for a in self.attempts)

    @property
    def stages_hit(self) -> list[str]:
        hit = {a.stage_at_kill for a in self.attempts if a.killed}
        return [s for s in (*STAGES, "between stages") if s in hit]


def manifest(run_dir: Path) -> dict:
    """The manifest, or an empty one while it is absent or being replaced."""
    try:
        return json.loads((run_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return {"steps": {}}


def running_stage(run_dir: Path, pid: int | None = None) -> str | None:
    """The stage the manifest shows running (under `pid`: a killed attempt leaves its stage "running")."""
    stages = manifest(run_dir).get("steps", {})
    return next((name for name in STAGES if stages.get(name, {}).get("status") == "running"
                 and pid in (None, stages[name].get("pid"))), None)


def reached(run_dir: Path, stage: str, pid: int) -> bool:
    """The process `pid` is running `stage` or a later one."""
    running = running_stage(run_dir, pid)
    return running is not None and STAGES.index(running) >= STAGES.index(stage)


def cache_rows(run_dir: Path) -> dict[str, float]:
    """{key: created} of every committed call in the run's cache."""
    path = run_dir / "cache" / "calls.sqlite"
    if not path.exists():
        return {}
    for _ in range(50):
        try:
            # closing(): sqlite3's own `with` only commits; a connection left to the garbage collector
            # removes the WAL's side files whenever it is collected, in the middle of a later check.
            with closing(sqlite3.connect(path, timeout=10)) as conn:
                return dict(conn.execute("SELECT key, created FROM calls"))
        except sqlite3.OperationalError:  # the table not created yet, or a writer holding the lock
            time.sleep(0.1)
    return {}


def new_calls(before: dict[str, float], after: dict[str, float]) -> tuple[int, int]:
    """(calls completed between the snapshots, of which repeats of a call already cached)."""
    completed = [k for k, t in after.items() if before.get(k) != t]
    return len(completed), sum(k in before for k in completed)


def timed_run(command: list[str], cwd: Path, run_dir: Path, timeout_s: float,
              env: dict[str, str] | None = None) -> tuple[float, dict[str, float]]:
    """Run to the end, recording when each stage was first seen running; returns (seconds, starts)."""
    log = run_dir.parent / f"{run_dir.name}.log"  # a file, not a pipe: nobody reads a pipe while it runs
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as stderr:
        process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
                                   env=env)
    start, starts = time.time(), {}
    try:
        while process.poll() is None:
            if time.time() - start > timeout_s:
                raise TimeoutError(f"{' '.join(command)} ran past {timeout_s} s")
            stage = running_stage(run_dir, process.pid)
            if stage and stage not in starts:
                starts[stage] = round(time.time() - start, 2)
            time.sleep(0.1)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {process.returncode}: {log.read_text()[-3000:]}")
    return time.time() - start, starts


def random_plan(starts: dict[str, float], total_s: float, count: int, rng: random.Random) -> list[Kill]:
    """`count` moments over the reference's timeline, at least one inside every stage; as (stage, delay)."""
    bounds = [(s, starts[s]) for s in STAGES if s in starts]
    windows = {s: (t, bounds[i + 1][1] if i + 1 < len(bounds) else total_s) for i, (s, t) in enumerate(bounds)}
    moments = [rng.uniform(*windows[s]) for s in windows]
    moments += [rng.uniform(bounds[0][1], total_s) for _ in range(count - len(moments))]
    durations = {s: end - begin for s, (begin, end) in windows.items()}
    plan = []
    for moment in sorted(moments):
        stage = next(s for s in reversed(windows) if windows[s][0] <= moment)
        after_s = round(moment - windows[stage][0], 2)
        plan.append(Kill(stage, after_s=after_s, fraction=after_s / max(durations[stage], 1e-6), durations=durations))
    return plan


def run_with_kills(command: list[str], cwd: Path, run_dir: Path, plan: list[Kill], timeout_s: float,
                   on_attempt: Callable[[Attempt], None] | None = None, env: dict[str, str] | None = None) -> ChaosRun:
    """Each planned kill in turn (restarting the command after it), then the command to its end."""
    chaos, rows = ChaosRun(), cache_rows(run_dir)
    deadline = time.time() + timeout_s
    for kill in [*plan, None]:
        attempt = _attempt(command, cwd, run_dir, kill, deadline, env)
        if attempt.killed and kill.after_kill:
            kill.after_kill()
        after = cache_rows(run_dir)
        attempt.calls_completed, repeated = new_calls(rows, after)
        chaos.calls_completed += attempt.calls_completed
        chaos.calls_repeated += repeated
        rows = after
        chaos.attempts.append(attempt)
        if on_attempt:
            on_attempt(attempt)
        if not attempt.killed:  # it ran to its end before the kill: the rest of the plan is moot
            if attempt.returncode != 0:
                log = (run_dir.parent / f"{run_dir.name}.log").read_text()[-3000:]
                raise RuntimeError(f"attempt {len(chaos.attempts)} ({attempt.target}) exited {attempt.returncode}: {log}")
            break
    return chaos


def _attempt(command: list[str], cwd: Path, run_dir: Path, kill: Kill | None, deadline: float,
             env: dict[str, str] | None) -> Attempt:
    with open(run_dir.parent / f"{run_dir.name}.log", "ab") as stderr:  # every attempt's log, one after another
        process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
                                   env=env)
    attempt, start, seen = Attempt(target=kill.stage if kill else "end", killed=False), time.time(), None
    aimed = kill.stage if kill else ""
    try:
        while process.poll() is None:
            if time.time() > deadline:
                raise TimeoutError(f"the chaos run did not finish in time (attempt aimed at {attempt.target})")
            running = running_stage(run_dir, process.pid)
            moved_on = kill and kill.fraction is not None and running and STAGES.index(running) > STAGES.index(aimed)
            if moved_on and seen is None:
                aimed, seen = running, time.time()  # started past the stage aimed at: aim at the first one it runs
            elif moved_on:
                seen = 0.0  # the stage aimed at ended before its kill: kill now, at the next one's start
            elif kill and seen is None and reached(run_dir, kill.stage, process.pid):
                seen = time.time()
            if kill and seen is not None and (kill.ready() if kill.ready else time.time() - seen >= kill.delay_s(aimed)):
                attempt.stage_at_kill = running_stage(run_dir, process.pid) or "between stages"
                os.killpg(process.pid, signal.SIGKILL)
                attempt.killed = True
                break
            time.sleep(0.1)
    finally:
        if process.poll() is None and not attempt.killed:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        _wait_for_group(process.pid)
    attempt.seconds, attempt.returncode = round(time.time() - start, 2), process.returncode
    return attempt


def _wait_for_group(pgid: int, timeout_s: float = 30) -> None:
    """SIGKILL is delivered at once but a process leaves only when the kernel has reaped it: the stage's
    child must be gone before the next attempt starts (it would hold the run's lock and files)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


# ---------------------------------------------------------------- comparing with the reference


def jsonl_files(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.rglob("*.jsonl") if "cache" not in p.relative_to(run_dir).parts)


def line_problems(run_dir: Path) -> dict[str, list[str]]:
    """Per JSONL file: lines that do not parse (torn) and lines written twice (duplicated)."""
    problems: dict[str, list[str]] = {}
    for path in jsonl_files(run_dir):
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        found = []
        for number, line in enumerate(lines, 1):
            try:
                json.loads(line)
            except ValueError:
                found.append(f"line {number} does not parse (torn)")
        found += [f"written {n} times: {line[:80]}" for line, n in Counter(lines).items() if n > 1]
        if found:
            problems[str(path.relative_to(run_dir))] = found
    return problems


def row_id(row: object) -> object:
    """What names a row: a record's meta.id, an `id`, or an MT-Bench row's question, model, turn and judge."""
    if not isinstance(row, dict):
        return None
    if isinstance(row.get("meta"), dict) and "id" in row["meta"]:
        return row["meta"]["id"]
    if "id" in row:
        return json.dumps(row["id"])
    if "question_id" in row:
        return json.dumps([row.get(k) for k in ("question_id", "model", "model_id", "turn", "judge")])
    return None


def id_duplicates(run_dir: Path) -> dict[str, int]:
    """Per JSONL file: rows whose id another row of the file already has."""
    found = {}
    for path in jsonl_files(run_dir):
        ids = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                ids.append(row_id(json.loads(line)))
            except ValueError:
                continue
        ids = [i for i in ids if i is not None]
        found[str(path.relative_to(run_dir))] = len(ids) - len(set(ids))
    return found


def record_ids(run_dir: Path, folder: str) -> dict[str, list[str]]:
    """{file: sorted record ids} for every JSONL file of RUN_DIR/FOLDER (a step's folder; not its subfolders)."""
    found = {}
    for path in sorted((run_dir / folder).glob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        found[path.name] = sorted(row["meta"]["id"] for row in rows if "meta" in row)
    return found


def training(run_dir: Path) -> dict[str, list[dict]]:
    """Per training step, per run in it: output folder, steps and validation loss, from the results."""
    stages = manifest(run_dir)["steps"]
    found = {}
    for stage in TRAINED:
        summary = (stages.get(stage, {}).get("result") or {}).get("details") or {}
        runs = summary.get("runs") or [summary]
        found[stage] = [{"output": Path(r.get("output", "")).name, "global_step": r.get("global_step"),
                         "eval_loss": r.get("best_eval_loss"),
                         "validation_examples": (r.get("data") or {}).get("validation_examples")} for r in runs]
    return found


def eval_outputs(run_dir: Path) -> dict[str, str]:
    """Every evaluation output, by path, as text with the timing fields and the run's own path removed."""
    found = {}
    for path in sorted((run_dir / "eval").rglob("*")):
        if path.is_file() and path.suffix in (".json", ".jsonl"):
            # the run's path, absolute or not (a reference copied from elsewhere names where it ran)
            text = re.sub(rf"[^\s\"',=]*runs/{re.escape(run_dir.name)}", "RUN_DIR", path.read_text(encoding="utf-8"))
            found[str(path.relative_to(run_dir))] = _without_timing(text, path.suffix)
    return found


TIMING = ("tstamp", "wall", "seconds", "elapsed", "started", "ended", "time", "date", "rss", "cpu_s", "per_s",
          "per_second", "usage")
"""Keys (substrings) that measure the machine, or the calls this process made (a resumed run reads some
from the cache), not the result: left out of the comparison."""


def _without_timing(text: str, suffix: str) -> str:
    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if not any(t in k for t in TIMING)}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    rows = [json.loads(line) for line in text.splitlines() if line.strip()] if suffix == ".jsonl" else [json.loads(text)]
    return json.dumps([clean(row) for row in rows], sort_keys=True)


def same_training(wanted: dict[str, list[dict]], got: dict[str, list[dict]], failures: list[str]) -> float:
    """Appends to `failures` where the training runs differ (outputs, steps, validation losses beyond
    LOSS_TOLERANCE); returns the largest validation-loss difference."""
    loss_diff = 0.0
    for stage in TRAINED:
        for want, have in zip(wanted[stage], got[stage], strict=False):
            if (want["output"], want["global_step"]) != (have["output"], have["global_step"]):
                failures.append(f"{stage}: {have} does not match the reference's {want}")
            elif want["global_step"] is None:  # a data set the filter emptied: skipped in both runs
                continue
            elif want["validation_examples"] == have["validation_examples"] == 0:  # 1-2 records: none held out
                continue
            elif want["eval_loss"] is None or have["eval_loss"] is None:
                failures.append(f"{stage}: no validation loss ({want}, {have})")
            else:
                loss_diff = max(loss_diff, abs(want["eval_loss"] - have["eval_loss"]))
        if len(wanted[stage]) != len(got[stage]):
            failures.append(f"{stage}: {len(got[stage])} training runs, the reference had {len(wanted[stage])}")
    if loss_diff > LOSS_TOLERANCE:
        failures.append(f"validation losses differ by {loss_diff:.4g} > {LOSS_TOLERANCE}")
    return loss_diff


def compare(reference: Path, chaos_dir: Path, chaos: ChaosRun, reference_calls: int) -> dict:
    """Every check of the chaos run against the reference, as figures; `failures` lists what differs."""
    failures: list[str] = []
    ids = {folder: (record_ids(reference, folder), record_ids(chaos_dir, folder)) for folder in ("generate", "filter")}
    lost = 0
    for folder, (want, got) in ids.items():
        if not want.get("orca.jsonl") and folder == "generate":
            failures.append("the reference generated no records")
        if want != got:
            failures.append(f"{folder} record ids differ: reference {want}, chaos {got}")
        for name, wanted in want.items():
            lost += len(set(wanted) - set(got.get(name, [])))
    # Duplicates beyond the reference's own (an MT-Bench file may name a question once per turn, say).
    dups_ref = id_duplicates(reference)
    dups = {f: n - dups_ref.get(f, 0) for f, n in id_duplicates(chaos_dir).items() if n > dups_ref.get(f, 0)}
    duplicate = sum(dups.values())
    if dups:
        failures.append(f"rows with the same id: {dups}")
    problems_ref = line_problems(reference)
    problems = {f: [p for p in found if p not in problems_ref.get(f, [])] for f, found in line_problems(chaos_dir).items()}
    problems = {f: found for f, found in problems.items() if found}
    if problems:
        failures.append(f"torn or duplicated JSONL lines: {problems}")
    trained = training(chaos_dir)
    loss_diff = same_training(training(reference), trained, failures)
    keys_ref, keys = set(cache_rows(reference)), set(cache_rows(chaos_dir))
    if keys_ref != keys:
        failures.append(f"call cache keys differ: {len(keys_ref - keys)} missing, {len(keys - keys_ref)} extra")
    evals_ref, evals = eval_outputs(reference), eval_outputs(chaos_dir)
    if not evals_ref or evals_ref != evals:
        failures.append("evaluation outputs differ: " + ", ".join(
            p for p in sorted(set(evals_ref) | set(evals)) if evals_ref.get(p) != evals.get(p)))
    stages = manifest(chaos_dir)["steps"]
    if [s for s in STAGES if stages.get(s, {}).get("status") == "done"] != list(STAGES):
        failures.append(f"not every stage is done: { {s: stages.get(s, {}).get('status') for s in STAGES} }")
    extra_calls = chaos.calls_completed - reference_calls
    if extra_calls > 0 or chaos.calls_repeated:
        failures.append(f"{extra_calls} calls more than the reference ({chaos.calls_repeated} completed twice)")
    return {"kills": chaos.kills, "stages_hit": chaos.stages_hit, "lost_records": lost,
            "duplicate_records": duplicate, "torn_or_duplicated_lines": sum(len(v) for v in problems.values()),
            "reference_calls": reference_calls, "calls": chaos.calls_completed, "extra_calls": extra_calls,
            "calls_completed_twice": chaos.calls_repeated, "max_eval_loss_diff": loss_diff,
            "loss_tolerance": LOSS_TOLERANCE, "training": trained, "eval_files": len(evals),
            "identical": not failures, "failures": failures}


# ---------------------------------------------------------------- fast mode: the result is the call cache's


def replay(root: Path, source: Path, data_dir: Path, timeout_s: float, deterministic: bool = False,
           steps: tuple[str, ...] = STAGES) -> Path:
    """The smoke recipe (its `steps`) again in a fresh ROOT/runs/replay, from a copy of `source`'s call cache
    and lm-eval's request caches (what a resumed run keeps): every call it needs is answered from the copy."""
    smoke_recipe(root / "replay.yaml", "replay", data_dir, deterministic, steps)
    target = root / "runs" / "replay"
    shutil.copytree(source / "cache", target / "cache")
    for requests in (source / "eval").rglob("lm_cache"):
        shutil.copytree(requests, target / requests.relative_to(source))
    timed_run([BEZOAR, "run", "replay.yaml"], root, target, timeout_s, env=mode_env(deterministic))
    return target


DATA_STEPS = ("generate", "filter", "hh_slices", "preferences")
"""The steps whose folders hold data (JSONL records), not models or evaluations."""


def data_records(run_dir: Path) -> dict[str, list[str]]:
    """Every JSONL file of the data steps' folders, as its sorted lines (a resumed file may hold them in
    another order)."""
    return {str(path.relative_to(run_dir)): sorted(json.dumps(json.loads(line), sort_keys=True)
                                                    for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
            for step in DATA_STEPS for path in sorted((run_dir / step).rglob("*.jsonl"))}


def compare_fast(killed: Path, replayed: Path, chaos: ChaosRun, per_method: int,
                 steps: tuple[str, ...] = STAGES) -> dict:
    """Fast mode's promise, as figures: no record lost or duplicated, no finished call repeated, and every
    record, training step and evaluation output the one the call cache makes (the replay's)."""
    failures: list[str] = []
    generated = record_ids(killed, "generate")
    counts = {name: len(ids) for name, ids in generated.items() if name in ("lamini.jsonl", "evol.jsonl", "orca.jsonl")}
    lost = sum(max(0, per_method - n) for n in counts.values()) + per_method * (3 - len(counts))
    if lost:
        failures.append(f"records lost: {counts}, {per_method} asked per method")
    duplicates = {f: n for f, n in id_duplicates(killed).items() if n}
    problems = line_problems(killed)
    if duplicates or problems:
        failures.append(f"rows with the same id {duplicates}, torn or duplicated lines {problems}")
    mine, cache_made = data_records(killed), data_records(replayed)
    differing = sorted(f for f in set(mine) | set(cache_made) if mine.get(f) != cache_made.get(f))
    if differing:
        failures.append(f"records that are not what the call cache makes: {differing}")
    evals, cache_evals = eval_outputs(killed), eval_outputs(replayed)
    if not evals or evals != cache_evals:
        failures.append("evaluation outputs differ from the replay's: " + ", ".join(
            p for p in sorted(set(evals) | set(cache_evals)) if evals.get(p) != cache_evals.get(p)))
    trained = training(killed)
    loss_diff = same_training(training(replayed), trained, failures)
    replay_calls, replay_repeats = new_calls(cache_rows(killed), cache_rows(replayed))
    if replay_calls or chaos.calls_repeated:
        failures.append(f"the replay made {replay_calls} calls ({replay_repeats} of them repeats); the killed run "
                        f"completed {chaos.calls_repeated} calls twice")
    stages = manifest(killed)["steps"]
    if [s for s in steps if stages.get(s, {}).get("status") == "done"] != list(steps):
        failures.append(f"not every stage is done: { {s: stages.get(s, {}).get('status') for s in steps} }")
    return {"kills": chaos.kills, "stages_hit": chaos.stages_hit, "lost_records": lost,
            "duplicate_records": sum(duplicates.values()), "torn_or_duplicated_lines": sum(len(v) for v in problems.values()),
            "calls": chaos.calls_completed, "calls_completed_twice": chaos.calls_repeated,
            "replay_calls": replay_calls, "data_files": len(mine), "eval_files": len(evals), "training": trained,
            "max_eval_loss_diff": loss_diff,
            "kept_from_cache": not failures, "failures": failures}


# ---------------------------------------------------------------- the CI-sized run (tests/conftest.py)


@dataclass
class SmokeRuns:
    """A smoke run never killed (`runs/reference`) and one killed in every stage (`runs/killed`)."""

    root: Path
    reference_s: float
    starts: dict[str, float]
    chaos: ChaosRun
    statuses: list[str]
    """`bezoar status` printed right after the first kill (mid-generate)."""
    figures: dict


def ci_plan(run_dir: Path, starts: dict[str, float], total_s: float, rng: random.Random,
            after_first_kill: Callable[[], None], steps: tuple[str, ...] = TARGETS) -> list[Kill]:
    """One kill per stage of `steps`: at points that prove a resume (calls cached, a checkpoint written, an
    evaluation file begun) where a stage has them, at a random moment of the reference's stage elsewhere."""
    def cached_at_least(count: int):
        return lambda: len(cache_rows(run_dir)) >= count

    def grew_by(count: int):
        first: list[int] = []

        def ready() -> bool:
            first.append(len(cache_rows(run_dir)))
            return first[-1] >= first[0] + count
        return ready

    names = list(starts)
    # the first 60% of the reference's stage: the killed run may go faster (load on a shared machine varies)
    window = {s: 0.6 * max(0.5, (starts[names[i + 1]] if i + 1 < len(names) else total_s) - starts[s])
              for i, s in enumerate(names)}
    plan = [Kill("generate", ready=cached_at_least(3)),
            Kill("filter", ready=grew_by(2)),
            Kill("sft", ready=lambda: any((run_dir / "sft").glob("sft-*/checkpoint-*/trainer_state.json"))),
            Kill("sft_hh", after_s=rng.uniform(0, window["sft_hh"])),
            Kill("dpo", after_s=rng.uniform(0, window["dpo"])),
            Kill("eval", ready=lambda: any((run_dir / "eval").rglob("model_answer/*.jsonl"))),
            Kill("report", after_s=rng.uniform(0, window["report"]))]
    plan = [kill for kill in plan if kill.stage in steps]
    plan[0].after_kill = after_first_kill
    return plan


@dataclass
class SmokeReference:
    root: Path
    reference_s: float
    starts: dict[str, float]


def smoke_reference(root: Path, data_dir: Path) -> SmokeReference:
    """The smoke recipe run once in deterministic mode, never killed, with its own cache: ROOT/runs/reference."""
    os.environ.setdefault("BEZOAR_DATA", str(data_dir))  # defaults not in the recipe (e.g. eval.ifeval) read it
    smoke_recipe(root / "reference.yaml", "reference", data_dir)
    reference_s, starts = timed_run([BEZOAR, "run", "reference.yaml"], root, root / "runs" / "reference",
                                    timeout_s=2400, env=mode_env(True))
    return SmokeReference(root, reference_s, starts)


def smoke_runs(made: SmokeReference, data_dir: Path, seed: int = 0) -> SmokeRuns:
    """After the reference, the killed run (planned by `ci_plan`), then the comparison."""
    root, reference_s, starts = made.root, made.reference_s, made.starts
    smoke_recipe(root / "killed.yaml", "killed", data_dir)
    reference, killed = root / "runs" / "reference", root / "runs" / "killed"
    statuses: list[str] = []

    def status() -> None:
        statuses.append(subprocess.run([BEZOAR, "status", "runs/killed"], cwd=root, capture_output=True, text=True,
                                       timeout=120).stdout)

    plan = ci_plan(killed, starts, reference_s, random.Random(seed), status)
    chaos = run_with_kills([BEZOAR, "run", "killed.yaml"], root, killed, plan, timeout_s=2400, env=mode_env(True))
    figures = compare(reference, killed, chaos, reference_calls=len(cache_rows(reference)))
    return SmokeRuns(root, reference_s, starts, chaos, statuses, figures)


def fast_smoke_runs(made: SmokeReference, data_dir: Path, seed: int = 1) -> SmokeRuns:
    """The smoke recipe's decoding steps in fast mode, killed once in every step (planned on the reference's
    timeline) in ROOT/runs/fast, then replayed from its call cache (ROOT/runs/replay) and checked by
    `compare_fast`."""
    root, steps = made.root, DECODING_STEPS
    smoke_recipe(root / "fast.yaml", "fast", data_dir, deterministic=False, steps=steps)
    killed = root / "runs" / "fast"
    plan = ci_plan(killed, made.starts, made.reference_s, random.Random(seed), lambda: None, steps=steps)
    chaos = run_with_kills([BEZOAR, "run", "fast.yaml"], root, killed, plan, timeout_s=2400, env=mode_env(False))
    replayed = replay(root, killed, data_dir, timeout_s=2400, steps=steps)
    figures = compare_fast(killed, replayed, chaos, per_method=SMOKE[("generate", "orca", "n")], steps=steps)
    return SmokeRuns(root, made.reference_s, made.starts, chaos, [], figures)
