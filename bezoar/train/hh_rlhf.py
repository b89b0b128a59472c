"""HH-RLHF's disjoint slices for training and evaluation (`HHData`: the sft / dpo / held-out sizes).

Reading and splitting the transcripts is `bezoar.hh_rlhf` (the filter's judge calibration reads them too);
this adds what only a run needs: the recipe's sizes, and one rank writing the slices to the step's folder.
"""
from __future__ import annotations

import logging
from pathlib import Path

from bezoar.errors import ConfigError
from bezoar.hh_rlhf import read_hh_pairs, split_slices
from bezoar.processes import is_main_process
from bezoar.records import PreferencePair, write_jsonl
from bezoar.train.config import HHData

log = logging.getLogger(__name__)

SLICES = ("sft", "dpo", "heldout")


def hh_slices(data: HHData, out_dir: Path | None = None) -> dict[str, list[PreferencePair]]:
    """The slices (sft, dpo, heldout), written as `out_dir/<slice>.jsonl` when given. `dpo_n: null` = all the rest."""
    if data.path is None:
        raise ConfigError("path: no HH-RLHF file given (JSONL(.gz) with chosen/rejected transcripts)")
    pairs, bad = read_hh_pairs(data.path)
    if bad:
        log.warning("%s: %d malformed rows skipped (first: %s)", data.path, len(bad), bad[0])
    dpo_n = data.dpo_n if data.dpo_n is not None else max(len(pairs) - data.sft_n - data.heldout_n, 0)
    slices = split_slices(pairs, data.sft_n, dpo_n, data.heldout_n)
    if out_dir is not None and is_main_process():  # under accelerate launch every rank slices; rank 0 writes
        for name, items in slices.items():
            write_jsonl(Path(out_dir) / f"{name}.jsonl", items)
    return slices
