"""`bezoar run`, `bezoar plan`, `bezoar status` and `bezoar report`: the whole recipe, what it will cost,
where it stands, what it made."""
from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from bezoar.cli_options import DeterministicOption
from bezoar.llm.batch_store import batch_summary, batches_in
from bezoar.llm.batches import NO_WAIT_ENV

# A table piped to a file, a log or a test is read whole: rich would cut it to 80 columns ("interr…").
console = Console(width=None if sys.stdout.isatty() else 160)


def register(app: typer.Typer) -> None:
    app.command("run")(run_recipe)
    app.command("plan")(plan)
    app.command("status")(status)
    app.command("report")(report)


def run_recipe(recipe: Path = typer.Argument(..., help="Recipe YAML (see recipes/)."),
               start: Optional[str] = typer.Option(None, "--from", help="Re-run from this step on (by name)."),
               only: Optional[str] = typer.Option(None, "--only", help="Run just this step (by name)."),
               run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Default: run.run_dir or runs/NAME."),
               retry_failed: bool = typer.Option(False, "--retry-failed", help="Ask again only the items that failed (each step's failed.jsonl)."),
               no_probe: bool = typer.Option(False, "--no-probe", help="Skip the one-call probe of each remote role before the first step."),
               no_wait: bool = typer.Option(False, "--no-wait", help="Submit provider batches (roles with batch: true) and exit; the same command later collects them."),
               deterministic: bool = DeterministicOption) -> None:
    """The recipe's steps in order (e.g. generate → filter → sft → sft_hh → dpo → eval → report), resumable.

    An item a server refuses becomes a failed item (listed in its step's failed.jsonl) and the step goes
    on; `--retry-failed` asks those again."""
    from bezoar.config import load_recipe
    from bezoar.pipeline import run

    if no_wait:  # the step processes inherit it: a batch not done at once is left to the provider (exit 75)
        os.environ[NO_WAIT_ENV] = "1"
    loaded = load_recipe(recipe)
    for name in (start, only):
        if name:
            loaded.step(name)  # an unknown step is an error before anything is loaded
    data = run(loaded, recipe, start=start, only=only, run_dir=run_dir, retry_failed=retry_failed,
               probe=not no_probe)
    directory = run_dir or loaded.run.directory
    show_status(directory, data)
    report_file = Path(directory) / "report" / "index.html"
    if report_file.exists():
        console.print(f"report: [bold]{report_file}[/bold]")


def status(run_dir: Path = typer.Argument(..., help="A run directory (runs/NAME).")) -> None:
    """Steps with state, counts (or progress), time, calls and cost; works while a run is in progress."""
    from bezoar.errors import DataError
    from bezoar.run_state import read_manifest

    path = run_dir / "manifest.json"
    if not path.exists():
        raise DataError(f"{run_dir}: no manifest.json here (not a bezoar run directory)")
    show_status(run_dir, read_manifest(path))  # a corrupt one: one line saying what to do, exit 2


def show_status(run_dir: Path, data: dict) -> None:
    from bezoar.run_state import read_progress
    from bezoar.steps.base import StepResult

    table = Table(title=f"run {data.get('run_name', '?')} ({run_dir})")
    planned = (data.get("plan") or {}).get("calls_by_step", {})  # bezoar.plan, stored at run start
    for column in ("step", "state", "counts", "failed", "time", "calls (hits)", "done/planned", "tokens", "cost"):
        table.add_column(column, justify="right" if column in ("failed", "time", "cost", "tokens", "done/planned")
                         else "left", no_wrap=column in ("step", "state"))  # never "interr…"
    total_cost = 0.0
    steps = data.get("steps", {})
    for name in dict.fromkeys([*(data.get("order") or []), *steps]):
        step = steps.get(name, {})
        usage = step.get("usage", {})
        cost = sum(u.get("cost_usd", 0) for u in usage.values())
        total_cost += cost
        calls = ", ".join(f"{r} {u['calls']} ({u['cache_hits']})" for r, u in usage.items()) or "-"
        tokens = sum(u.get("prompt_tokens", 0) + u.get("completion_tokens", 0) for u in usage.values())
        failed = step.get("failed_items") or 0
        counts = StepResult.model_validate(step["result"]).line() if step.get("result") else \
            _progress(read_progress(run_dir, name)) if _state(step).endswith("running[/]") else "-"
        table.add_row(name, _state(step), counts, f"[red]{failed}[/red]" if failed else "-", _time(step), calls,
                      _planned(usage, planned.get(name)), f"{tokens:,}" if tokens else "-",
                      f"${cost:.2f}" if cost else "-")
    console.print(table)
    if total_cost:
        console.print(f"estimated cost so far: ${total_cost:.2f}")
    batches = batch_summary(batches_in(Path(run_dir) / "cache" / "calls.sqlite"))
    if batches:
        console.print(batches, highlight=False)
    for name, step in steps.items():
        if step.get("error"):
            console.print(f"[red]{name}: {step['error']}[/red]", markup=True, highlight=False)


