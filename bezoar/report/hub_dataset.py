"""A run's data as a Hugging Face dataset folder: `datasets.load_dataset(DIR, CONFIG)` loads it offline,
`push_to_hub` ships it, and TRL trains from it as it is.

    DIR/README.md                           dataset card: YAML metadata (licence, configs and splits,
                                            size category, task), the run's lineage, funnel, contamination
    DIR/data/<method>/train-00000-of-00001.parquet    each kept set: `messages` (TRL's conversational
                                            format) + id, method, teacher, seed_ids, judge_rating, commercial_use
    DIR/data/rejected/train-...parquet      every rejected record: `messages`, step, reasons, evidence (JSON)
    DIR/data/preferences/train-...parquet   the preference pairs: `prompt`, `chosen`, `rejected` (TRL's
                                            conversational preference format) + meta (JSON)

What the run made is found through ONE function, `run_datasets`, which reads the done steps' results in
the manifest (bezoar.handoff): the only place that knows where a run keeps its data.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from bezoar.errors import DataError
from bezoar.generate.config import METHODS
from bezoar.handoff import done_results, resolve
from bezoar.records import Lineage, PreferencePair, Record, read_jsonl, write_text
from bezoar.report.cards import licence_id, licence_lines
from bezoar.report.run_data import load

SPLIT_FILE = "train-00000-of-00001.parquet"


@dataclass
class RunDatasets:
    """What a run hands on that becomes a dataset: config name → JSONL, and the filter's summary."""

    kept: dict[str, Path]
    rejected: Path | None
    preferences: Path | None
    filter_summary: dict


def run_datasets(run_dir: Path) -> RunDatasets:
    """The run's kept sets (the record sets of the last done step whose result is in the funnel's `kept`
    place, by method), its rejected records, and the last preference pairs a done step handed on."""
    found = RunDatasets({}, None, None, {})
    for result in done_results(run_dir).values():
        outputs = {name: resolve(run_dir, path) for name, path in (result.get("outputs") or {}).items()}
        if result.get("funnel") == "kept":
            found.kept = {m: outputs[m] for m in METHODS if m in outputs}
            found.rejected, found.filter_summary = outputs.get("rejected"), result.get("details") or {}
        if "pairs" in outputs:
            found.preferences = outputs["pairs"]
    return found


def size_category(rows: int) -> str:
    """The Hub's `size_categories` bucket."""
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
              (10_000_000, "1M<n<10M")]
    return next((label for bound, label in bounds if rows < bound), "n>10M")


def _messages(messages) -> list[dict]:
    return [{"role": m.role, "content": m.content} for m in messages]


def kept_row(record: Record) -> dict:
    rating = (record.meta.judge or {}).get("rating")
    return {"messages": _messages(record.messages), "id": record.meta.id, "method": record.meta.method,
            "teacher": record.meta.teacher, "seed_ids": list(record.meta.seed_ids),
            "judge_rating": float(rating) if isinstance(rating, (int, float)) else None,
            "commercial_use": record.licence.commercial_use.value}


def rejected_row(record: Record) -> dict:
    decision = dict(record.meta.details.get("filter") or {})
    step, reasons = decision.pop("step", None), decision.pop("reasons", [])
    return {"messages": _messages(record.messages), "id": record.meta.id, "method": record.meta.method,
            "step": step, "reasons": [str(r) for r in reasons],
            "evidence": json.dumps(decision, ensure_ascii=False, default=str)}


def pair_row(pair: PreferencePair) -> dict:
    return {"prompt": _messages(pair.prompt), "chosen": _messages(pair.chosen), "rejected": _messages(pair.rejected),
            "meta": json.dumps(pair.meta, ensure_ascii=False, default=str)}


