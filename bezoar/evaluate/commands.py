"""`bezoar eval mt-bench | harness | preference | run` and `bezoar compare`: thin maps onto the library."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from bezoar.cli_options import DeterministicOption
from bezoar.errors import ConfigError

out = Console()
eval_app = typer.Typer(no_args_is_help=True, help="Evaluate a model: MT-Bench, LM Evaluation Harness, preference accuracy.")


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")
    app.command("compare")(compare_command)


def _config(model_class, **values):
    """Build a config section from CLI values, turning validation errors into one readable line each."""
    from pydantic import ValidationError

    try:
        return model_class(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as error:
        lines = [f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}" for e in error.errors()]
        raise ConfigError("\n".join(lines)) from None


@eval_app.command("mt-bench")
def mt_bench_command(
        out_dir: Path = typer.Option(..., "--out", help="Folder for FastChat's model_answer/ and model_judgment/ files."),
        model: str = typer.Option("local", "--model", "-m", help="Model to evaluate (any model spec)."),
        judge: str = typer.Option("local", "--judge", "-j", help="Judge model spec, e.g. anthropic:claude-2.1 (the paper's)."),
        questions: Optional[Path] = typer.Option(None, help="FastChat question.jsonl (default: $BEZOAR_DATA/eval/mt_bench)."),
        reference_answers: Optional[Path] = typer.Option(None, help="Reference answers for math/reasoning/coding."),
        judge_mode: str = typer.Option("auto", help="generate (FastChat), next_token (local judges), or auto."),
        judge_repeats: int = typer.Option(1, help="Grade each answer K times; report the median and spread."),
        limit: Optional[int] = typer.Option(None, help="Only the first N questions."),
        per_category: Optional[int] = typer.Option(None, help="Only the first N questions of each category."),
        pairwise_against: Optional[Path] = typer.Option(None, help="Also grade pair-v2 against this FastChat answer file."),
        max_new_tokens: Optional[int] = typer.Option(None, help="Longest answer per turn (default 1024, as FastChat)."),
        judge_max_new_tokens: Optional[int] = typer.Option(None, help="Longest judge reply (default 1024)."),
        model_id: Optional[str] = typer.Option(None, help="Name in the answer file (default: from the spec)."),
        deterministic: bool = DeterministicOption,
) -> None:
    """MT-Bench with an LLM judge, as FastChat's llm_judge: answers, judgments, score table."""
    from bezoar.config import ModelConfig
    from bezoar.evaluate.config import MTBenchConfig
    from bezoar.evaluate.mt_bench import run_mt_bench
    from bezoar.evaluate.mt_bench_files import load_questions, spec_label
    from bezoar.llm.cache import CallCache, default_cache_path
    from bezoar.llm.specs import open_model

    config = _config(MTBenchConfig, questions=questions, reference_answers=reference_answers, limit=limit,
                     per_category=per_category,
                     judge_mode=judge_mode, judge_repeats=judge_repeats, pairwise_against=pairwise_against, max_new_tokens=max_new_tokens,
                     judge_max_new_tokens=judge_max_new_tokens)
    load_questions(config.questions, config.limit, config.per_category)  # a bad question file fails before any model loads
    cache = CallCache(default_cache_path())
    # both specs checked before either model loads
    answerer_config, grader_config = ModelConfig.from_option("--model", model), ModelConfig.from_option("--judge", judge)
    answerer = open_model(answerer_config, role="student", cache=cache)
    grader = open_model(grader_config, role="judge", cache=cache)
    summary = run_mt_bench(answerer, grader, out_dir, config, model_id or spec_label(model), spec_label(judge))
    out.print(mt_bench_table(summary))
    if "pairwise" in summary:
        pair = summary["pairwise"]
        out.print(f"pair-v2 vs {pair['against']}: win {pair['win']}, loss {pair['loss']}, tie {pair['tie']}, "
                  f"adjusted win rate {_fmt(pair['win_rate_adjusted'], pair['overall']['ci95'])}")
    out.print(f"answers: {summary['files']['answers']}\njudgments: {summary['files']['single']}")


