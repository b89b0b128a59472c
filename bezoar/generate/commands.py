"""`bezoar generate` and `bezoar stats`: options → one library call → a table on the terminal."""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from bezoar.cli_options import DeterministicOption, follow_recipe

console = Console()


def register(app: typer.Typer) -> None:
    app.command("generate")(generate_command)
    app.command("stats")(stats_command)


def generate_command(
    method: str = typer.Option(..., "--method", help="lamini, evol, orca, or constraints (verifiable constraint prompts, no teacher)."),
    out: Path = typer.Option(..., "--out", help="Output JSONL; rejections go to OUT.rejected.jsonl beside it."),
    seeds: Optional[list[Path]] = typer.Option(None, "--seeds", help="Seed files (JSONL(.gz), JSON array, FLAN TSV(.gz)); several may follow one --seeds."),
    more_seeds: Optional[list[Path]] = typer.Argument(None, hidden=True),
    n: Optional[int] = typer.Option(None, "--n", min=1, help="Records to end with (default: the recipe's, else the paper's count)."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="Teacher model spec (default: the recipe's models.teacher, else local)."),
    judge: Optional[str] = typer.Option(None, "--judge", help="Evol: judge spec for the 'are these prompts equal?' check (no judge: no check)."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="Take sampling, counts, seeds and models from this recipe's first generate step (its <method> keys)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (default: the recipe's run.seed, else 0)."),
    seed_licence: Optional[str] = typer.Option(None, "--seed-licence", help="Declare the licence of the --seeds files (e.g. apache-2.0)."),
    skip_bad_lines: bool = typer.Option(False, "--skip-bad-lines", help="Skip malformed seed rows (counted) instead of stopping."),
    require_commercial_use: bool = typer.Option(False, "--require-commercial-use", help="Refuse, before any call, a seed or teacher not clearly usable commercially."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Work items per round."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Ask again the items that failed in an earlier run (OUT.failed.jsonl)."),
    deterministic: bool = DeterministicOption,
) -> None:
    """Generate synthetic instruction data (LaMini-LM, Evol-Instruct or Orca), resumably.

    An item the teacher refuses (e.g. HTTP 400) is written to OUT.failed.jsonl and the rest goes on; the
    run stops only when more than run.max_failure_rate of the items tried failed."""
    from bezoar.generate.stage import generate
    from bezoar.llm.cache import CallCache, default_cache_path
    from bezoar.llm.specs import open_model

    section, models, run = _recipe_parts(recipe, method)
    paths = list(seeds or []) + list(more_seeds or [])
    changes: dict = {"skip_bad_lines": skip_bad_lines or section.skip_bad_lines}
    if paths:
        changes["seeds"] = [{"path": p, "licence": seed_licence} for p in paths]
    if n is not None:
        changes["n"] = n
    if batch_size is not None:
        changes["batch_size"] = batch_size
    config = type(section).model_validate({**section.model_dump(), **changes})
    teacher_config = models.teacher if teacher is None else models.teacher.from_option("--teacher", teacher, **_settings(models.teacher))
    judge_config = None if judge is None else models.judge.from_option("--judge", judge, **_settings(models.judge))
    if judge_config is None and recipe is not None and method == "evol" and config.equality_check:
        judge_config = models.judge  # a recipe names its judge; on the command line it is opt-in
    # Opened on first use, so a run the licence gate refuses leaves no cache behind.
    cache = functools.cache(lambda: CallCache(default_cache_path(), retry_failures=retry_failed))
    summary = generate(
        method, config, lambda: open_model(teacher_config, role="teacher", cache=cache()), teacher_config.spec, out,
        seed=run.seed if seed is None else seed,
        judge=(lambda: open_model(judge_config, role="judge", cache=cache())) if judge_config else None,
        judge_spec=judge_config.spec if judge_config else None,
        require_commercial_use=require_commercial_use or run.require_commercial_use,
        teacher_licence=teacher_config.licence, max_failure_rate=run.max_failure_rate)
    _print_summary(summary)


def _settings(role) -> dict:
    """A recipe role's settings other than its spec (which the command line replaces)."""
    return role.model_dump(exclude={"spec"})


