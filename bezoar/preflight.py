"""Refuse before spending: everything about a recipe that can be checked without a model call.

`bezoar validate RECIPE` and the start of `bezoar run` check that every input file exists and its
first rows parse (with the stages' own readers), that the HH-RLHF file holds enough valid rows for
its slices, that the seeds can reach each scheme's `n`, that roles which need an API key have one,
the licence gate, and the free disk space. Every problem is one line, `FILE:LINE: key.path: what,
the numbers, the fix`, and all of them are reported at once: a paper-scale run must not discover
after hours of teacher time that its HH-RLHF file is too small.
"""
from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from bezoar.config import Recipe
from bezoar.config_base import ModelConfig
from bezoar.errors import ConfigError
from bezoar.generate.config import METHODS
from bezoar.records import open_data

log = logging.getLogger(__name__)

PREVIEW_ROWS = 20
"""Rows read from each input to prove it parses (whole files are read only where a count is needed)."""
MB = 1024 * 1024


class Refused(ConfigError):
    """The recipe cannot run as it is; one line per problem."""


class Findings:
    """Problems found so far, each placed on the recipe line of its key."""

    def __init__(self, source: Path | None):
        self.source = source
        self.lines: dict[tuple, int] = {}
        self.text: list[str] = []
        if source is not None and Path(source).is_file():
            from bezoar.config import parse_yaml

            self.lines = parse_yaml(Path(source))[1]
            self.text = Path(source).read_text(encoding="utf-8").splitlines()
        self.problems: list[tuple[int, str]] = []

    def line(self, key: tuple) -> int:
        """The line of `key`, else of its nearest parent in the recipe (a default has no line of its own)."""
        return next((self.lines[key[:i]] for i in range(len(key), 0, -1) if key[:i] in self.lines), 1)

    def variable(self, key: tuple, whole: bool = False) -> str | None:
        """The `${VAR...}` the recipe reads this value from, if any: the knob a user turns. `whole`: only
        when the variable is the entire value (`"${HH_RLHF:-...}"`, not `"${BEZOAR_DATA:-...}/file"`)."""
        number = self.lines.get(key)
        if not number or not self.text:
            return None
        name = r"\$\{([A-Za-z_][A-Za-z0-9_]*)"
        pattern = r":\s*[\"']?" + name + r"[^}]*\}[\"']?\s*(?:#.*)?$" if whole else name
        found = re.search(pattern, self.text[number - 1])
        return found.group(1) if found else None

    def missing(self, key: tuple, what: str) -> None:
        """`what` does not exist: the fix names the variable the path is read from, when there is one."""
        variable = self.variable(key)
        self.add(key, f"{what} not found; " + (f"fix the path, or set {variable} (read in it) to where the data is"
                                               if variable else "fix the path"))

    def add(self, key: tuple, message: str) -> None:
        where = f"{self.source}:{self.line(key)}" if self.source else "(recipe)"
        self.problems.append((self.line(key), f"{where}: {'.'.join(map(str, key))}: {message}"))

    def raise_if_any(self) -> None:
        if self.problems:
            raise Refused("\n".join(text for _, text in sorted(self.problems)))


def refuse_before_spending(recipe: Recipe, source: Path | None, stages: Iterable[str], run_dir: Path) -> None:
    """Raise `Refused` with every problem of the recipe for these stages (no model is called or loaded)."""
    found = Findings(source)
    stages = set(stages)
    if "generate" in stages:
        check_generate(recipe, found)
    if "filter" in stages:
        check_filter(recipe, found)
    if "sft" in stages:
        check_sft(recipe, found)
    if stages & {"sft_hh", "dpo"} or ("eval" in stages and recipe.eval.preference.enabled
                                      and recipe.eval.preference.pairs is None):
        check_hh_rows(recipe, found)
    if "eval" in stages:
        check_eval(recipe, found)
    check_keys(recipe, stages, found)
    check_disk(recipe, stages, run_dir, found)
    found.raise_if_any()


# --- generate ------------------------------------------------------------------------------------

