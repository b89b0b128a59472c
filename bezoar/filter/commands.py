"""`bezoar filter` and `bezoar judge-check`: thin maps onto `bezoar.filter.runner.run` and `judge_check`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from bezoar.cli_options import DeterministicOption, follow_recipe
from bezoar.errors import ConfigError

console = Console()


def register(app: typer.Typer) -> None:
    app.command("filter")(filter_command)
    app.command("judge-check")(judge_check_command)


def filter_command(
    inputs: List[Path] = typer.Option(..., "--in", help="Input JSONL (records, {messages}, or instruction/response rows); "
                                                        "repeat --in, or list several files after it."),
    more: Optional[List[Path]] = typer.Argument(None, help="More input files (so `--in a.jsonl b.jsonl` works).",
                                                show_default=False),
    out: Path = typer.Option(..., "--out", help="Output directory: kept.jsonl, rejected.jsonl, judgments.jsonl, summary.json."),
    judge: str = typer.Option("local", "--judge", help="Judge model spec: local, local:PATH, openai:MODEL@URL, anthropic:MODEL."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="Take the filter settings from this recipe's `filter` section."),
    eval_paths: Optional[List[Path]] = typer.Option(None, "--eval", help="Eval file or folder for the contamination check (repeatable)."),
    no_judge: bool = typer.Option(False, "--no-judge", help="Run heuristics, de-duplication and contamination only."),
    scoring: Optional[str] = typer.Option(None, help="auto | generate | logprobs (next-token rating, local judges)."),
    rule: Optional[str] = typer.Option(None, help="auto | rating | verdict | both | top_fraction."),
    threshold: Optional[float] = typer.Option(None, help="Lowest accepted rating (1-10)."),
    keep_fraction: Optional[float] = typer.Option(None, help="top_fraction rule: share of judged records kept."),
    check_pairs: Optional[Path] = typer.Option(None, "--judge-check", help="First calibrate the judge on these HH-RLHF pairs."),
    deterministic: bool = DeterministicOption,
) -> None:
    """Filter generated data: heuristics → exact/near de-duplication → contamination → LLM judge."""
    from bezoar.config import ModelConfig, load_recipe
    from bezoar.filter.config import FilterConfig
    from bezoar.filter.runner import run
    from bezoar.llm.specs import open_model

    config = FilterConfig()
    if recipe:
        loaded = load_recipe(recipe)
        follow_recipe(loaded)
        steps = loaded.steps_of("filter")
        if not steps:
            raise ConfigError(f"--recipe: {recipe} has no filter step to take settings from")
        config = FilterConfig.model_validate(steps[0].model_dump(include=set(FilterConfig.model_fields)))
    changes = {"scoring": scoring, "rule": rule, "threshold": threshold, "keep_fraction": keep_fraction}
    judge_settings = config.judge.model_dump() | {k: v for k, v in changes.items() if v is not None}
    judge_settings["enabled"] = config.judge.enabled and not no_judge
    config = FilterConfig.model_validate(config.model_dump() | {"judge": judge_settings})
    if eval_paths:
        config.contamination.eval_paths = list(config.contamination.eval_paths) + list(eval_paths)
    if check_pairs:
        config.judge_check.enabled, config.judge_check.pairs = True, check_pairs
    model = None if no_judge else open_model(ModelConfig.from_option("--judge", judge), role="judge")
    summary = run(list(inputs) + list(more or []), out, config, model, progress=_progress() if model else None)
    _print_summary(summary)


def judge_check_command(
    judge: str = typer.Option("local", "--judge", help="Judge model spec."),
    pairs: Path = typer.Option(..., "--pairs", help="HH-RLHF JSONL(.gz) with chosen/rejected transcripts."),
    n: int = typer.Option(100, "--n", min=1, help="Pairs to check (the file's last n); each is judged in both orders."),
    scoring: str = typer.Option("auto", help="auto | generate | logprobs."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
    deterministic: bool = DeterministicOption,
) -> None:
    """How far the judge agrees with human preferences, and how much the order of replies sways it."""
    from bezoar.config import ModelConfig
    from bezoar.filter.calibration import judge_check
    from bezoar.llm.specs import open_model

    from bezoar.errors import DataError

    if not pairs.is_file():  # before the judge loads (seconds to minutes)
        raise DataError(f"{pairs}: no such file")
    model = open_model(ModelConfig.from_option("--judge", judge), role="judge")
    figures = judge_check(model, pairs, n, scoring, progress=_progress())
    if as_json:
        print(json.dumps(figures, ensure_ascii=False))
        return
    table = Table(title=f"judge-check: {figures['judge']} ({figures['scoring']}), {figures['pairs']} pairs × 2 orders")
    for column in ("figure", "rate", "95% interval", "k / n"):
        table.add_column(column)
    for name in ("agreement", "agreement_decisive", "consistent_agreement", "position_bias", "prefers_first",
                 "tie_rate", "error_rate"):
        rate = figures[name]
        shown = ("n/a", "", f"0/{rate['n']}") if rate["value"] is None else \
            (f"{rate['value']:.3f}", f"[{rate['low']:.3f}, {rate['high']:.3f}]", f"{rate['k']}/{rate['n']}")
        table.add_row(name.replace("_", " "), *shown)
    console.print(table)
    if figures["near_chance"]:
        console.print("[yellow]agreement with humans is near chance (0.5): do not trust this judge's accept/reject[/yellow]")


def _progress():
    from tqdm import tqdm

    bar = tqdm(desc="judging", unit="call", leave=False)
    return lambda k: bar.update(k)


def _print_summary(summary: dict) -> None:
    table = Table(title=f"filter: {summary['input']} in, {summary['kept']} kept")
    table.add_column("step")
    table.add_column("records", justify="right")
    table.add_column("removed", justify="right")
    for step in summary["steps"]:
        table.add_row(step["step"], str(step["records"]), str(step.get("removed", "")))
    console.print(table)
    if summary["reasons"]:
        reasons = Table(title="rejections by reason")
        reasons.add_column("reason")
        reasons.add_column("records", justify="right")
        for reason, count in summary["reasons"].items():
            reasons.add_row(reason, str(count))
        console.print(reasons)
    check = summary.get("judge_check")
    if check and check.get("near_chance"):
        console.print("[yellow]judge-check: agreement with human preferences is near chance[/yellow]")
    console.print(summary["outputs"]["summary"])