def _recipe_parts(recipe: Path | None, method: str):
    from bezoar.config import ModelsConfig, RunConfig
    from bezoar.errors import ConfigError
    from bezoar.generate.config import GenerateConfig
    from bezoar.generate.stage import METHODS

    if method not in (*METHODS, "constraints"):
        raise ConfigError(f"--method: '{method}' is not one of {', '.join(METHODS)}, constraints")
    if recipe is None:
        return GenerateConfig().scheme(method), ModelsConfig(), RunConfig()
    from bezoar.config import load_recipe

    loaded = load_recipe(recipe)
    follow_recipe(loaded)
    steps = loaded.steps_of("generate")
    if not steps:
        raise ConfigError(f"--recipe: {recipe} has no generate step to take settings from")
    return steps[0].scheme(method), loaded.models, loaded.run


def _print_summary(summary: dict) -> None:
    if summary["method"] == "constraints":
        console.print(f"{summary['records']} constraint prompts from {summary['seed_rows']} seed rows; "
                      f"instruction types: {', '.join(f'{k} {v}' for k, v in summary['types'].items())}")
        print(summary["output"])
        return
    table = Table(title=f"generate {summary['method']}", show_header=False)
    usage = summary.get("usage", {})
    rows = [("records", summary["records"]), ("new this run", summary["new_records"]),
            ("candidates tried", summary["attempts"]),
            ("rejected", ", ".join(f"{k} {v}" for k, v in summary["rejected"].items()) or "none"),
            ("failed items", f"{summary['failed_items']} (in {summary['failures_file']})" if summary["failed_items"] else "none"),
            ("teacher calls / cache hits", f"{usage.get('calls', 0)} / {usage.get('cache_hits', 0)}"),
            ("wall time", f"{summary['wall_s']} s"), ("rejections file", summary["rejections_file"])]
    if summary.get("skipped_seed_rows"):
        rows.append(("skipped seed rows", summary["skipped_seed_rows"]))
    for key, value in rows:
        table.add_row(key, str(value))
    console.print(table)
    print(summary["output"])


def stats_command(
    files: list[Path] = typer.Argument(..., help="Generated JSONL files."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the statistics as JSON here ('-' prints JSON instead of tables)."),
) -> None:
    """Counts, lengths, diversity and licence verdicts of generated records."""
    from bezoar.generate.stats import file_stats

    found = file_stats(files)
    if json_out is not None and str(json_out) == "-":
        print(json.dumps(found, indent=2, ensure_ascii=False))
        return
    _print_stats(found)
    if json_out is not None:
        from bezoar.records import write_json

        write_json(json_out, found)
        print(json_out)


def _print_stats(found: dict) -> None:
    overview = Table(title=f"{found['records']} records", show_header=False)
    gold = found["gold_agreement"]
    for key, value in [("unique instructions", f"{found['unique_instruction_fraction']:.1%}"),
                       ("distinct-1 / distinct-2", f"{found['distinct_1']:.3f} / {found['distinct_2']:.3f}"),
                       ("commercial use", _inline(found["commercial_use"])),
                       ("finish reason", _inline(found["finish_reason"])),
                       ("gold agreement (orca)", f"{gold['agree']}/{gold['checked']}" if gold["checked"] else "-"),
                       ("rejections", _inline(found["rejections"]) or "-")]:
        overview.add_row(key, value)
    console.print(overview)
    lengths = Table("words", "count", "min", "p10", "median", "mean", "p90", "max", title="lengths")
    for name in ("instruction_words", "response_words"):
        dist = found[name]
        lengths.add_row(name.split("_")[0], *(str(dist.get(k, "-")) for k in ("count", "min", "p10", "median", "mean", "p90", "max")))
    console.print(lengths)
    for key in ("by_method", "by_mode", "by_evolution", "by_epoch", "by_system_message", "by_sub_collection", "by_category"):
        if found[key]:
            table = Table("value", "records", title=key.replace("_", " "))
            for value, count in list(found[key].items())[:20]:
                table.add_row(value, str(count))
            console.print(table)


def _inline(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())
