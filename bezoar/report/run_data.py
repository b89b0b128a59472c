"""Everything the report shows, read from a run directory's manifest and the files its steps handed on.

    manifest.json      steps, times, calls, cost, versions, the recipe, and each done step's result:
      outputs          records per method (generate: what the teacher made; filter: what survived, and
                       `rejected`, with every reason), `comparison` (eval)
      checkpoints      each checkpoint's folder, whose metrics.jsonl has its training and validation
                       loss (DPO rewards too)
      lineage          data sets and models a step brought in (HH-RLHF, the student)
      details          an eval step's summaries (MT-Bench and IFEval by checkpoint)
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from bezoar.generate.config import METHODS
from bezoar.handoff import resolve
from bezoar.licences import model_licence
from bezoar.records import Lineage, Record, read_jsonl
from bezoar.run_state import read_manifest


@dataclass
class RunData:
    run_dir: Path
    manifest: dict = field(default_factory=dict)
    generated: dict[str, list[Record]] = field(default_factory=dict)
    kept: dict[str, list[Record]] = field(default_factory=dict)
    rejected: list[Record] = field(default_factory=list)
    training: dict[str, list[dict]] = field(default_factory=dict)
    checkpoints: dict[str, Path] = field(default_factory=dict)
    """Checkpoint name -> its folder (where its model card goes)."""
    comparison: dict | None = None
    mt_bench: dict[str, dict] = field(default_factory=dict)
    ifeval: dict[str, dict] = field(default_factory=dict)
    step_of: dict[str, str] = field(default_factory=dict)
    """Checkpoint name -> the step that trained it."""
    brought_in: list[dict] = field(default_factory=list)
    """Data sets and models steps brought in (their results' `lineage`)."""

    def funnel(self) -> dict[str, Counter]:
        """Per method: generated, each rejection reason (first reason of each record), kept."""
        table: dict[str, Counter] = defaultdict(Counter)
        for method, records in self.generated.items():
            table[method]["generated"] = len(records)
        for record in self.rejected:
            reasons = record.meta.details.get("filter", {}).get("reasons") or ["rejected"]
            table[record.meta.method][str(reasons[0])] += 1
        for method, records in self.kept.items():
            table[method]["kept"] = len(records)
        return dict(table)

    def lineage(self) -> Lineage:
        """Every seed, teacher and data set that touched the final model, with one verdict."""
        combined = Lineage()
        for records in self.kept.values():
            for record in records:
                combined = combined.merged(record.licence) if record.licence.sources else combined
        student = self.manifest.get("recipe", {}).get("models", {}).get("student", {})
        if student:
            spec = student.get("spec", "local")
            combined = combined.merged(Lineage.of([(spec, "base", model_licence(spec, student.get("licence")))]))
        brought = [(s["name"], s["kind"], s["licence"]) for s in self.brought_in]
        return combined.merged(Lineage.of(brought)) if brought else combined


def _records(path: Path) -> list[Record]:
    return list(read_jsonl(path, Record, skip_bad=True)) if path.exists() else []


def load(run_dir: Path) -> RunData:
    run_dir = Path(run_dir)
    data = RunData(run_dir)
    if (run_dir / "manifest.json").exists():
        data.manifest = read_manifest(run_dir / "manifest.json")  # a corrupt one is one line naming it
    for name, entry in data.manifest.get("steps", {}).items():
        if entry.get("status") == "done":
            _add_result(data, entry.get("result") or {})
            data.step_of.update({c: name for c in (entry.get("result") or {}).get("checkpoints") or {}})
    for name, directory in data.checkpoints.items():
        if (directory / "metrics.jsonl").exists():  # the training log in every checkpoint's folder
            data.training[name] = list(read_jsonl(directory / "metrics.jsonl", skip_bad=True))
    return data


def _add_result(data: RunData, result: dict) -> None:
    """What one done step handed on, by the names it gave it (a later step's sets replace an earlier one's)."""
    outputs = {name: resolve(data.run_dir, path) for name, path in (result.get("outputs") or {}).items()}
    funnel = {"generated": data.generated, "kept": data.kept}.get(result.get("funnel") or "")
    for method in METHODS:
        if method in outputs and funnel is not None:
            funnel[method] = _records(outputs[method])
    if "rejected" in outputs:
        data.rejected = _records(outputs["rejected"])
    for name, path in (result.get("checkpoints") or {}).items():
        data.checkpoints[name] = resolve(data.run_dir, path)
    data.brought_in += result.get("lineage") or []
    if "comparison" in outputs and outputs["comparison"].exists():
        data.comparison = json.loads(outputs["comparison"].read_text(encoding="utf-8"))
    for name, path in ((result.get("details") or {}).get("summaries") or {}).items():
        kind_, _, checkpoint = name.partition("/")
        found = resolve(data.run_dir, path)
        if kind_ in ("mt_bench", "ifeval") and found.exists():
            getattr(data, kind_)[checkpoint] = json.loads(found.read_text(encoding="utf-8"))
