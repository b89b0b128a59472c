"""Everything the report shows, read from a run directory's plain files (each part optional).

    manifest.json                       stages, times, calls, cost, versions, the recipe; and what each
                                        stage handed on (bezoar.stage_outputs), found by name:
      generate: <method>                what the teacher made
      filter: <method>, rejected        what survived; what did not, with every reason
      sft, sft_hh, dpo: checkpoints     each checkpoint's metrics.jsonl (training and validation
                                        loss, DPO rewards)
    eval/comparison.json, eval/mt_bench/<checkpoint>/summary.json
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from bezoar.generate.config import METHODS
from bezoar.records import Lineage, Record, read_jsonl
from bezoar.stage_outputs import checkpoints, outputs


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
        from bezoar.licences import dataset_licence, model_licence

        combined = Lineage()
        for records in self.kept.values():
            for record in records:
                combined = combined.merged(record.licence) if record.licence.sources else combined
        recipe = self.manifest.get("recipe", {})
        student = recipe.get("models", {}).get("student", {})
        if student:
            spec = student.get("spec", "local")
            combined = combined.merged(Lineage.of([(spec, "base", model_licence(spec, student.get("licence")))]))
        hh = (recipe.get("sft_hh", {}).get("data") or {}).get("path")
        if hh:
            name, licence = dataset_licence(hh)
            combined = combined.merged(Lineage.of([(name, "data", licence)]))
        return combined


def _records(path: Path) -> list[Record]:
    return list(read_jsonl(path, Record, skip_bad=True)) if path.exists() else []


def load(run_dir: Path) -> RunData:
    run_dir = Path(run_dir)
    data = RunData(run_dir)
    manifest = run_dir / "manifest.json"
    if manifest.exists():
        from bezoar.run_state import read_manifest

        data.manifest = read_manifest(manifest)  # a corrupt one is one line naming it, not a traceback
    # What the stages handed on (the manifest's record of them), by the names they gave it.
    generated, filtered = outputs(run_dir, "generate"), outputs(run_dir, "filter")
    for method in METHODS:
        if method in generated:
            data.generated[method] = _records(generated[method])
        if method in filtered:
            data.kept[method] = _records(filtered[method])
    if "rejected" in filtered:
        data.rejected = _records(filtered["rejected"])
    data.checkpoints = dict(checkpoints(run_dir))
    for name, directory in data.checkpoints.items():
        if (directory / "metrics.jsonl").exists():  # the training log in every checkpoint's folder
            data.training[name] = list(read_jsonl(directory / "metrics.jsonl", skip_bad=True))
    comparison = run_dir / "eval" / "comparison.json"
    if comparison.exists():
        data.comparison = json.loads(comparison.read_text())
    for path in sorted((run_dir / "eval" / "mt_bench").glob("*/summary.json")):
        data.mt_bench[path.parent.name] = json.loads(path.read_text())
    for path in sorted((run_dir / "eval" / "ifeval").glob("*/summary.json")):
        data.ifeval[path.parent.name] = json.loads(path.read_text())
    return data