def _progress(progress: dict) -> str:
    """`340/1,600 prompts sampled` for a running step that reports its progress."""
    if not progress.get("total"):
        return "-"
    return f"{progress.get('done', 0):,}/{progress['total']:,} {progress.get('unit', '')}".strip()


def _planned(usage: dict, planned: int | None) -> str:
    """Calls answered (made or from the cache) against the plan's expectation."""
    done = sum(u.get("calls", 0) + u.get("cache_hits", 0) for u in usage.values())
    if not planned:
        return f"{done}/-" if done else "-"
    return f"{done}/~{planned}"


def plan(recipe: Path = typer.Argument(..., help="Recipe YAML (see recipes/)."),
         as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON.")) -> None:
    """Before anything runs: per step and role, the expected calls, tokens, cost and wall time."""
    from bezoar.config import load_recipe
    from bezoar.plan import make_plan

    made = make_plan(load_recipe(recipe))
    if as_json:
        print(json.dumps(made.to_json(), indent=2))
        return
    table = Table(title=f"plan of {recipe} (estimates; tokens counted with {made.tokens_counted_with})")
    for column in ("step", "role", "model", "calls", "prompt tokens", "completion tokens", "cost", "wall time"):
        table.add_column(column, justify="left" if column in ("step", "role", "model") else "right")
    for line in made.lines:
        table.add_row(line.step, line.role, line.model, f"{line.calls:,}", f"{line.prompt_tokens:,}",
                      f"{line.completion_tokens:,}", _cost(line), "≤ 24 h" if line.wall_s is None else _duration(line.wall_s))
    console.print(table)
    console.print("wall time by step (calls, training, scoring): "
                  + ", ".join(f"{step} {_duration(s)}" for step, s in made.wall_s.items()), highlight=False)
    batch = sum(line.batch_usd for line in made.lines)
    console.print(f"estimated cost: ${sum(line.cost_usd for line in made.lines):,.2f} (every remote role as provider "
                  f"batches: ${batch:,.2f}); assumed yields: "
                  + ", ".join(f"{k} {v}" for k, v in made.assumptions.items()), highlight=False)


def _state(stage: dict) -> str:
    from bezoar.pipeline import is_interrupted

    colours = {"done": "green", "running": "yellow", "failed": "red", "stopped": "magenta", "interrupted": "red",
               "waiting": "cyan"}
    state = "interrupted" if is_interrupted(stage) else stage.get("status", "pending")
    return f"[{colours.get(state, 'dim')}]{state}[/]"


def _time(stage: dict) -> str:
    if _state(stage).endswith("running[/]") and stage.get("started"):
        elapsed = datetime.now(timezone.utc) - datetime.fromisoformat(stage["started"])
        return f"{elapsed.total_seconds():.0f} s so far"
    return f"{stage['wall_s']:.0f} s" if stage.get("wall_s") is not None else "-"


def _cost(line) -> str:
    """`$236.00 (batch $118.00)`, or for a `batch: true` role `$118.00 (batch; online $236.00)`."""
    if not line.online_usd:
        return "-"
    if line.cost_usd != line.online_usd:
        return f"${line.cost_usd:,.2f} (batch; online ${line.online_usd:,.2f})"
    return f"${line.online_usd:,.2f} (batch ${line.batch_usd:,.2f})"


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds:.0f} s"


def report(run_dir: Path = typer.Argument(..., help="A run directory (runs/NAME).")) -> None:
    """Write RUN_DIR/report/index.html: data funnel, samples, licences, losses, scores, costs."""
    from bezoar.errors import DataError
    from bezoar.report.html import write_report

    if not (run_dir / "manifest.json").exists():  # else a report of nothing lands in any folder
        raise DataError(f"{run_dir}: no manifest.json here (not a bezoar run directory)")
    console.print(f"report: [bold]{write_report(run_dir)}[/bold]")