def check_generate(recipe: Recipe, found: Findings) -> None:
    from bezoar.generate.stage import METHODS, check_licences
    from bezoar.errors import LicenceError

    for method in METHODS:
        config = recipe.generate.scheme(method)
        if config.n == 0:
            continue
        key = ("generate", method, "seeds")
        if not config.seeds:
            found.add(key, "no seed files given; add at least one (or set n: 0 to skip this scheme)")
            continue
        rows = sum(_seed_rows(seed, config.skip_bad_lines, key + (i,), found) for i, seed in enumerate(config.seeds))
        _check_reach(method, config, rows, found)
        if recipe.run.require_commercial_use and all(Path(seed.path).is_file() for seed in config.seeds):
            try:
                check_licences(config.seeds, recipe.models.teacher.spec, recipe.models.teacher.licence)
            except LicenceError as error:
                found.add(("run", "require_commercial_use"), str(error))


def _seed_rows(seed, skip_bad: bool, key: tuple, found: Findings) -> int:
    """Rows of one seed file (its `limit` applied); its first rows are parsed with the real reader."""
    from bezoar.errors import DataError
    from bezoar.generate.seeds import read_seeds

    path = Path(seed.path)
    if not path.is_file():
        found.missing(key, f"seed file {path}")
        return 0
    try:
        read_seeds(path, seed.licence, skip_bad, limit=min(seed.limit or PREVIEW_ROWS, PREVIEW_ROWS))
        rows = len(read_seeds(path, seed.licence, True).seeds) if path.suffix == ".json" else count_lines(path)
    except DataError as error:
        found.add(key, f"{error}; fix the file or set skip_bad_lines: true")
        return 0
    return min(rows, seed.limit) if seed.limit else rows


def count_lines(path: Path) -> int:
    """Non-blank lines of a text file (gzip too), without parsing them: a row count for JSONL and TSV."""
    with open_data(path, binary=True) as handle:  # bytes: a row count needs no decoding
        return sum(1 for line in handle if line.strip())


def _check_reach(method: str, config, rows: int, found: Findings) -> None:
    """Orca answers each seed once, Evol-Instruct evolves each seed at most once per epoch."""
    most = {"orca": rows, "evol": rows * getattr(config, "epochs", 1)}.get(method)
    if most is not None and rows and most < config.n:
        how = "one record per seed row" if method == "orca" else f"{rows:,} seed rows x {config.epochs} epochs"
        found.add(("generate", method, "n"), f"n={config.n:,} cannot be reached: at most {most:,} records "
                                             f"({how}); add seed files or lower n")


# --- filter, sft, HH-RLHF, eval -----------------------------------------------------------------

def check_filter(recipe: Recipe, found: Findings) -> None:
    section = recipe.filter
    if section.judge_check.enabled and section.judge_check.pairs is not None:
        _check_pairs_preview(section.judge_check.pairs, ("filter", "judge_check", "pairs"), found)
    if section.contamination.enabled:
        for i, path in enumerate(section.contamination.eval_paths):
            if not Path(path).exists():
                found.missing(("filter", "contamination", "eval_paths", i), str(path))


def check_sft(recipe: Recipe, found: Findings) -> None:
    """Data sets given by path (the default, the filter's output, does not exist before the run)."""
    from bezoar.records import Record

    for i, dataset in enumerate(recipe.sft.datasets):
        if dataset.path is not None:
            _preview(dataset.path, ("sft", "datasets", i, "path"), found, Record)


def check_hh_rows(recipe: Recipe, found: Findings) -> None:
    """sft_n + dpo_n + heldout_n valid pairs must exist; parsing stops as soon as they do."""
    from bezoar.hh_rlhf import Malformed, _load, parse_row

    data, key = recipe.sft_hh.data, ("sft_hh", "data", "path")
    if data.path is None:
        found.add(key, "no HH-RLHF file given (JSONL(.gz) with chosen/rejected transcripts)")
        return
    if not Path(data.path).is_file():
        found.missing(key, str(data.path))
        return
    need = data.sft_n + (data.dpo_n or 0) + data.heldout_n
    rows = valid = 0
    with open_data(Path(data.path)) as handle:
        for line in handle:
            if valid >= need:
                break
            rows += bool(line.strip())
            try:
                parse_row(_load(line))
            except Malformed:
                continue  # a blank or malformed row: hh_rlhf skips it too
            valid += 1
    if valid < need:
        dpo = "(all the rest)" if data.dpo_n is None else f"{data.dpo_n:,}"
        found.add(("sft_hh", "data", "sft_n"),
                  f"sft_n {data.sft_n:,} + dpo_n {dpo} + heldout_n {data.heldout_n:,} needs {need:,} HH-RLHF pairs, "
                  f"but {data.path} has {rows:,} rows ({valid:,} well-formed); "
                  f"{_how_to_point(found, key, 'a larger HH-RLHF file')} or lower sft_n")


