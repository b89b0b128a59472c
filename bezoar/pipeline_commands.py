"""`bezoar run`, `bezoar status` and `bezoar report`: the whole recipe, where it stands, what it made."""
from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

# A table piped to a file, a log or a test is read whole: rich would cut it to 80 columns ("interr…").
console = Console(width=None if sys.stdout.isatty() else 160)


def register(app: typer.Typer) -> None:
    app.command("run")(run_recipe)
    app.command("plan")(plan)
    app.command("status")(status)
    app.command("report")(report)


def run_recipe(recipe: Path = typer.Argument(..., help="Recipe YAML (see recipes/)."),
               start: Optional[str] = typer.Option(None, "--from", help="Re-run from this stage on."),
               only: Optional[str] = typer.Option(None, "--only", help="Run just this stage."),
               run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Default: run.run_dir or runs/NAME."),
               retry_failed: bool = typer.Option(False, "--retry-failed", help="Ask again only the items that failed (each stage's failed.jsonl)."),
               no_probe: bool = typer.Option(False, "--no-probe", help="Skip the one-call probe of each remote role before the first stage.")) -> None:
    """The whole recipe: generate → filter → sft → sft_hh → dpo → eval → report, resumable.

    An item a server refuses becomes a failed item (listed in its stage's failed.jsonl) and the stage goes
    on; `--retry-failed` asks those again."""
    from bezoar.config import load_recipe
    from bezoar.pipeline import run
    from bezoar.stages import stage_named

    for name in (start, only):
        if name:
            stage_named(name)  # an unknown stage is an error before anything is loaded
    loaded = load_recipe(recipe)
    data = run(loaded, recipe, start=start, only=only, run_dir=run_dir, retry_failed=retry_failed,
               probe=not no_probe)
    directory = run_dir or loaded.run.directory
    show_status(directory, data)
    report_file = Path(directory) / "report" / "index.html"
    if report_file.exists():
        console.print(f"report: [bold]{report_file}[/bold]")


def status(run_dir: Path = typer.Argument(..., help="A run directory (runs/NAME).")) -> None:
    """Stages with state, counts, time, calls and cost; works while a run is in progress."""
    from bezoar.errors import DataError
    from bezoar.run_state import read_manifest

    path = run_dir / "manifest.json"
    if not path.exists():
        raise DataError(f"{run_dir}: no manifest.json here (not a bezoar run directory)")
    show_status(run_dir, read_manifest(path))  # a corrupt one: one line saying what to do, exit 2


def show_status(run_dir: Path, data: dict) -> None:
    from bezoar.stages import STAGE_NAMES

    table = Table(title=f"run {data.get('run_name', '?')} ({run_dir})")
    planned = (data.get("plan") or {}).get("calls_by_stage", {})  # bezoar.plan, stored at run start
    for column in ("stage", "state", "counts", "failed", "time", "calls (hits)", "done/planned", "tokens", "cost"):
        table.add_column(column, justify="right" if column in ("failed", "time", "cost", "tokens", "done/planned")
                         else "left", no_wrap=column in ("stage", "state"))  # never "interr…"
    total_cost = 0.0
    for name in STAGE_NAMES:
        stage = data.get("stages", {}).get(name, {})
        usage = stage.get("usage", {})
        cost = sum(u.get("cost_usd", 0) for u in usage.values())
        total_cost += cost
        calls = ", ".join(f"{r} {u['calls']} ({u['cache_hits']})" for r, u in usage.items()) or "-"
        tokens = sum(u.get("prompt_tokens", 0) + u.get("completion_tokens", 0) for u in usage.values())
        failed = stage.get("failed_items") or 0
        table.add_row(name, _state(stage), _counts(stage.get("summary") or {}),
                      f"[red]{failed}[/red]" if failed else "-", _time(stage), calls, _planned(usage, planned.get(name)),
                      f"{tokens:,}" if tokens else "-", f"${cost:.2f}" if cost else "-")
    console.print(table)
    if total_cost:
        console.print(f"estimated cost so far: ${total_cost:.2f}")
    for name, stage in data.get("stages", {}).items():
        if stage.get("error"):
            console.print(f"[red]{name}: {stage['error']}[/red]", markup=True, highlight=False)


