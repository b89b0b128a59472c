"""The step types a recipe may list, registered once: one module each (see `bezoar.steps.base`).

A step module defines one `Step` subclass and names it `STEP`. Adding a step type is one new module
and one line here. Step types outside bezoar (a plug-in, a test's toy step) are listed, as importable
module names separated by commas, in the environment variable BEZOAR_STEPS: every bezoar process,
the pipeline's step processes included, registers them the same way.
"""
from __future__ import annotations

import os
from functools import lru_cache
from importlib import import_module

from bezoar.errors import ConfigError
from bezoar.steps.base import Step

STEP_MODULES = (
    "bezoar.steps.generate",
    "bezoar.steps.filter",
    "bezoar.steps.sft",
    "bezoar.steps.hh_slices",
    "bezoar.steps.sft_hh",
    "bezoar.steps.preferences",
    "bezoar.steps.dpo",
    "bezoar.steps.eval",
    "bezoar.steps.report",
)
PLUGINS_ENV = "BEZOAR_STEPS"


@lru_cache(maxsize=1)
def step_types() -> dict[str, type[Step]]:
    """Step type name -> its class, built-in modules first, then BEZOAR_STEPS's."""
    extra = [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]
    found: dict[str, type[Step]] = {}
    for name in (*STEP_MODULES, *extra):
        try:
            step = import_module(name).STEP
        except (ImportError, AttributeError) as error:
            raise ConfigError(f"{PLUGINS_ENV}: cannot register step module '{name}' ({error}); it must be "
                              "importable and define STEP, a bezoar.steps.base.Step subclass") from None
        found[step.model_fields["type"].default] = step
    return found
