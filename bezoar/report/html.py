"""`bezoar report`: one self-contained report/index.html a team can read (and the stage that writes it).

Plain HTML with figures embedded as data URIs: it opens from disk, attaches to an e-mail, and needs
no server. A tiny script marks on <body> whether every figure decoded, which the browser test reads.
"""
from __future__ import annotations

import html
import random
from pathlib import Path

from bezoar.config import Recipe
from bezoar.records import Record
from bezoar.report import figures
from bezoar.report.run_data import RunData, load

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{margin-bottom:0}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4}.num{text-align:right}.yes{color:#070}.no{color:#b00}.unknown{color:#a60}
img{max-width:100%}.sample{font-size:.85em;white-space:pre-wrap;max-width:480px}.muted{color:#777}
"""
CHECK_FIGURES = """<script>
window.addEventListener('load', () => {
  const images = Array.from(document.querySelectorAll('img.figure'));
  const broken = images.filter(img => !(img.complete && img.naturalWidth > 0)).length;
  document.body.dataset.figures = broken ? 'broken ' + broken : 'ok ' + images.length;
});
</script>"""


def esc(value: object) -> str:
    return html.escape(str(value))


def table(header: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f'<td class="num">{value:.3g}</td>'
    if isinstance(value, int):
        return f'<td class="num">{value:,}</td>'
    return f"<td>{value}</td>" if isinstance(value, Raw) else f"<td>{esc(value)}</td>"


class Raw(str):
    """Already-escaped HTML for a table cell."""


def figure(uri: str, alt: str) -> str:
    return f'<img class="figure" alt="{esc(alt)}" src="{uri}">'


def section_stages(data: RunData) -> str:
    rows, total, failed = [], 0.0, 0
    for name, stage in data.manifest.get("stages", {}).items():
        usage = stage.get("usage", {})
        cost = sum(u.get("cost_usd", 0) for u in usage.values())
        total += cost
        calls = "; ".join(f"{r}: {u['calls']} calls, {u['cache_hits']} cached, "
                          f"{u['prompt_tokens'] + u['completion_tokens']:,} tokens" for r, u in usage.items())
        failed += stage.get("failed_items") or 0
        rows.append([name, stage.get("status", "?"), stage.get("failed_items") or 0, float(stage.get("wall_s") or 0),
                     calls or "-", f"${cost:.2f}"])
    if not rows:
        return "<p class=muted>No manifest: this directory was not made by <code>bezoar run</code>.</p>"
    note = (f"<p>{failed} failed item(s): each stage's <code>failed.jsonl</code> holds them with the server's reason; "
            "<code>bezoar run RECIPE --retry-failed</code> asks them again.</p>") if failed else ""
    return (table(["stage", "status", "failed items", "wall s", "calls by role", "cost"], rows)
            + f"<p>Estimated API cost: ${total:.2f}</p>" + note)


def section_funnel(data: RunData) -> str:
    funnel = data.funnel()
    if not funnel:
        return "<p class=muted>No generated or filtered data yet.</p>"
    reasons = sorted({r for c in funnel.values() for r in c if r not in ("generated", "kept")})
    rows = [[m, funnel[m].get("generated", 0)] + [funnel[m].get(r, 0) for r in reasons] + [funnel[m].get("kept", 0)]
            for m in sorted(funnel)]
    return figure(figures.funnel(funnel), "data funnel") + table(["method", "generated", *reasons, "kept"], rows)


def _sample_rows(records: list[Record], count: int, rng: random.Random, with_reasons: bool) -> list[list]:
    chosen = rng.sample(records, min(count, len(records)))
    rows = []
    for r in chosen:
        reasons = ", ".join(map(str, r.meta.details.get("filter", {}).get("reasons", []))) if with_reasons else \
            str((r.meta.judge or {}).get("rating", ""))
        rows.append([r.meta.method, Raw(f'<div class=sample>{esc(r.instruction[:600])}</div>'),
                     Raw(f'<div class=sample>{esc(r.response[:600])}</div>'), reasons])
    return rows


def section_samples(data: RunData) -> str:
    rng = random.Random(0)
    kept = [r for records in data.kept.values() for r in records]
    parts = []
    if kept:
        parts.append("<h3>Kept</h3>" + table(["method", "instruction", "response", "judge rating"],
                                             _sample_rows(kept, 6, rng, False)))
    if data.rejected:
        parts.append("<h3>Rejected</h3>" + table(["method", "instruction", "response", "reasons"],
                                                 _sample_rows(data.rejected, 6, rng, True)))
    if kept or data.rejected:
        parts.append(figure(figures.lengths(kept, data.rejected), "length histograms"))
    return "".join(parts) or "<p class=muted>No records yet.</p>"


def section_lineage(data: RunData) -> str:
    lineage = data.lineage()
    if not lineage.sources:
        return "<p class=muted>No licence information yet.</p>"
    rows = [[s.kind, s.name, s.licence, Raw(f'<span class="{s.commercial_use.value}">{s.commercial_use.value}</span>')]
            for s in sorted(lineage.sources, key=lambda s: (s.kind, s.name))]
    verdict = lineage.commercial_use.value
    return (f'<p>Commercial use of the final model: <b class="{verdict}">{verdict}</b> '
            "(every seed, teacher, base model and data set below must allow it).</p>"
            + table(["kind", "name", "licence", "commercial use"], rows))


def section_training(data: RunData) -> str:
    if not data.training:
        return "<p class=muted>No training metrics yet.</p>"
    parts = [figure(figures.losses(data.training), "loss curves")]
    for checkpoint, rows in data.training.items():
        if any("rewards/accuracies" in r or "eval_rewards/accuracies" in r for r in rows):
            parts.append(f"<h3>{esc(checkpoint)}</h3>" + figure(figures.dpo_rewards(rows), "DPO rewards"))
    return "".join(parts)


def section_evaluation(data: RunData) -> str:
    parts = []
    if data.mt_bench:
        parts.append(figure(figures.mt_bench_categories(data.mt_bench), "MT-Bench by category"))
    if data.ifeval:
        parts.append(figure(figures.ifeval_types(data.ifeval), "IFEval by instruction type"))
    if data.comparison:
        comparison = data.comparison
        header = ["checkpoint"] + comparison["metrics"]
        rows = []
        for row in comparison["rows"]:
            cells = [row["checkpoint"]]
            for metric in comparison["metrics"]:
                entry = row["metrics"].get(metric)
                cells.append(Raw(_metric_cell(entry, comparison["baseline"])) if entry else "-")
            rows.append(cells)
        parts.append(table(header, rows))
    return "".join(parts) or "<p class=muted>No evaluation yet.</p>"


def _metric_cell(entry: dict, baseline: str) -> str:
    value = entry["value"]
    text = "-" if value is None else f"{value:.3f}"
    if entry.get("ci95"):
        low, high = entry["ci95"]
        text += f' <span class=muted>[{low:.3f}, {high:.3f}]</span>'
    delta = entry.get(f"delta_vs_{baseline}")
    if delta and delta.get("delta") is not None:
        text += f"<br><small>Δ {delta['delta']:+.3f} vs {esc(baseline)}</small>"
    return text


def render(data: RunData) -> str:
    name = data.manifest.get("run_name", data.run_dir.name)
    versions = ", ".join(f"{k} {v}" for k, v in data.manifest.get("versions", {}).items())
    sections = [("Stages: time, calls and cost", section_stages), ("Data funnel", section_funnel),
                ("Sample records", section_samples), ("Licence lineage", section_lineage),
                ("Training", section_training), ("Evaluation", section_evaluation)]
    body = "".join(f"<h2>{esc(title)}</h2>{build(data)}" for title, build in sections)
    return (f"<!doctype html><html><head><meta charset=utf-8><title>bezoar run {esc(name)}</title>"
            f"<style>{STYLE}</style></head><body><h1>bezoar run: {esc(name)}</h1>"
            f"<p class=muted>{esc(data.manifest.get('recipe_path', ''))} · {esc(versions)}</p>{body}"
            f"{CHECK_FIGURES}</body></html>")


def write_report(run_dir: Path) -> Path:
    """Write run_dir/report/index.html (atomically) and the data set and model cards; returns the path."""
    from bezoar.records import write_text
    from bezoar.report.cards import write_cards

    data = load(Path(run_dir))
    write_cards(data)
    out = Path(run_dir) / "report" / "index.html"
    write_text(out, render(data))
    return out


def run_report(recipe: Recipe, run_dir: Path, models) -> dict:
    """The pipeline's last stage."""
    return {"report": str(write_report(run_dir))}