def _model_config(model_class, spec: str):
    return _config(model_class, spec=spec)


def mt_bench_table(summary: dict) -> Table:
    single = summary["single"]
    table = Table(title=f"MT-Bench: {summary['model_id']} judged by {summary['judge_id']} ({summary['judge_mode']})")
    for column in ("", "score", "95% CI", "n", "errors") + (("judge spread",) if single["repeats"] > 1 else ()):
        table.add_column(column, justify="left" if not column else "right")
    for row in single["rows"]:
        cells = [row["name"], _num(row["score"]), _ci(row["ci95"]), str(row["n"]), str(row["errors"])]
        if single["repeats"] > 1:
            spread = row["spread"]
            cells.append(f"range {spread['mean_item_range']:.2f}, sd {spread['repeat_sd']:.2f}")
        table.add_row(*cells, style="bold" if row["name"] == "overall" else None)
    return table


@eval_app.command("harness")
def harness_command(
        tasks: str = typer.Option("leaderboard", help="Comma-separated: leaderboard, bezoar_<task>, or lm-eval task names."),
        model: str = typer.Option("local", "--model", "-m", help="local, local:PATH (model or LoRA adapter dir)."),
        limit: Optional[float] = typer.Option(None, help="Documents per task (a fraction when below 1)."),
        num_fewshot: Optional[int] = typer.Option(None, help="Override the leaderboard few-shot counts."),
        data_dir: Optional[Path] = typer.Option(None, help="Harness data folder (default $BEZOAR_DATA/eval/harness)."),
        data: list[str] = typer.Option([], help="TASK=PATH data file for one task, e.g. winogrande=dev.jsonl."),
        batch_size: Optional[int] = typer.Option(None, help="Requests per forward pass (default 16)."),
        out_dir: Path = typer.Option(Path("bezoar-eval/harness"), "--out", help="Results folder."),
        deterministic: bool = DeterministicOption,
) -> None:
    """LM Evaluation Harness tasks through lm-eval's Python API, offline with local task data."""
    from bezoar.evaluate.config import HarnessConfig
    from bezoar.evaluate.harness import run_harness

    paths = {}
    for item in data:
        name, sep, path = item.partition("=")
        if not sep:
            raise ConfigError(f"--data {item!r}: expected TASK=PATH")
        paths[name] = Path(path)
    config = _config(HarnessConfig, tasks=[t.strip() for t in tasks.split(",") if t.strip()], limit=limit,
                     num_fewshot=num_fewshot, data_dir=data_dir, data_paths=paths, batch_size=batch_size)
    summary = run_harness(model, config, out_dir)
    table = Table(title=f"LM Evaluation Harness: {model}")
    for column in ("task", "metric", "value", "95% CI", "n", "shots"):
        table.add_column(column)
    for name, row in summary["tasks"].items():
        table.add_row(name, row["metric"], _num(row["value"], 4), _ci(row["ci95"], 4), str(row["n"]), str(row["num_fewshot"]))
    out.print(table)
    out.print(f"results: {out_dir / 'results.json'}\nsame numbers with lm-eval's CLI: {summary['lm_eval_command']}")


@eval_app.command("preference")
def preference_command(
        pairs: Path = typer.Option(..., help="HH-RLHF JSONL(.gz) or prompt/chosen/rejected pair JSONL."),
        model: str = typer.Option("local", "--model", "-m", help="local, local:PATH (model or LoRA adapter dir)."),
        reference: Optional[str] = typer.Option(None, help="Reference model: rank by DPO's implicit reward."),
        heldout_n: Optional[int] = typer.Option(None, help="Only the last N pairs of the file (the held-out slice)."),
        limit: Optional[int] = typer.Option(None, help="Only the first N of those."),
        batch_size: Optional[int] = typer.Option(None, help="Sequences per forward pass (default 8)."),
        out_dir: Optional[Path] = typer.Option(None, "--out", help="Write summary.json here."),
        deterministic: bool = DeterministicOption,
) -> None:
    """Preference accuracy on held-out pairs (log-likelihood, or DPO reward with --reference)."""
    import tempfile

    from bezoar.evaluate.config import PreferenceConfig
    from bezoar.evaluate.preference import run_preference

    config = _config(PreferenceConfig, pairs=pairs, heldout_n=heldout_n, limit=limit, batch_size=batch_size)
    with tempfile.TemporaryDirectory() as scratch:
        result = run_preference(model, config, out_dir or Path(scratch), reference)
    table = Table(title=f"Preference accuracy: {model} on {result['n']} pairs")
    for column in ("ranking", "accuracy", "95% CI (Wilson)", "correct", "ties"):
        table.add_column(column)
    for key in ("loglik", "loglik_per_token", "dpo_reward"):
        if key in result:
            row = result[key]
            table.add_row(key, _num(row["accuracy"], 3), _ci(row["ci95"], 3), str(row["correct"]), str(row["ties"]))
    out.print(table)


