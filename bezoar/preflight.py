"""Refuse before spending: everything about a recipe that can be checked without a model call.

`bezoar validate RECIPE` and the start of `bezoar run` ask every chosen step to check itself
(`Step.check`: its input files exist and their first rows parse with the step's own readers, counts
can be reached, the licence gate), then check what concerns the whole run: every input a step reads
is handed on by a step before it, roles that need an API key have one, and the disk has room. Every
problem is one line, `FILE:LINE: key.path: what, the numbers, the fix`, and all of them are reported
at once: a paper-scale run must not discover after hours of teacher time that its HH-RLHF file is too small.
"""
from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from bezoar.config import Recipe
from bezoar.config_base import ModelConfig
from bezoar.errors import ConfigError
from bezoar.findings import Findings, Refused
from bezoar.llm.probe import RoleUnreachable, probe_role
from bezoar.llm.specs import build_backend, check_api_keys, parse_spec
from bezoar.steps.base import CheckContext

MB = 1024 * 1024


def refuse_before_spending(recipe: Recipe, source: Path | None, names: Iterable[str], run_dir: Path) -> None:
    """Raise `Refused` with every problem of the recipe for these steps (no model is called or loaded)."""
    found = Findings(source)
    chosen = set(names)
    for index, step in enumerate(recipe.steps):
        if step.name in chosen:
            step.check(CheckContext(recipe, index, found, Path(run_dir)))
    check_handoffs(recipe, found)
    check_keys(recipe, chosen, found)
    check_disk(recipe, chosen, run_dir, found)
    found.raise_if_any()


def check_handoffs(recipe: Recipe, found: Findings) -> None:
    """Every input a step reads is handed on by a step before it (or by the step its `from:` names)."""
    for index, step in enumerate(recipe.steps):
        for name in step.inputs(recipe):
            source = step.source_for(name)
            earlier = [s for s in recipe.steps[:index] if source is None or s.name == source]
            if not any(name in s.provides(recipe) for s in earlier):
                where = f"the step '{source}' (its `from:`) does not hand it on" if source else \
                    "no step before it hands it on"
                found.add(("steps", index, "type"), f"{step.name} reads '{name}', but {where}; "
                                                    "add a step that makes it before this one, or fix `from:`")


def roles_of(recipe: Recipe, names: set[str]) -> dict[str, tuple[tuple, ModelConfig]]:
    """Role name -> (its key path in the recipe, its ModelConfig), for the roles these steps call."""
    roles: dict[str, tuple[tuple, ModelConfig]] = {}
    for step in recipe.steps:
        if step.name in names:
            roles.update(step.roles(recipe))
    return roles


def check_keys(recipe: Recipe, names: set[str], found: Findings) -> None:
    checked = set()
    for _role, (key, config) in roles_of(recipe, names).items():
        spec = parse_spec(config.spec)
        if spec.kind == "local" or key in checked:
            continue  # a config shared by two roles (judge, MT-Bench judge) is one problem, not two
        checked.add(key)
        try:
            check_api_keys(config, spec)
        except ConfigError as error:
            found.add(key + ("api_key_env",), f"{error}; export it before the run")


def check_disk(recipe: Recipe, names: set[str], run_dir: Path, found: Findings) -> None:
    parts = {s.name: s.disk_mb(recipe) for s in recipe.steps if s.name in names}
    need = sum(parts.values())
    where = Path(run_dir).absolute()
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free / MB
    if free < need:
        detail = ", ".join(f"{name} {mb:,.0f}" for name, mb in parts.items() if mb)
        found.add(("run", "run_dir"), f"{run_dir} needs about {need:,.0f} MB ({detail}) but {where} has {free:,.0f} MB "
                                      "free; free some space or set run.run_dir (or --run-dir) on a larger disk")


def check_recipe(recipe: Recipe, source: Path | None, run_dir: Path | None = None) -> None:
    """`bezoar validate`: the same checks as the start of `bezoar run`, over every step."""
    refuse_before_spending(recipe, source, recipe.names(), Path(run_dir or recipe.run.directory))


def probe_remote_roles(recipe: Recipe, names: Iterable[str]) -> None:
    """One probe per remote endpoint of the roles these steps call; every dead role is one line."""
    problems, seen = [], set()
    for role, (_key, config) in roles_of(recipe, set(names)).items():
        if parse_spec(config.spec).kind == "local" or config.spec in seen:
            continue  # local roles need no probe; a spec shared by two roles is probed once
        seen.add(config.spec)
        try:
            probe_role(role, build_backend(config))
        except RoleUnreachable as error:
            problems.append(str(error))
    if problems:
        raise Refused("\n".join(problems))