def _planned(usage: dict, planned: int | None) -> str:
    """Calls answered (made or from the cache) against the plan's expectation."""
    done = sum(u.get("calls", 0) + u.get("cache_hits", 0) for u in usage.values())
    if not planned:
        return f"{done}/-" if done else "-"
    return f"{done}/~{planned}"


def plan(recipe: Path = typer.Argument(..., help="Recipe YAML (see recipes/)."),
         as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON.")) -> None:
    """Before anything runs: per stage and role, the expected calls, tokens, cost and wall time."""
    from bezoar.config import load_recipe
    from bezoar.plan import make_plan

    made = make_plan(load_recipe(recipe))
    if as_json:
        print(json.dumps(made.to_json(), indent=2))
        return
    table = Table(title=f"plan of {recipe} (estimates; tokens counted with {made.tokens_counted_with})")
    for column in ("stage", "role", "model", "calls", "prompt tokens", "completion tokens ≤", "cost", "wall time"):
        table.add_column(column, justify="left" if column in ("stage", "role", "model") else "right")
    for line in made.lines:
        wall = f"{line.wall_s / 3600:.1f} h" if (line.wall_s or 0) >= 3600 else f"{line.wall_s or 0:.0f} s"
        table.add_row(line.stage, line.role, line.model, f"{line.calls:,}", f"{line.prompt_tokens:,}",
                      f"{line.completion_tokens:,}", f"${line.cost_usd:,.2f}" if line.cost_usd else "-", wall)
    console.print(table)
    console.print(f"estimated cost: ${sum(line.cost_usd for line in made.lines):,.2f}; assumed yields: "
                  + ", ".join(f"{k} {v}" for k, v in made.assumptions.items()), highlight=False)


def _state(stage: dict) -> str:
    from bezoar.pipeline import is_interrupted

    colours = {"done": "green", "running": "yellow", "failed": "red", "stopped": "magenta", "interrupted": "red"}
    state = "interrupted" if is_interrupted(stage) else stage.get("status", "pending")
    return f"[{colours.get(state, 'dim')}]{state}[/]"


def _time(stage: dict) -> str:
    if _state(stage).endswith("running[/]") and stage.get("started"):
        elapsed = datetime.now(timezone.utc) - datetime.fromisoformat(stage["started"])
        return f"{elapsed.total_seconds():.0f} s so far"
    return f"{stage['wall_s']:.0f} s" if stage.get("wall_s") is not None else "-"


def _counts(summary: dict) -> str:
    """The few numbers that say what a stage did (each stage's summary has its own shape)."""
    if "schemes" in summary:
        return ", ".join(f"{m} {s.get('records', 0)}" for m, s in summary["schemes"].items())
    if "kept" in summary:
        return f"{summary.get('input', 0)} in, {summary['kept']} kept"
    if "steps" in summary and isinstance(summary["steps"], list):
        return "; ".join(_training(step, short=True) for step in summary["steps"])
    if "global_step" in summary:
        return _training(summary)
    if "checkpoints" in summary:
        return f"{len(summary['checkpoints'])} checkpoints"
    numbers = [f"{k} {v:.3g}" for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return ", ".join(numbers[:4]) or "-"


def _training(summary: dict, short: bool = False) -> str:
    """`N steps, eval loss A → B` for one training run (`NAME A → B` when short)."""
    first, best = (summary.get("initial_eval") or {}).get("eval_loss"), summary.get("best_eval_loss")
    losses = f"{first:.3f} → {best:.3f}" if first is not None and best is not None else "-"
    if short:
        return f"{summary.get('stage', '').split('-')[-1]} {losses}"
    return f"{summary.get('global_step', '?')} steps, eval loss {losses}"


def report(run_dir: Path = typer.Argument(..., help="A run directory (runs/NAME).")) -> None:
    """Write RUN_DIR/report/index.html: data funnel, samples, licences, losses, scores, costs."""
    from bezoar.errors import DataError
    from bezoar.report.html import write_report

    if not (run_dir / "manifest.json").exists():  # else a report of nothing lands in any folder
        raise DataError(f"{run_dir}: no manifest.json here (not a bezoar run directory)")
    console.print(f"report: [bold]{write_report(run_dir)}[/bold]")