@eval_app.command("ifeval")
def ifeval_command(
        out_dir: Path = typer.Option(..., "--out", help="Folder for answers.jsonl and summary.json."),
        model: str = typer.Option("local", "--model", "-m", help="Model to evaluate (any model spec; default the embedded one)."),
        prompts: Optional[Path] = typer.Option(None, help="IFEval input_data.jsonl (default: $BEZOAR_DATA/eval/ifeval)."),
        limit: Optional[int] = typer.Option(None, help="Only the first N prompts."),
        max_new_tokens: Optional[int] = typer.Option(None, help="Longest answer (default 512)."),
        deterministic: bool = DeterministicOption,
) -> None:
    """IFEval offline: greedy answers, scored by lm-eval's instruction checkers (strict and loose)."""
    from bezoar.config import ModelConfig
    from bezoar.evaluate.config import IFEvalConfig
    from bezoar.evaluate.ifeval import load_prompts, run_ifeval
    from bezoar.evaluate.mt_bench_files import spec_label
    from bezoar.llm.cache import CallCache, default_cache_path
    from bezoar.llm.specs import open_model

    config = _config(IFEvalConfig, enabled=True, prompts=prompts, limit=limit, max_new_tokens=max_new_tokens)
    load_prompts(config.prompts, config.limit)  # a bad prompt file fails before the model loads
    answerer = open_model(_model_config(ModelConfig, model), role="student", cache=CallCache(default_cache_path()))
    summary = run_ifeval(answerer, config, out_dir, spec_label(model))
    out.print(ifeval_table(summary))
    out.print(f"answers: {summary['files']['answers']}")


def ifeval_table(summary: dict) -> Table:
    table = Table(title=f"IFEval: {summary['model_id']} on {summary['prompts']} prompts")
    for column in ("metric", "accuracy", "95% CI", "n"):
        table.add_column(column)
    for name, row in summary["metrics"].items():
        table.add_row(name, _num(row["value"], 3), _ci(row["ci95"], 3), str(row["n"]))
    return table


@eval_app.command("winrate")
def winrate_command(
        model: str = typer.Option(..., "--model", "-m", help="The checkpoint (any model spec, e.g. local:runs/x/models/dpo)."),
        baseline: str = typer.Option("local", "--baseline", "-b", help="What it is compared with (default: the embedded model)."),
        judge: str = typer.Option("local", "--judge", "-j", help="Judge for prompts without constraints."),
        prompts: Optional[Path] = typer.Option(None, help="Prompt JSONL (default: MT-Bench first turns); constraint records are decided by the checkers."),
        limit: Optional[int] = typer.Option(None, help="Only the first N prompts."),
        max_new_tokens: int = typer.Option(256, help="Longest answer."),
        judge_mode: str = typer.Option("auto", help="generate, next_token (local judges), or auto."),
        out_dir: Path = typer.Option(..., "--out", help="Folder for answers.jsonl and summary.json."),
        deterministic: bool = DeterministicOption,
) -> None:
    """Pairwise win rate (both orders) with a length-controlled rate; constraint prompts by checkers."""
    from bezoar.config import ModelConfig
    from bezoar.config_base import data_path
    from bezoar.evaluate.winrate import load_prompts, run_winrate
    from bezoar.llm.cache import CallCache, default_cache_path
    from bezoar.llm.specs import open_model

    items = load_prompts(prompts or data_path("eval/mt_bench/question.jsonl"), limit)
    configs = [ModelConfig.from_option(o, s) for o, s in (("--model", model), ("--baseline", baseline), ("--judge", judge))]
    cache = CallCache(default_cache_path())
    ours, theirs = (open_model(c, role=r, cache=cache) for c, r in zip(configs[:2], ("student", "baseline")))
    grader = open_model(configs[2], role="judge", cache=cache) if any(not p.instruction_id_list for p in items) else None
    summary = run_winrate(ours, theirs, grader, items, out_dir, max_new_tokens, judge_mode)
    table = Table(title=f"win rate: {model} vs {baseline} on {summary['n']} prompts")
    for column in ("wins", "ties", "losses", "win rate [95% CI]", "LC win rate [95% CI]", "decided by"):
        table.add_column(column)
    table.add_row(str(summary["wins"]), str(summary["ties"]), str(summary["losses"]),
                  _fmt(summary["win_rate"], summary["ci95"]), _fmt(summary["lc_win_rate"], summary["lc_ci95"]),
                  f"checkers {summary['by']['checkers']}, judge {summary['by']['judge']}")
    out.print(table)


