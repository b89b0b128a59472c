"""`bezoar sft`, `bezoar dpo`, `bezoar check-template`, `bezoar export`: thin maps onto the library."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

console = Console()

BaseOption = typer.Option("local", "--base", help="Model to train: local, local:PATH, or a model/adapter directory.")
RecipeOption = typer.Option(None, "--recipe", help="Take the training settings from this recipe's first step of that type.")
ProcessesOption = typer.Option(None, "--num-processes", min=1,
                               help="Train in N processes under accelerate launch (one per GPU; gloo on CPU).")
AccelerateConfigOption = typer.Option(None, "--accelerate-config",
                                      help="accelerate config file (FSDP, DeepSpeed; see recipes/accelerate/).")


def register(app: typer.Typer) -> None:
    app.command("sft")(sft_command)
    app.command("dpo")(dpo_command)
    app.command("check-template")(check_template_command)
    app.command("export")(export_command)


def _settings(section: str, recipe: Path | None, changes: dict):
    """The recipe's first step of this type (or the defaults) with the command-line changes, validated again."""
    from pydantic import ValidationError

    from bezoar.config import load_recipe
    from bezoar.errors import ConfigError
    from bezoar.train.config import DPOStageConfig, SFTStageConfig

    model = {"sft": SFTStageConfig, "dpo": DPOStageConfig}[section]
    steps = load_recipe(recipe).steps_of(section) if recipe else []
    if recipe and not steps:
        raise ConfigError(f"--recipe: {recipe} has no {section} step to take settings from")
    current = steps[0] if steps else model()
    fields = set(model.model_fields)  # a step's own keys (type, name, from) are no training settings
    values = {k: v for k, v in current.model_dump().items() if k in fields}
    values |= {k: v for k, v in changes.items() if v is not None and k != "launch"}
    values["launch"] |= {k: v for k, v in changes.get("launch", {}).items() if v is not None}
    try:
        return model.model_validate(values)
    except ValidationError as error:
        first = error.errors()[0]
        raise ConfigError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']} (got {first.get('input')!r})") from None


def sft_command(
    data: List[Path] = typer.Option(..., "--data", help="JSONL of chat records; repeat --data to train on several in order."),
    more: Optional[List[Path]] = typer.Argument(None, help="More data files (so `--data a.jsonl b.jsonl` works).",
                                                show_default=False),
    out: Path = typer.Option(..., "--out", help="Output directory (the last data set's adapter is written here)."),
    base: str = BaseOption,
    recipe: Optional[Path] = RecipeOption,
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many optimizer steps (per data set)."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Passes over each data set."),
    learning_rate: Optional[float] = typer.Option(None, help="Peak learning rate."),
    batch_size: Optional[int] = typer.Option(None, help="Micro-batch size."),
    grad_accum: Optional[int] = typer.Option(None, help="Micro-batches per optimizer step."),
    max_length: Optional[int] = typer.Option(None, help="Longest sequence in tokens."),
    template: Optional[str] = typer.Option(None, help="chat (the model's own) or alpaca (the paper's)."),
    loss: Optional[str] = typer.Option(None, help="assistant (reply tokens only) or full."),
    num_processes: Optional[int] = ProcessesOption,
    accelerate_config: Optional[Path] = AccelerateConfigOption,
) -> None:
    """LoRA SFT with TRL on chat records; several --data files train one after another."""
    settings = _settings("sft", recipe, {"max_steps": max_steps, "num_train_epochs": epochs,
                                         "learning_rate": learning_rate, "per_device_train_batch_size": batch_size,
                                         "gradient_accumulation_steps": grad_accum, "max_length": max_length,
                                         "template": template, "loss": loss,
                                         "launch": {"num_processes": num_processes, "config_file": accelerate_config}})
    files = [str(p) for p in list(data) + list(more or [])]
    _print_runs(_maybe_launched("bezoar.train.commands:sequential_sft", settings.launch, out.parent,
                                {"files": files, "out": str(out), "base": base,
                                 "settings": settings.model_dump(mode="json")}))


def sequential_sft(files: list[str], out: str, base: str, settings: dict) -> list[dict]:
    """`bezoar sft`'s work (on every rank when launched): each file continues the previous adapter."""
    from bezoar.train.config import SFTStageConfig
    from bezoar.train.sft import train_sft

    config, out_dir = SFTStageConfig.model_validate(settings), Path(out)
    current, summaries = base, []
    for index, path in enumerate(map(Path, files), 1):
        target = out_dir if index == len(files) else out_dir.with_name(f"{out_dir.name}-step{index}-{path.stem}")
        summaries.append(train_sft(current, [path], target, config, config.loss, stage=f"sft-{index}-{path.stem}"))
        current = str(target)
    return summaries


def _maybe_launched(function: str, launch, workdir: Path, kwargs: dict) -> list[dict]:
    """Call `function` here, or on every rank under `accelerate launch` when the settings ask for it."""
    from importlib import import_module

    from bezoar.processes import launched, run_call

    if launch.wanted and not launched():
        workdir.mkdir(parents=True, exist_ok=True)
        return run_call(function, kwargs, workdir, launch.num_processes, launch.config_file).result
    module, _, name = function.partition(":")
    return getattr(import_module(module), name)(**kwargs)


