"""The `bezoar` command: each sub-command is a thin map onto one library call.

Stage packages add their own sub-commands through `register(app)` in their `commands.py`. A
`BezoarError` becomes one line on stderr and exit code 2 (`BatchPending`, provider batches still running:
exit code 75); anything else keeps its traceback.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from bezoar.cli_options import DeterministicOption
from bezoar.errors import BezoarError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="From commercially usable seed data to an aligned, evaluated small language model.")
console = Console(stderr=True)

ModelOption = typer.Option("local", "--model", "-m", help="Model spec: local, local:PATH, openai:MODEL@URL, anthropic:MODEL")


@app.callback()
def _setup(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug logs.")) -> None:
    from bezoar.logs import configure_logging

    configure_logging(logging.DEBUG if verbose else logging.INFO)


@app.command()
def validate(recipe: Path = typer.Argument(..., help="Recipe YAML to check.")) -> None:
    """Check a recipe without a model call: keys and values, input files, HH-RLHF rows, seed counts,
    API keys, the licence gate and free disk; every problem one line, all at once."""
    from bezoar.config import load_recipe
    from bezoar.preflight import check_recipe

    check_recipe(load_recipe(recipe), recipe)
    console.print(f"[green]ok[/green] {recipe}")


@app.command()
def recipe(reference: bool = typer.Option(False, "--reference", help="Print every recipe key (Markdown).")) -> None:
    """What a recipe may say: `--reference` prints every key of run, models and each step type, with its
    type, default and meaning (the same text as docs/recipe.md)."""
    from bezoar.recipe_reference import reference_markdown

    if not reference:  # one line, as every other bad input (a usage error prints the whole usage)
        raise BezoarError("bezoar recipe: say what to show: --reference (every recipe key, as in docs/recipe.md)")
    print(reference_markdown(), end="")


@app.command()
def chat(prompt: str = typer.Argument(..., help="What to ask."),
         model: str = ModelOption,
         system: Optional[str] = typer.Option(None, "--system", help="A system message."),
         max_new_tokens: int = typer.Option(256, help="Longest reply, in tokens."),
         temperature: float = typer.Option(0.0, help="0 is greedy (deterministic)."),
         as_json: bool = typer.Option(False, "--json", help="Print the reply as JSON with token counts."),
         deterministic: bool = DeterministicOption) -> None:
    """Ask any backend one question from the shell."""
    from bezoar.config import ModelConfig
    from bezoar.llm.protocol import Sampling
    from bezoar.llm.specs import open_model

    llm = open_model(ModelConfig.from_option("--model", model), role="chat")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    reply = llm.chat([messages], Sampling(temperature=temperature, max_new_tokens=max_new_tokens))[0]
    if as_json:
        print(json.dumps({**reply.to_json(), "model": llm.identity, "cached": reply.cached}, ensure_ascii=False))
    else:
        print(reply.text)


@app.command()
def serve(model: str = ModelOption,
          host: str = typer.Option("127.0.0.1", help="Address to listen on."),
          port: int = typer.Option(8000, help="Port to listen on."),
          batch_size: int = typer.Option(32, help="Most requests decoded together (continuous batching)."),
          dtype: str = typer.Option("auto", help="auto (bf16 where faster, measured; fp32 with --deterministic), float32, bfloat16."),
          deterministic: bool = DeterministicOption) -> None:
    """An OpenAI-compatible chat-completions server over the local backend (requests are batched)."""
    from bezoar.config import ModelConfig
    from bezoar.llm.serve import serve as run_server

    ModelConfig.from_option("--model", model)  # a bad spec is one line, before any model loads
    run_server(model, host=host, port=port, batch_size=batch_size, dtype=dtype)


def _register_stage_commands() -> None:
    import importlib

    for package in ("generate", "filter", "train", "evaluate", "report", "pipeline_commands"):
        try:
            module = importlib.import_module(f"bezoar.{package}.commands" if package != "pipeline_commands"
                                             else "bezoar.pipeline_commands")
        except ModuleNotFoundError as error:
            if error.name and error.name.startswith("bezoar"):
                continue  # that stage has no commands yet
            raise
        module.register(app)


_register_stage_commands()


def main() -> None:
    try:
        app(standalone_mode=False)
    except BezoarError as error:
        _exit_with(error)
    except (typer.Abort, KeyboardInterrupt):
        console.print("aborted")
        sys.exit(130)
    except Exception as error:  # click's usage errors carry their own exit codes
        import click

        from bezoar.errors import disk_full

        # typer (0.29 here) raises its own copy of click's exceptions (typer._click), not click's classes
        if isinstance(error, (click.exceptions.ClickException, typer.TyperException)) and hasattr(error, "show"):
            error.show()
            sys.exit(error.exit_code)
        if full := disk_full(error):  # the environment, not a bug: one line like any BezoarError
            _exit_with(full)
        raise


def _exit_with(error: BezoarError) -> None:
    from bezoar.errors import BatchPending

    pending = isinstance(error, BatchPending)  # not a failure: submitted, come back later
    for line in str(error).splitlines() or [type(error).__name__]:
        console.print(line, style="yellow" if pending else "red", markup=False, highlight=False, soft_wrap=True)
    sys.exit(BatchPending.EXIT_CODE if pending else 2)
