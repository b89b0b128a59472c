"""One table of every checkpoint of a run across every metric, with intervals and deltas.

Rows are checkpoints in training order (base, then as the steps trained them); columns are the metrics
of the evaluation summaries an eval step wrote and recorded in its result (`summaries`: "<kind>/<checkpoint>"
-> summary.json), never a scan of folders. A delta is against the base (and, in the JSON, against the
previous checkpoint), computed over the items both scored (paired bootstrap), so its interval reflects
the change rather than the spread of the items.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

from bezoar.errors import DataError
from bezoar.handoff import done_results, resolve
from bezoar.intervals import paired_bootstrap_delta
from bezoar.records import write_json

log = logging.getLogger(__name__)

KINDS = ("mt_bench", "harness", "preference", "ifeval")


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


def collect(summaries: Mapping[str, str | Path]) -> dict[str, dict[str, dict]]:
    """{checkpoint: {metric: cell}} from the named summaries ("<kind>/<checkpoint>" -> summary.json)."""
    table: dict[str, dict[str, dict]] = {}
    for name, path in summaries.items():
        kind, _, checkpoint = name.partition("/")
        if not Path(path).is_file():
            continue  # an evaluation cut short: its summary is written last
        try:
            summary = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
        table.setdefault(checkpoint, {}).update(metrics_of(kind, summary))
    return table


def of_run(run_dir: Path) -> tuple[dict[str, str], list[str]]:
    """(summaries, checkpoint order) of every done eval step of a run, later steps' evaluations winning."""
    summaries: dict[str, str] = {}
    order: list[str] = []
    for result in done_results(run_dir).values():
        for name, path in (result.get("details") or {}).get("summaries", {}).items():
            summaries[name] = str(resolve(run_dir, path))
        order += [c for c in (result.get("details") or {}).get("checkpoints", {}) if c not in order]
    if not summaries:
        raise DataError(f"{run_dir}: no done eval step has recorded evaluations (run the recipe's eval step first)")
    return summaries, order


def compare(summaries: Mapping[str, str | Path], order: list[str], out: Path, samples: int = 1000,
            seed: int = 0) -> dict:
    """The comparison of the checkpoints in `order` as JSON, also written to `out`."""
    table = collect(summaries)
    checkpoints = [c for c in order if c in table]
    if not checkpoints:
        raise DataError(f"{out.parent}: no evaluation summaries for {order}")
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
    result = {"baseline": baseline, "checkpoints": checkpoints, "metrics": metrics, "rows": rows,
              "decoding": decoding(summaries, checkpoints)}
    write_json(out, result)
    return result


def decoding(summaries: Mapping[str, str | Path], checkpoints: list[str]) -> dict:
    """How the compared answers were decoded: {"mode", "dtype"} when every checkpoint's evaluations agree
    (a comparison's deltas mean something only then), else {"mixed": {checkpoint: [mode/dtype, ...]}}.
    Summaries written before the mode was recorded count as deterministic fp32, the only mode then; remote
    models decode as their server decides and are left out. The eval step re-uses an fp32 summary in either
    mode (bezoar.evaluate.runner), so fp32 counts as deterministic whichever mode wrote it."""
    found: dict[str, set[tuple[str, str]]] = {}
    for name, path in summaries.items():
        checkpoint = name.partition("/")[2]
        if checkpoint not in checkpoints or not Path(path).is_file():
            continue
        seen = json.loads(Path(path).read_text(encoding="utf-8")).get("decoding", LEGACY)
        if seen:  # None: a remote model (its server decides how it decodes)
            # fp32 decodes batch-invariantly in either mode: a fast-mode fp32 answer is the deterministic one.
            mode = "deterministic" if seen["dtype"] == "float32" else seen["mode"]
            found.setdefault(checkpoint, set()).add((mode, seen["dtype"]))
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
