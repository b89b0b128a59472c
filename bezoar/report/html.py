"""`bezoar report`: one self-contained report/index.html a team can read (the `report` step writes it).

Plain HTML with figures embedded as data URIs: it opens from disk, attaches to an e-mail, and needs
no server. A tiny script marks on <body> whether every figure decoded, which the browser test reads.
The page is the jinja2 template `index.html` beside this module, autoescaped; the functions here only
gather and format what it shows.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from bezoar.evaluate.compare import describe_decoding
from bezoar.records import Record, write_text
from bezoar.report import figures
from bezoar.report.cards import write_cards
from bezoar.report.run_data import RunData, load


@dataclass(frozen=True)
class Cell:
    """A table cell as the template shows it: `kind` picks the markup (text, num, sample, verdict,
    metric); `text` and the metric's parts are already formatted."""

    text: str
    kind: str = "text"
    ci95: tuple[str, str] | None = None
    delta: str | None = None
    baseline: str = ""


def cell(value: object) -> Cell:
    if isinstance(value, Cell):
        return value
    if isinstance(value, float):
        return Cell(f"{value:.3g}", "num")
    if isinstance(value, int):
        return Cell(f"{value:,}", "num")
    return Cell(str(value))


def table(header: list[str], rows: list[list[object]]) -> dict:
    return {"header": header, "rows": [[cell(v) for v in row] for row in rows]}


def figure(uri: str, alt: str) -> dict:
    return {"uri": uri, "alt": alt}


def section_stages(data: RunData) -> dict:
    rows, total, failed = [], 0.0, 0
    for name, stage in data.manifest.get("steps", {}).items():
        usage = stage.get("usage", {})
        cost = sum(u.get("cost_usd", 0) for u in usage.values())
        total += cost
        calls = "; ".join(f"{r}: {u['calls']} calls, {u['cache_hits']} cached, "
                          f"{u['prompt_tokens'] + u['completion_tokens']:,} tokens" for r, u in usage.items())
        failed += stage.get("failed_items") or 0
        rows.append([name, stage.get("status", "?"), stage.get("failed_items") or 0, float(stage.get("wall_s") or 0),
                     calls or "-", f"${cost:.2f}"])
    return {"table": table(["step", "status", "failed items", "wall s", "calls by role", "cost"], rows),
            "total": f"{total:.2f}", "failed": failed}


def section_funnel(data: RunData) -> dict | None:
    funnel = data.funnel()
    if not funnel:
        return None
    reasons = sorted({r for c in funnel.values() for r in c if r not in ("generated", "kept")})
    rows = [[m, funnel[m].get("generated", 0)] + [funnel[m].get(r, 0) for r in reasons] + [funnel[m].get("kept", 0)]
            for m in sorted(funnel)]
    return {"figure": figure(figures.funnel(funnel), "data funnel"),
            "table": table(["method", "generated", *reasons, "kept"], rows)}


def _sample_rows(records: list[Record], count: int, rng: random.Random, with_reasons: bool) -> list[list]:
    chosen = rng.sample(records, min(count, len(records)))
    rows = []
    for r in chosen:
        reasons = ", ".join(map(str, r.meta.details.get("filter", {}).get("reasons", []))) if with_reasons else \
            str((r.meta.judge or {}).get("rating", ""))
        rows.append([r.meta.method, Cell(r.instruction[:600], "sample"), Cell(r.response[:600], "sample"), reasons])
    return rows


def section_samples(data: RunData) -> dict:
    rng = random.Random(0)
    kept = [r for records in data.kept.values() for r in records]
    found: dict[str, Any] = {}
    if kept:
        found["kept"] = table(["method", "instruction", "response", "judge rating"], _sample_rows(kept, 6, rng, False))
    if data.rejected:
        found["rejected"] = table(["method", "instruction", "response", "reasons"],
                                  _sample_rows(data.rejected, 6, rng, True))
    if kept or data.rejected:
        found["figure"] = figure(figures.lengths(kept, data.rejected), "length histograms")
    return found


def section_lineage(data: RunData) -> dict | None:
    lineage = data.lineage()
    if not lineage.sources:
        return None
    rows = [[s.kind, s.name, s.licence, Cell(s.commercial_use.value, "verdict")]
            for s in sorted(lineage.sources, key=lambda s: (s.kind, s.name))]
    return {"verdict": lineage.commercial_use.value, "table": table(["kind", "name", "licence", "commercial use"], rows)}


def section_training(data: RunData) -> dict | None:
    if not data.training:
        return None
    dpo = [(checkpoint, figure(figures.dpo_rewards(rows), "DPO rewards")) for checkpoint, rows in data.training.items()
           if any("rewards/accuracies" in r or "eval_rewards/accuracies" in r for r in rows)]
    grpo = [(checkpoint, figure(figures.grpo_rewards(rows), "GRPO rewards")) for checkpoint, rows in data.training.items()
            if any("reward" in r for r in rows)]
    return {"losses": figure(figures.losses(data.training), "loss curves"), "dpo": dpo, "grpo": grpo}


def section_evaluation(data: RunData) -> dict:
    found: dict[str, Any] = {"figures": []}
    if data.mt_bench:
        found["figures"].append(figure(figures.mt_bench_categories(data.mt_bench), "MT-Bench by category"))
    if data.ifeval:
        found["figures"].append(figure(figures.ifeval_types(data.ifeval), "IFEval by instruction type"))
    if data.comparison:
        comparison = data.comparison
        rows = []
        for row in comparison["rows"]:
            cells: list[object] = [row["checkpoint"]]
            for metric in comparison["metrics"]:
                entry = row["metrics"].get(metric)
                cells.append(_metric_cell(entry, comparison["baseline"]) if entry else "-")
            rows.append(cells)
        found["table"] = table(["checkpoint"] + comparison["metrics"], rows)
        if "decoding" in comparison:  # fast or deterministic: part of what the numbers mean
            found["decoding"] = describe_decoding(comparison["decoding"])
    return found


def _metric_cell(entry: dict, baseline: str) -> Cell:
    value, ci95, delta = entry["value"], entry.get("ci95"), entry.get(f"delta_vs_{baseline}")
    return Cell("-" if value is None else f"{value:.3f}", "metric",
                ci95=(f"{ci95[0]:.3f}", f"{ci95[1]:.3f}") if ci95 else None,
                delta=f"{delta['delta']:+.3f}" if delta and delta.get("delta") is not None else None,
                baseline=baseline)


@lru_cache(maxsize=1)
def _template():
    from jinja2 import Environment, FileSystemLoader

    return Environment(loader=FileSystemLoader(Path(__file__).parent), autoescape=True).get_template("index.html")


def render(data: RunData) -> str:
    return _template().render(
        name=data.manifest.get("run_name", data.run_dir.name), recipe_path=data.manifest.get("recipe_path", ""),
        versions=", ".join(f"{k} {v}" for k, v in data.manifest.get("versions", {}).items()),
        stages=section_stages(data), funnel=section_funnel(data), samples=section_samples(data),
        lineage=section_lineage(data), training=section_training(data), evaluation=section_evaluation(data))


def write_report(run_dir: Path, out_dir: Path | None = None) -> Path:
    """Write OUT/index.html (atomically) and the data set and model cards in OUT/cards (OUT: the report
    step's folder, RUN_DIR/report by default); returns the page's path."""

    out_dir = Path(out_dir or Path(run_dir) / "report")
    data = load(Path(run_dir))
    write_cards(data, out_dir / "cards")
    out = out_dir / "index.html"
    write_text(out, render(data))
    return out