def dpo_command(
    pairs: Path = typer.Option(..., "--pairs", help="HH-RLHF JSONL(.gz) or bezoar PreferencePair JSONL."),
    out: Path = typer.Option(..., "--out", help="Output directory for the DPO adapter."),
    base: str = BaseOption,
    recipe: Optional[Path] = RecipeOption,
    heldout_n: int = typer.Option(0, "--heldout-n", min=0, help="Keep the file's last N pairs out of training; "
                                                                 "report reward accuracy on them."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Train on the first N pairs only."),
    beta: Optional[float] = typer.Option(None, help="DPO beta (strength of the pull to the reference)."),
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many optimizer steps."),
    learning_rate: Optional[float] = typer.Option(None, help="Peak learning rate."),
    batch_size: Optional[int] = typer.Option(None, help="Micro-batch size (pairs)."),
    grad_accum: Optional[int] = typer.Option(None, help="Micro-batches per optimizer step."),
    max_length: Optional[int] = typer.Option(None, help="Prompt + longer reply, in tokens."),
    ref_cache: Optional[Path] = typer.Option(None, "--ref-cache", help="Directory of cached reference log-probs "
                                                                       "(default OUT/ref-logps); share it between runs."),
    num_processes: Optional[int] = ProcessesOption,
    accelerate_config: Optional[Path] = AccelerateConfigOption,
) -> None:
    """DPO with TRL and LoRA; the reference is the model with the adapter switched off."""
    from bezoar.errors import ConfigError
    from bezoar.hh_rlhf import read_pairs

    settings = _settings("dpo", recipe, {"beta": beta, "max_steps": max_steps, "learning_rate": learning_rate,
                                         "per_device_train_batch_size": batch_size, "max_length": max_length,
                                         "gradient_accumulation_steps": grad_accum,
                                         "launch": {"num_processes": num_processes, "config_file": accelerate_config}})
    count = len(read_pairs(pairs))
    if heldout_n >= count:
        raise ConfigError(f"--heldout-n {heldout_n}: the file has only {count} usable pairs")
    _print_runs(_maybe_launched("bezoar.train.commands:dpo_on_file", settings.launch, out.parent,
                                {"pairs": str(pairs), "out": str(out), "base": base,
                                 "settings": settings.model_dump(mode="json"), "heldout_n": heldout_n,
                                 "limit": limit, "ref_cache": str(ref_cache or out / "ref-logps")}))


def dpo_on_file(pairs: str, out: str, base: str, settings: dict, heldout_n: int, limit: int | None,
                ref_cache: str) -> list[dict]:
    """`bezoar dpo`'s work (on every rank when launched): the file's last `heldout_n` pairs held out."""
    from bezoar.train.config import DPOStageConfig
    from bezoar.train.dpo import train_dpo
    from bezoar.hh_rlhf import read_pairs

    found = read_pairs(Path(pairs))
    train, heldout = found[:len(found) - heldout_n], found[len(found) - heldout_n:] if heldout_n else []
    train = train[:limit] if limit else train
    return [train_dpo(base, train, Path(out), DPOStageConfig.model_validate(settings), heldout=heldout,
                      ref_cache_dir=Path(ref_cache))]


def check_template_command(
    model: str = typer.Option("local", "--model", "-m", help="local, local:PATH or a model/adapter directory."),
    data: Optional[Path] = typer.Option(None, "--data", help="Render the first example of this JSONL instead of a sample."),
    template: str = typer.Option("chat", help="chat (the model's own) or alpaca (the paper's)."),
    expect: Optional[str] = typer.Option(None, "--expect", help="sha256 (prefix) the chat template must have."),
    loss: str = typer.Option("assistant", help="assistant or full."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Render one training example as the trainer sees it, loss tokens marked; exit 2 on template/EOS bugs."""
    from bezoar.train.encoding import load_tokenizer
    from bezoar.train.examples import read_conversations
    from bezoar.hh_rlhf import read_pairs
    from bezoar.train.student import resolve_base
    from bezoar.train.template_check import SAMPLE, check_template, require_template, trained_template

    weights = resolve_base(model)
    tokenizer = load_tokenizer(weights.adapter_dir or weights.base_dir, template)
    sample = SAMPLE
    if data:
        found, bad = read_conversations(data)
        if not found:  # maybe a preference file: check prompt + chosen
            pair = read_pairs(data)[0]
            found = [([m.model_dump() for m in pair.prompt], [m.model_dump() for m in pair.chosen])]
        sample = found[0]
    report = check_template(tokenizer, *sample, loss=loss, expected_sha256=expect,
                            trained_with=trained_template(weights.adapter_dir))
    if as_json:
        print(json.dumps(report.to_json()))
    else:
        text = Text()
        for _, piece, carries in report.tokens:
            text.append(piece, style="bold green" if carries else "dim")
        console.print(text)
        console.print(f"template sha256 {report.template_sha256}  eos {report.eos_token!r}  "
                      f"{sum(c for *_, c in report.tokens)}/{len(report.tokens)} tokens carry loss (green)")
    require_template(report, str(data or model))
    if not as_json:
        console.print("[green]ok[/green]")


def export_command(
    adapter: Path = typer.Option(..., "--adapter", help="LoRA adapter directory written by sft/dpo."),
    out: Path = typer.Option(..., "--out", help="Directory for the merged model."),
    gguf: bool = typer.Option(False, "--gguf", help="Also write model.gguf (llama-family models)."),
) -> None:
    """Merge a LoRA adapter into its base: safetensors, tokenizer and chat template plain transformers loads."""
    from bezoar.train.export import export

    summary = export(adapter, out, gguf=gguf)
    console.print(summary["output"])


def _print_runs(summaries: list[dict]) -> None:
    table = Table(title="training")
    for column in ("stage", "steps", "train loss", "eval loss before → best", "output"):
        table.add_column(column)
    for s in summaries:
        before = (s.get("initial_eval") or {}).get("eval_loss")
        best = s.get("best_eval_loss")
        shown = f"{before:.4f} → {best:.4f}" if before is not None and best is not None else "-"
        table.add_row(s["stage"], str(s["global_step"]), f"{s['train_loss']:.4f}", shown, s["output"])
    console.print(table)
