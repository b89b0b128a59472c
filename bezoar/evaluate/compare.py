"""One table of every checkpoint of a run across every metric, with intervals and deltas.

Rows are checkpoints in training order (base, sft-1.., sft-hh, dpo); columns are the metrics found
under run_dir/eval/{mt_bench,harness,preference,ifeval}/<checkpoint>/summary.json. A delta is against the
base (and, in the JSON, against the previous checkpoint), computed over the items both scored
(paired bootstrap), so its interval reflects the change rather than the spread of the items.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from bezoar.errors import DataError
from bezoar.intervals import paired_bootstrap_delta
from bezoar.records import write_json

log = logging.getLogger(__name__)

KINDS = ("mt_bench", "harness", "preference", "ifeval")


def checkpoint_order(name: str) -> tuple:
    """base < sft-1.. (by number) < sft-hh < dpo < anything else (alphabetical)."""
    if name == "base":
        return (0, 0, name)
    numbered = re.match(r"sft-(\d+)", name)
    if numbered:
        return (1, int(numbered.group(1)), name)
    rank = {"sft-hh": 2, "dpo": 3}.get(name)
    return (rank, 0, name) if rank else (4, 0, name)


def metrics_of(kind: str, summary: dict) -> dict[str, dict]:
    """{metric name: {value, ci95, items}} from one evaluation summary."""
    if kind == "mt_bench":
        found = {"mt_bench": _cell(summary["single"]["overall"]["score"], summary["single"]["overall"]["ci95"],
                                   summary["single"].get("items"))}
        for row in summary["single"]["rows"]:
            if row["name"].startswith("turn"):
                turn = row["name"].split()[1]
                items = {k: v for k, v in summary["single"].get("items", {}).items() if k.endswith(f":{turn}")}
                found[f"mt_bench_turn{turn}"] = _cell(row["score"], row["ci95"], items)
        if "pairwise" in summary:
            pair = summary["pairwise"]
            found[f"mt_bench_winrate_vs_{pair.get('against')}"] = _cell(pair["overall"]["score"],
                                                                         pair["overall"]["ci95"], pair.get("items"))
        return found
    if kind == "ifeval":
        return {f"ifeval_{name}": _cell(row["value"], row["ci95"], row.get("items"))
                for name, row in summary["metrics"].items()}
    if kind == "harness":
        return {name: _cell(row["value"], row["ci95"], row.get("items")) for name, row in summary["tasks"].items()}
    found = {"preference_loglik": _cell(summary["loglik"]["accuracy"], summary["loglik"]["ci95"],
                                        summary["loglik"].get("items"))}
    if "dpo_reward" in summary:
        reward = summary["dpo_reward"]
        found["preference_dpo_reward"] = _cell(reward["accuracy"], reward["ci95"], reward.get("items"))
    return found


def _cell(value, ci95, items) -> dict:
    return {"value": value, "ci95": ci95, "items": items or {}}


def collect(run_dir: Path, only: list[str] | None = None) -> dict[str, dict[str, dict]]:
    """{checkpoint: {metric: cell}} from every summary under run_dir/eval."""
    table: dict[str, dict[str, dict]] = {}
    for kind in KINDS:
        for path in sorted((Path(run_dir) / "eval" / kind).glob("*/summary.json")):
            checkpoint = path.parent.name
            if only and checkpoint not in only:
                continue
            try:
                summary = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
            table.setdefault(checkpoint, {}).update(metrics_of(kind, summary))
    return table


def compare(run_dir: Path, only: list[str] | None = None, out: Path | None = None,
            samples: int = 1000, seed: int = 0) -> dict:
    """The comparison as JSON (written to `out`, default run_dir/eval/comparison.json)."""
    table = collect(run_dir, only)
    if not table:
        raise DataError(f"{run_dir}/eval: no evaluation summaries (run `bezoar eval run` or the eval stage first)")
    checkpoints = sorted(table, key=checkpoint_order)
    if only:
        checkpoints = [c for c in only if c in table]
    metrics = list(dict.fromkeys(m for c in checkpoints for m in table[c]))
    baseline = checkpoints[0]
    rows = []
    for index, checkpoint in enumerate(checkpoints):
        row = {"checkpoint": checkpoint, "metrics": {}}
        for metric in metrics:
            cell = table[checkpoint].get(metric)
            if cell is None:
                continue
            entry = {"value": cell["value"], "ci95": cell["ci95"], "n": len(cell["items"]) or None}
            if index > 0:
                entry["delta_vs_" + baseline] = _delta(cell, table[baseline].get(metric), samples, seed)
                previous = checkpoints[index - 1]
                entry["delta_vs_previous"] = _delta(cell, table[previous].get(metric), samples, seed)
            row["metrics"][metric] = entry
        rows.append(row)
    result = {"run_dir": str(run_dir), "baseline": baseline, "checkpoints": checkpoints, "metrics": metrics,
              "rows": rows, "decoding": decoding(run_dir, checkpoints)}
    write_json(out or Path(run_dir) / "eval" / "comparison.json", result)
    return result


def decoding(run_dir: Path, checkpoints: list[str]) -> dict:
    """How the compared answers were decoded: {"mode", "dtype"} when every checkpoint's evaluations agree
    (a comparison's deltas mean something only then), else {"mixed": {checkpoint: [mode/dtype, ...]}}.
    Summaries written before the mode was recorded count as deterministic fp32, the only mode then; remote
    models decode as their server decides and are left out."""
    found: dict[str, set[tuple[str, str]]] = {}
    for kind in KINDS:
        for checkpoint in checkpoints:
            path = Path(run_dir) / "eval" / kind / checkpoint / "summary.json"
            seen = json.loads(path.read_text(encoding="utf-8")).get("decoding", LEGACY) if path.exists() else None
            if seen:  # None: not evaluated, or a remote model (its server decides how it decodes)
                found.setdefault(checkpoint, set()).add((seen["mode"], seen["dtype"]))
    modes = set().union(*found.values())
    if not modes:
        return {}
    if len(modes) == 1:
        mode, dtype = modes.pop()
        return {"mode": mode, "dtype": dtype}
    log.warning("the checkpoints were evaluated in different decoding modes (%s): run the eval again in one mode "
                "(bezoar eval run --deterministic, or without it) for deltas that compare like with like",
                {c: sorted(m) for c, m in found.items()})
    return {"mixed": {c: sorted(f"{m}/{d}" for m, d in found[c]) for c in found}}


def describe_decoding(decoding: dict) -> str:
    """How the compared answers were decoded, in words for `bezoar compare` and the report."""
    if "mixed" in decoding:
        return "decoded in different modes per checkpoint: " + "; ".join(
            f"{c} {', '.join(m)}" for c, m in decoding["mixed"].items()) + " (deltas do not compare like with like)"
    if not decoding:
        return "decoded by remote models"
    return f"decoded in {decoding['mode']} mode ({decoding['dtype']}), every checkpoint alike"


LEGACY = {"mode": "deterministic", "dtype": "float32"}


def _delta(cell: dict, before: dict | None, samples: int, seed: int) -> dict | None:
    if before is None or cell["value"] is None or before["value"] is None:
        return None
    paired = paired_bootstrap_delta(cell["items"], before["items"], samples, seed)
    if paired is not None:
        return paired
    return {"delta": cell["value"] - before["value"], "ci95": None, "n": None}
