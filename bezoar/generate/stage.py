"""Generating one scheme: licence gate, seeds, teacher, resumable output. Used by `bezoar generate`
and by the generate step (`bezoar.steps.generate`: every scheme with `n > 0`)."""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bezoar.errors import ConfigError
from bezoar.generate.config import METHODS, EvolConfig, LaMiniConfig, OrcaConfig, SchemeConfig, SeedFile
from bezoar.generate.constraints import generate_constraints
from bezoar.generate.evol_instruct import EvolInstruct
from bezoar.generate.lamini import LaMini
from bezoar.generate.orca import Orca
from bezoar.generate.runner import Context, Meter, OutputFiles, generate_to_file
from bezoar.generate.seeds import SeedSet, load_seed_files
from bezoar.hashing import file_sha256
from bezoar.licences import dataset_licence, model_licence, require_commercial
from bezoar.llm.endpoints import public_spec

log = logging.getLogger(__name__)


def check_licences(seeds: list[SeedFile], teacher_spec: str, teacher_licence: str | None) -> None:
    """The commercial-use gate: raises LicenceError naming the first seed or teacher that fails, before any call."""
    for seed in seeds:
        dataset, licence = dataset_licence(str(seed.path), seed.licence)
        require_commercial("seed", f"{seed.path} ({dataset})", licence)
    require_commercial("teacher", teacher_spec, model_licence(teacher_spec, teacher_licence))


def generate(method: str, config: SchemeConfig, teacher: Any, teacher_spec: str, out: Path | str,
             seed: int = 0, judge: Any = None, judge_spec: str | None = None,
             require_commercial_use: bool = False, teacher_licence: str | None = None,
             show_progress: bool | None = None, restart_on_change: bool = False, max_failure_rate: float = 0.05,
             listener: Callable[[int], None] | None = None) -> dict:
    """Generate `config.n` records of one scheme into `out` (resuming it if a run was cut short).

    `teacher` and `judge` are CachedModels, or callables returning one: they are opened only after
    the licence gate and the seed files have passed, so a refused run costs nothing. An `out` made
    with other settings is an error, or with `restart_on_change` is generated again from scratch.
    """
    if method == "constraints":  # prompts from a program: no teacher, no judge

        if require_commercial_use:
            for seed_file in config.seeds:
                dataset, licence = dataset_licence(str(seed_file.path), seed_file.licence)
                require_commercial("seed", f"{seed_file.path} ({dataset})", licence)
        return generate_constraints(config, out, seed)
    if method not in METHODS:
        raise ConfigError(f"generate: unknown method '{method}' (choose one of {', '.join(METHODS)}, constraints)")

    teacher_spec = public_spec(teacher_spec)  # records and messages name the teacher, never its credentials
    judge_spec = public_spec(judge_spec) if judge_spec else judge_spec
    if not config.seeds:
        raise ConfigError(f"generate.{method}.seeds: no seed files given (use --seeds PATH or the recipe)")
    if require_commercial_use:
        check_licences(config.seeds, teacher_spec, teacher_licence)
    seeds = load_seed_files(config.seeds, config.skip_bad_lines)
    context = Context(None, teacher_spec, model_licence(teacher_spec, teacher_licence), seed)
    scheme = _scheme(method, context, seeds, config)  # checks the seeds against the settings, still no model
    context.teacher = teacher() if callable(teacher) else teacher
    if method == "evol" and judge is not None:
        scheme.use_judge(judge() if callable(judge) else judge, judge_spec)
    judge = getattr(scheme, "judge", None)
    before = context.teacher.usage.copy()
    judge_before = judge.usage.copy() if judge is not None else None
    meter = Meter(method, config.n, show_progress, listener)
    context.progress = meter.hook
    extra = {"skipped_seed_rows": len(seeds.bad_lines)}
    summary = generate_to_file(scheme, Path(out), config.n, _basis(method, config, seeds, context.teacher, judge, seed),
                               max_attempts=int(config.n * config.max_attempts_per_record) + 1, meter=meter,
                               usage=lambda: context.teacher.usage.minus(before).to_json(), extra=extra,
                               restart=restart_on_change, max_failure_rate=max_failure_rate,
                               backend=context.teacher.identity)
    if judge is not None and judge is not context.teacher:
        summary["judge_usage"] = judge.usage.minus(judge_before).to_json()
    return summary


def _scheme(method: str, context: Context, seeds: SeedSet, config: SchemeConfig):
    if method == "lamini":

        return LaMini(context, seeds.seeds, config)  # type: ignore[arg-type]
    if method == "evol":

        return EvolInstruct(context, seeds.seeds, config)  # type: ignore[arg-type]

    return Orca(context, seeds.seeds, config)  # type: ignore[arg-type]


def _basis(method: str, config: SchemeConfig, seeds: SeedSet, teacher, judge, seed: int) -> dict:
    """What decides the stream of candidates (its fingerprint's basis); a file may only be extended by a run
    with the same."""
    settings = config.model_dump(mode="json", exclude={"n", "batch_size", "max_attempts_per_record", "seeds"})
    files = [{"path": str(s.path), "licence": s.licence, "limit": s.limit, "sha256": file_sha256(Path(s.path))}
             for s in config.seeds]
    return {"method": method, "teacher": teacher.identity, "judge": getattr(judge, "identity", None),
            "seed": seed, "settings": settings, "seed_files": files, "seed_rows": len(seeds.seeds)}


__all__ = ["generate", "check_licences", "EvolConfig", "LaMiniConfig", "OrcaConfig"]