def _how_to_point(found: Findings, key: tuple, what: str) -> str:
    """`set HH_RLHF to ...` when the whole path is read from a variable, else which key to change."""
    variable = found.variable(key, whole=True)
    return f"set {variable} to {what}" if variable else f"point {'.'.join(key)} at {what}"


def check_eval(recipe: Recipe, found: Findings) -> None:
    from bezoar.errors import DataError
    from bezoar.evaluate.mt_bench_files import Question

    config = recipe.eval
    if config.mt_bench.enabled:
        _preview(config.mt_bench.questions, ("eval", "mt_bench", "questions"), found, Question)
        if config.mt_bench.reference_answers is not None:
            _preview(config.mt_bench.reference_answers, ("eval", "mt_bench", "reference_answers"), found)
    if config.harness.enabled:
        _check_harness(config.harness, found)
    if config.preference.enabled and config.preference.pairs is not None:
        _check_pairs_preview(config.preference.pairs, ("eval", "preference", "pairs"), found)
    ifeval = getattr(config, "ifeval", None)
    if ifeval is not None and ifeval.enabled:
        _preview(ifeval.prompts, ("eval", "ifeval", "prompts"), found)


def _check_harness(config, found: Findings) -> None:
    """The harness's local task data exist (lm-eval itself is not imported: it takes seconds)."""
    from bezoar.errors import DataError
    from bezoar.evaluate.harness_tasks import LEADERBOARD, expand_tasks

    quiet = logging.getLogger("bezoar.evaluate.harness_tasks")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # `leaderboard` skips a task without data by design: no warning from a check
    try:
        local, _ = expand_tasks(config.tasks, config.data_dir, config.data_paths)
    except DataError as error:
        found.add(("eval", "harness", "tasks"), str(error))
        return
    finally:
        quiet.setLevel(level)
    if not local and config.tasks == [LEADERBOARD]:
        found.add(("eval", "harness", "data_dir"), f"no harness task data under {config.data_dir}; "
                                                   "fix the path or set eval.harness.enabled: false")


def _check_pairs_preview(path: Path, key: tuple, found: Findings) -> None:
    from bezoar.hh_rlhf import Malformed, _load, parse_row

    if not Path(path).is_file():
        found.missing(key, str(path))
        return

    with open_data(Path(path)) as handle:
        rows = [line for _, line in zip(range(PREVIEW_ROWS), handle) if line.strip()]
    try:
        row = _load(rows[0]) if rows else None
        if row is not None and isinstance(row.get("chosen"), str):
            parse_row(row)
    except Malformed as error:
        found.add(key, f"{path}:1: {error}")


def _preview(path: Path, key: tuple, found: Findings, schema=None) -> None:
    """The first rows of a JSONL file parse (with `schema` when given)."""
    from bezoar.errors import DataError
    from bezoar.records import read_jsonl

    if not Path(path).is_file():
        found.missing(key, str(path))
        return
    try:
        for _, _row in zip(range(PREVIEW_ROWS), read_jsonl(path, schema)):
            pass
    except DataError as error:
        found.add(key, str(error))


# --- keys and disk -------------------------------------------------------------------------------

