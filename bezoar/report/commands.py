"""`bezoar export-data`, `bezoar export-models`: a run's data and checkpoints as Hugging Face folders."""
from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("export-data")(export_data_command)
    app.command("export-models")(export_models_command)


def export_data_command(run_dir: Path = typer.Argument(..., help="A bezoar run directory."),
                        out: Path = typer.Option(..., "--out", help="Folder to write (parquet per config + README.md card)."),
                        ) -> None:
    """Each kept set, the rejected set and the preference pairs as a dataset `datasets.load_dataset(OUT)` reads."""
    from bezoar.report.hub_dataset import export_dataset

    print(json.dumps(export_dataset(run_dir, out), indent=1))


def export_models_command(run_dir: Path = typer.Argument(..., help="A bezoar run directory."),
                          out: Path = typer.Option(..., "--out", help="Folder to write, one sub-folder per checkpoint."),
                          merged: bool = typer.Option(False, "--merged", help="Also merge each adapter into its base."),
                          ) -> None:
    """Each checkpoint's adapter with a model card (comparison table, base_model), optionally merged weights."""
    from bezoar.report.hub_models import export_models

    print(json.dumps(export_models(run_dir, out, merged), indent=1))
