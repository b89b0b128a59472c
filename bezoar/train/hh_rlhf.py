"""The recipe's HH-RLHF slices (`sft_hh.data`), shared by the sft_hh and dpo stages.

Reading and splitting the transcripts is `bezoar.hh_rlhf` (the filter's judge calibration reads them too);
this adds what only training needs: the recipe's sizes, and one rank writing the slices to the run.
"""
from __future__ import annotations

import logging
from pathlib import Path

from bezoar.errors import ConfigError
from bezoar.hh_rlhf import read_hh_pairs, split_slices
from bezoar.records import PreferencePair, write_jsonl
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
        for name, items in slices.items():
            write_jsonl(Path(run_dir) / "data" / "hh" / f"{name}.jsonl", items)
    return slices