def roles_for(recipe: Recipe, stages: set[str]) -> dict[str, tuple[tuple, ModelConfig]]:
    """Role name → (its key path in the recipe, its ModelConfig), for the roles these stages call."""
    roles: dict[str, tuple[tuple, ModelConfig]] = {}
    generate = recipe.generate
    if "generate" in stages and generate.enabled_methods():
        roles["teacher"] = (("models", "teacher"), recipe.models.teacher)
        if generate.evol.n and generate.evol.equality_check:
            roles["judge"] = (("models", "judge"), recipe.models.judge)
    if "filter" in stages and recipe.filter.judge.enabled:
        roles["judge"] = (("models", "judge"), recipe.models.judge)
    if stages & {"sft", "sft_hh", "dpo", "eval"}:
        roles["student"] = (("models", "student"), recipe.models.student)
    if "eval" in stages and recipe.eval.mt_bench.enabled:
        own = recipe.eval.mt_bench.judge
        roles["mt_bench_judge"] = ((("eval", "mt_bench", "judge"), own) if own
                                   else (("models", "judge"), recipe.models.judge))
    return roles


def check_keys(recipe: Recipe, stages: set[str], found: Findings) -> None:
    from bezoar.llm.specs import _api_key, parse_spec

    checked = set()
    for _role, (key, config) in roles_for(recipe, stages).items():
        spec = parse_spec(config.spec)
        if spec.kind == "local" or key in checked:
            continue  # a config shared by two roles (judge, MT-Bench judge) is one problem, not two
        checked.add(key)
        try:
            _api_key(config, spec)
        except ConfigError as error:
            found.add(key + ("api_key_env",), f"{error}; export it before the run")


def estimate_disk_mb(recipe: Recipe, stages: set[str]) -> dict[str, float]:
    """A rough upper estimate of what the run writes, per part (MB). Figures measured on the tiny run:
    a generated record with its rejections and cached calls takes ~6 KB over data/ and cache/; a LoRA
    training stage keeps `save_total_limit` checkpoints of adapter + optimizer state (~30 MB each for
    a 3B model at r=16 on q,k,v) plus logs; an evaluation writes answers, judgments and lm-eval output."""
    parts: dict[str, float] = {}
    if "generate" in stages or "filter" in stages:
        records = sum(recipe.generate.scheme(m).n for m in METHODS)
        parts["records"] = records * 6 * 1024 / MB
    trained = [s for s in ("sft", "sft_hh", "dpo") if s in stages]
    for name in trained:
        steps = len(recipe.sft.datasets) if name == "sft" else 1
        parts[name] = steps * (getattr(recipe, name).save_total_limit + 1) * 30
    if "sft_hh" in stages or "dpo" in stages:
        data = recipe.sft_hh.data
        parts["hh_slices"] = (data.sft_n + (data.dpo_n or 0) + data.heldout_n) * 3 * 1024 / MB
    if "eval" in stages:
        parts["eval"] = 50.0
    return parts


def check_disk(recipe: Recipe, stages: set[str], run_dir: Path, found: Findings) -> None:
    parts = estimate_disk_mb(recipe, stages)
    need = sum(parts.values())
    where = Path(run_dir).absolute()
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free / MB
    if free < need:
        detail = ", ".join(f"{name} {mb:,.0f}" for name, mb in parts.items())
        found.add(("run", "run_dir"), f"{run_dir} needs about {need:,.0f} MB ({detail}) but {where} has {free:,.0f} MB "
                                      "free; free some space or set run.run_dir (or --run-dir) on a larger disk")


def check_recipe(recipe: Recipe, source: Path | None, stages: Iterable[str], run_dir: Path | None = None) -> None:
    """`bezoar validate`: the same checks as the start of `bezoar run`."""
    refuse_before_spending(recipe, source, stages, Path(run_dir or recipe.run.directory))


def probe_remote_roles(recipe: Recipe, stages: Iterable[str]) -> None:
    """One probe per remote endpoint of the roles these stages call; every dead role is one line."""
    from bezoar.llm.probe import RoleUnreachable, probe_role
    from bezoar.llm.specs import build_backend, parse_spec

    problems, seen = [], set()
    for role, (_key, config) in roles_for(recipe, set(stages)).items():
        if parse_spec(config.spec).kind == "local" or config.spec in seen:
            continue  # local roles need no probe; a spec shared by two roles is probed once
        seen.add(config.spec)
        try:
            probe_role(role, build_backend(config))
        except RoleUnreachable as error:
            problems.append(str(error))
    if problems:
        raise Refused("\n".join(problems))