@eval_app.command("run")
def run_command(recipe: Path = typer.Argument(..., help="Recipe YAML; runs its eval step(s) over its run directory."),
                deterministic: bool = DeterministicOption) -> None:
    """The recipe's eval steps alone (`bezoar run RECIPE --only NAME` for each), then the comparison."""
    from bezoar.config import load_recipe
    from bezoar.errors import ConfigError
    from bezoar.pipeline import run

    loaded = load_recipe(recipe)
    steps = loaded.steps_of("eval")
    if not steps:
        raise ConfigError(f"{recipe}: the recipe has no eval step (add `- type: eval` to its steps)")
    for step in steps:
        run(loaded, recipe, only=step.name)
    compare_command(loaded.run.directory)


def compare_command(
        run_dir: Path = typer.Argument(..., help="A run directory with eval/ results."),
        only: Optional[str] = typer.Option(None, help="Comma-separated checkpoints, in the order to show them."),
        json_out: Optional[Path] = typer.Option(None, "--out", help="Where to write the JSON (default RUN_DIR/comparison.json)."),
        as_json: bool = typer.Option(False, "--json", help="Print the JSON instead of the table."),
) -> None:
    """One table: base vs each trained checkpoint across every metric, with deltas and intervals."""
    from bezoar.evaluate.compare import compare, describe_decoding, of_run

    summaries, order = of_run(run_dir)
    names = [c.strip() for c in only.split(",")] if only else order
    result = compare(summaries, names, json_out or run_dir / "comparison.json")
    if as_json:
        print(json.dumps(result, indent=2))
        return
    # One column per checkpoint (a run has a handful), one row per metric (there can be dozens).
    table = Table(title=f"{run_dir}: value [95% CI], and change vs {result['baseline']} [95% CI, paired]")
    table.add_column("metric", no_wrap=True)
    for row in result["rows"]:
        table.add_column(row["checkpoint"], justify="right", min_width=len(row["checkpoint"]))
    for metric in result["metrics"]:
        cells = [metric]
        for row in result["rows"]:
            entry = row["metrics"].get(metric)
            cells.append(_comparison_cell(entry, result["baseline"]) if entry else "-")
        table.add_row(*cells)
    out.print(table)
    out.print(describe_decoding(result.get("decoding") or {}))


def _comparison_cell(entry: dict, baseline: str) -> str:
    text = _fmt(entry["value"], entry["ci95"])
    delta = entry.get(f"delta_vs_{baseline}")
    if delta:
        text += f"\nΔ {delta['delta']:+.3f}" + (f" {_ci(delta['ci95'])}" if delta.get("ci95") else "")
    return text


def _num(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ci(interval, digits: int = 2) -> str:
    return "-" if not interval else f"[{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


def _fmt(value, interval) -> str:
    return f"{_num(value, 3)} {_ci(interval, 3)}"
