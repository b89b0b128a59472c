"""The recipe's HH-RLHF slices (`sft_hh.data`): cut and written by the sft_hh stage, which hands them
on (DPO's pairs, the held-out pairs) through the run's manifest (`bezoar.stage_outputs`).

Reading and splitting the transcripts is `bezoar.hh_rlhf` (the filter's judge calibration reads them too);
this adds what only training needs: the recipe's sizes, and one rank writing the slices to the run.
"""
from __future__ import annotations

import logging
from pathlib import Path

from bezoar.errors import ConfigError
from bezoar.hh_rlhf import read_hh_pairs, split_slices
from bezoar.records import PreferencePair, write_jsonl
from bezoar.stage_outputs import handed_on
from bezoar.train.config import HHData
from bezoar.train.launch import is_main_process

log = logging.getLogger(__name__)


def hh_slices(data: HHData, run_dir: Path | None = None) -> dict[str, list[PreferencePair]]:
    """The recipe's HH-RLHF slices (`HHData`: path, sft_n, dpo_n, heldout_n), written under
    `run_dir/data/hh/` for inspection and for the evaluation stage. `dpo_n: null` = all the rest."""
    if data.path is None:
        raise ConfigError("sft_hh.data.path: no HH-RLHF file given (JSONL(.gz) with chosen/rejected transcripts)")
    pairs, bad = read_hh_pairs(data.path)
    if bad:
        log.warning("%s: %d malformed rows skipped (first: %s)", data.path, len(bad), bad[0])
    dpo_n = data.dpo_n if data.dpo_n is not None else max(len(pairs) - data.sft_n - data.heldout_n, 0)
    slices = split_slices(pairs, data.sft_n, dpo_n, data.heldout_n)
    if run_dir is not None and is_main_process():  # under accelerate launch every rank slices; rank 0 writes
        files = slice_files(run_dir)
        for name, items in slices.items():
            write_jsonl(files[f"hh_{name}"], items)
    return slices


def slice_files(run_dir: Path) -> dict[str, Path]:
    """Where `hh_slices` writes each slice, by the name the sft_hh stage hands it on under."""
    return {f"hh_{name}": Path(run_dir) / "data" / "hh" / f"{name}.jsonl" for name in ("sft", "dpo", "heldout")}


def handed_on_slices(slices: dict[str, list[PreferencePair]], run_dir: Path) -> dict[str, str]:
    """The written slices named for the run's manifest; an empty slice is not handed on."""
    files = slice_files(run_dir)
    return handed_on(run_dir, {name: files[name] for name in files if slices.get(name.removeprefix("hh_"))})