def write_parquet(path: Path, rows: list[dict]) -> None:
    """Atomically (temporary file + rename), so a killed export never leaves a torn parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        pq.write_table(pa.Table.from_pylist(rows), tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def export_dataset(run_dir: Path, out_dir: Path) -> dict:
    """Write every config's parquet and the card; returns {config: rows} and the card's path."""

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    found = run_datasets(run_dir)
    tables: dict[str, list[dict]] = {}
    lineage = Lineage()
    for name, path in found.kept.items():
        records = list(read_jsonl(path, Record))
        for record in records:
            lineage = lineage.merged(record.licence)
        tables[name] = [kept_row(r) for r in records]
    if found.rejected is not None:
        tables["rejected"] = [rejected_row(r) for r in read_jsonl(found.rejected, Record)]
    if found.preferences is not None:
        pairs = list(read_jsonl(found.preferences, PreferencePair))
        for pair in pairs:
            lineage = lineage.merged(pair.licence)
        tables["preferences"] = [pair_row(p) for p in pairs]
    tables = {name: rows for name, rows in tables.items() if rows}  # an empty parquet has no schema to load
    if not tables:
        raise DataError(f"{run_dir}: the run has handed on no records (run its filter or preferences stage first)")
    for name, rows in tables.items():
        write_parquet(out_dir / "data" / name / SPLIT_FILE, rows)
    summary = found.filter_summary
    card = out_dir / "README.md"
    write_text(card, dataset_card(load(run_dir), tables, lineage, summary, list(found.kept)))
    return {"configs": {name: len(rows) for name, rows in tables.items()}, "card": str(card), "out": str(out_dir)}


def dataset_card(data, tables: dict[str, list[dict]], lineage: Lineage, filter_summary: dict, kept: list[str]) -> str:

    first = next((n for n in tables if n in kept), next(iter(tables)))
    configs = [{"config_name": name, "data_files": [{"split": "train", "path": f"data/{name}/train-*"}],
                **({"default": True} if name == first else {})} for name in tables]
    kept_rows = sum(len(rows) for name, rows in tables.items() if name in kept) or sum(map(len, tables.values()))
    front = {"license": licence_id(lineage), "language": ["en"], "task_categories": ["text-generation"],
             "size_categories": [size_category(kept_rows)], "tags": ["synthetic", "bezoar", "sft", "dpo"],
             "configs": configs}
    run_name = data.manifest.get("run_name", data.run_dir.name)
    rows = "\n".join(f"| `{name}` | {len(tables[name])} | {_what(name, kept)} |" for name in tables)
    body = (f"# bezoar run `{run_name}`\n\nSynthetic instruction data made, filtered and paired by a bezoar run "
            f"(the OpenBezoar recipe, arXiv 2404.12195).\n\n| config | rows | what |\n|---|---|---|\n{rows}\n\n"
            "```python\nfrom datasets import load_dataset\n"
            f"sft = load_dataset(\"PATH_OR_REPO\", \"{first}\", split=\"train\")   # TRL SFTTrainer reads `messages`\n"
            + ("pairs = load_dataset(\"PATH_OR_REPO\", \"preferences\", split=\"train\")  # TRL DPOTrainer: prompt/chosen/rejected\n"
               if "preferences" in tables else "") + "```\n\n"
            + _lineage_section(data) + _funnel_section(data) + _contamination_section(filter_summary)
            + "\n## Licence lineage\n\n" + licence_lines(lineage))
    return f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n\n{body}"


def _what(name: str, kept: list[str]) -> str:
    if name in kept:
        return f"records kept by the filter from the `{name}` scheme (chat `messages`)"
    if name == "rejected":
        return "every record the filter rejected: its step, reasons and evidence (JSON)"
    return "preference pairs (`prompt`, `chosen`, `rejected`)"


def _lineage_section(data) -> str:
    recipe = data.manifest.get("recipe", {})
    models = {role: (cfg or {}).get("spec") for role, cfg in recipe.get("models", {}).items()}
    stages = [(name, entry.get("status"), (entry.get("inputs") or {})) for name, entry in data.manifest.get("stages", {}).items()]
    lines = "\n".join(f"  - `{name}`: {status}" for name, status, _ in stages)
    return (f"## How it was made\n\n- Models: {', '.join(f'{r} `{s}`' for r, s in models.items() if s) or 'not recorded'}\n"
            f"- bezoar version: {data.manifest.get('versions', {}).get('bezoar', 'not recorded')}\n"
            f"- Stages:\n{lines or '  not recorded'}\n\n")


def _funnel_section(data) -> str:
    funnel = data.funnel()
    if not funnel:
        return ""
    columns = list(dict.fromkeys(c for counts in funnel.values() for c in counts))
    head = "| method | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns) + "\n"
    rows = "\n".join(f"| {m} | " + " | ".join(str(c.get(k, 0)) for k in columns) + " |" for m, c in funnel.items())
    return "## Funnel (generated → each rejection reason → kept)\n\n" + head + rows + "\n\n"


def _contamination_section(summary: dict) -> str:
    found = summary.get("contamination") or {}
    if not found.get("checked"):
        return "## Contamination\n\nNot checked against evaluation sets in this run.\n\n"
    overlap = "\n".join(f"| {s} | {o['items']} | {o['matched']} | {o['share']:.2%} |"
                        for s, o in (found.get("overlap_by_eval_set") or {}).items())
    layers = ", ".join(f"{layer} {n}" for layer, n in (found.get("layers") or {}).items()) or "none"
    return (f"## Contamination\n\nChecked against {found.get('eval_items')} items of "
            f"{', '.join(found.get('eval_sets') or []) or 'the evaluation sets'}; "
            f"{found.get('contaminated_records', len(found.get('contaminated') or []))} records removed "
            f"(records matched per layer: {layers}).\n\n"
            + (f"| eval set | items | items matched | share |\n|---|---|---|---|\n{overlap}\n\n" if overlap else ""))
