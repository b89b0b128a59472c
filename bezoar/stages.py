"""The stages of a run, in order: what each calls, which recipe sections and model roles it depends on.

A leaf (it names stage functions by string, imports none of them), so the pipeline, the planner and
the CLI can all list the stages without importing each other."""
from __future__ import annotations

from dataclasses import dataclass

from bezoar.errors import ConfigError


@dataclass(frozen=True)
class Stage:
    name: str
    function: str
    """`module:function` with the stage contract `f(recipe, run_dir, models) -> dict`."""
    sections: tuple[str, ...]
    """Recipe sections whose change invalidates this stage."""
    roles: tuple[str, ...]
    """Model roles it calls (their configs are part of the fingerprint)."""


STAGES: tuple[Stage, ...] = (
    Stage("generate", "bezoar.generate.stage:run_generate", ("generate",), ("teacher", "judge")),
    Stage("filter", "bezoar.filter.runner:run_filter", ("filter",), ("judge",)),
    Stage("sft", "bezoar.train.sft:run_sft", ("sft",), ("student",)),
    Stage("sft_hh", "bezoar.train.sft:run_sft_hh", ("sft_hh",), ("student",)),
    Stage("preferences", "bezoar.preferences.stage:run_preferences", ("preferences",), ("student", "judge")),
    Stage("dpo", "bezoar.train.dpo:run_dpo", ("dpo",), ("student",)),
    Stage("eval", "bezoar.evaluate.runner:run_eval", ("eval",), ("judge", "student")),
    Stage("report", "bezoar.report.html:run_report", (), ()),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def stage_named(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise ConfigError(f"unknown stage '{name}'; the stages are: {', '.join(STAGE_NAMES)}")
