"""Command-line options that several sub-commands share, so each says the same thing the same way."""
from __future__ import annotations

import typer

from bezoar.llm.device import set_deterministic


def _deterministic(on: bool) -> bool:
    # Set while the options are parsed, before the command loads a model; child processes inherit it.
    if on:

        set_deterministic(True)
    return on


def follow_recipe(recipe) -> None:
    """A recipe's `run.deterministic: true` switches the command (and the step processes it starts) to
    deterministic decoding, as --deterministic does; false leaves a --deterministic given on the command line."""
    _deterministic(recipe.run.deterministic)


DeterministicOption = typer.Option(
    False, "--deterministic", callback=_deterministic,
    help="Decode in fp32, so a batched reply equals the one-by-one reply and a resumed run equals one never "
         "killed (default: bf16 where the machine is faster in it).")
