"""A run's checkpoints as Hugging Face model folders: the LoRA adapter (what `peft` loads and the Hub
shows as an adapter of `base_model`), optionally the merged weights, and a card with the run's
comparison table. `write_hub_folder` puts the dataset and the models side by side.

    OUT/models/<checkpoint>/README.md      card: YAML (library_name peft, base_model, licence, tags)
    OUT/models/<checkpoint>/adapter_*      adapter_config.json, adapter_model.safetensors, tokenizer files
    OUT/models/<checkpoint>/merged/        with `merged`: the adapter merged into its base (`bezoar export`)
    OUT/dataset/                           bezoar.report.hub_dataset
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from bezoar.errors import DataError
from bezoar.records import write_text
from bezoar.report.cards import licence_lines, model_card
from bezoar.report.hub_dataset import export_dataset
from bezoar.report.run_data import load
from bezoar.train.export import export

EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt",
                 "added_tokens.json", "generation_config.json")


def base_model_id(spec: str) -> str:
    """The Hub id a card's `base_model` names: the embedded model's, a `local:ORG/NAME` hub id, else the spec."""
    name = spec.split(":", 1)[1] if spec.startswith("local:") else spec
    if spec.strip() in ("local", "local:", "embedded") or "smollm2-135m" in name.lower():
        return EMBEDDED_HUB_ID
    if spec.startswith("local:") and name.count("/") == 1 and not Path(name).exists():
        return name
    return spec


def comparison_table(comparison: dict | None, highlight: str) -> str:
    """Every checkpoint's metrics (bold: this one), from eval/comparison.json."""
    if not comparison or not comparison.get("rows"):
        return "Not evaluated yet.\n"
    metrics = comparison.get("metrics") or []
    head = "| checkpoint | " + " | ".join(metrics) + " |\n|---|" + "---|" * len(metrics) + "\n"

    def cell(row: dict, metric: str) -> str:
        value = (row["metrics"].get(metric) or {}).get("value")
        return "" if value is None else f"{value:.3f}"

    rows = "\n".join((f"| **{r['checkpoint']}** | " if r["checkpoint"] == highlight else f"| {r['checkpoint']} | ")
                     + " | ".join(cell(r, m) for m in metrics) + " |" for r in comparison["rows"])
    return head + rows + "\n"


def model_folder(checkpoint: str, adapter_dir: Path, out_dir: Path, data, merged: bool = False) -> Path:
    """Copy one checkpoint's adapter into `out_dir`, write its card, and merge it when asked."""

    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES:
        if (adapter_dir / name).exists():
            shutil.copy2(adapter_dir / name, out_dir / name)
    student = data.manifest.get("recipe", {}).get("models", {}).get("student", {}).get("spec", "local")
    front, _ = model_card(checkpoint, data)
    lineage = data.lineage()
    front = {**front, "base_model": base_model_id(student), "license": _model_licence(lineage),
             "pipeline_tag": "text-generation"}
    body = (f"# {checkpoint}\n\nA LoRA adapter from the bezoar run `{data.manifest.get('run_name', data.run_dir.name)}` "
            f"over `{front['base_model']}`" + (" (merged weights in `merged/`)" if merged else "") + ".\n\n"
            "```python\nfrom peft import AutoPeftModelForCausalLM\nmodel = AutoPeftModelForCausalLM.from_pretrained(\"PATH_OR_REPO\")\n```\n\n"
            f"## Evaluation (the run's comparison table)\n\n{comparison_table(data.comparison, checkpoint)}\n"
            "## Licence lineage\n\n" + licence_lines(lineage))
    write_text(out_dir / "README.md", f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n\n{body}")
    if merged:

        export(adapter_dir, out_dir / "merged")
    return out_dir


def _model_licence(lineage) -> str:
    """The base model's licence when every source agrees on one, else `other` (the card lists them all)."""
    licences = {s.licence for s in lineage.sources}
    return licences.pop() if len(licences) == 1 else "other"


def export_models(run_dir: Path, out_dir: Path, merged: bool = False) -> dict[str, str]:
    """`bezoar export-models`: `model_folders`, and one line when the run trained nothing."""
    written = model_folders(run_dir, out_dir, merged)
    if not written:
        raise DataError(f"{run_dir}: the run has handed on no adapter (run a training step first)")
    return written


def model_folders(run_dir: Path, out_dir: Path, merged: bool = False) -> dict[str, str]:
    """One folder per checkpoint the run's training steps recorded; {checkpoint: folder}."""
    data = load(Path(run_dir))
    written = {}
    for name, directory in data.checkpoints.items():
        if (directory / "adapter_config.json").exists():
            written[name] = str(model_folder(name, directory, Path(out_dir) / name, data, merged))
    return written


def write_hub_folder(run_dir: Path, out_dir: Path, merged: bool = False) -> dict:
    """The report step's `hub_folder`: OUT/dataset (load_dataset-ready) and OUT/models/<checkpoint>."""

    out_dir = Path(out_dir)
    dataset = export_dataset(run_dir, out_dir / "dataset")
    models = model_folders(run_dir, out_dir / "models", merged)
    summary = {"dataset": dataset, "models": models}
    write_text(out_dir / "bezoar-hub.json", json.dumps(summary, indent=2) + "\n")
    return summary
