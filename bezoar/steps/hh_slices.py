"""The `hh_slices` step: HH-RLHF's pairs cut into disjoint slices, so that no pair is both trained on
and scored: SFT on the first `sft_n` pairs' chosen replies, DPO on the next `dpo_n`, preference accuracy
on the last `heldout_n`.

    RUN_DIR/hh_slices/{sft,dpo,heldout}.jsonl

Hands on `hh_sft`, `hh_dpo` and `hh_heldout` (an empty slice is not handed on).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from bezoar.findings import count_lines, preview_pairs
from bezoar.hh_rlhf import Malformed, load_row, parse_row
from bezoar.licences import dataset_licence
from bezoar.records import open_data
from bezoar.plan import PlanContext, PlanLine
from bezoar.config_base import RecipeView
from bezoar.steps.base import CheckContext, Step, StepContext, StepResult
from bezoar.train.config import HHData
from bezoar.train.hh_rlhf import SLICES, hh_slices



class HHSlicesStep(Step, HHData):
    """Disjoint HH-RLHF slices for sft_hh, dpo and the preference evaluation."""

    type: Literal["hh_slices"] = "hh_slices"

    def provides(self, recipe: RecipeView) -> list[str]:
        sizes = {"sft": self.sft_n, "dpo": self.dpo_n if self.dpo_n is not None else 1, "heldout": self.heldout_n}
        return [f"hh_{name}" for name in SLICES if sizes[name]]

    def run(self, context: StepContext) -> StepResult:
        slices = hh_slices(self, context.out_dir)
        files = {f"hh_{name}": context.out_dir / f"{name}.jsonl" for name in SLICES if slices.get(name)}
        name, licence = dataset_licence(str(self.path))
        return StepResult(outputs=context.handed_on(files), counts={name: len(slices[name]) for name in SLICES},
                          lineage=[{"name": name, "kind": "data", "licence": licence}])

    def check(self, context: CheckContext) -> None:
        """sft_n + dpo_n + heldout_n valid pairs must exist; parsing stops as soon as they do."""
        key = ("path",)
        if self.path is None:
            context.add(key, "no HH-RLHF file given (JSONL(.gz) with chosen/rejected transcripts)")
            return
        if not Path(self.path).is_file():
            context.missing(key, str(self.path))
            return
        preview_pairs(self.path, key, context.add, context.missing)
        need = self.sft_n + (self.dpo_n or 0) + self.heldout_n
        rows, valid = _count_valid(Path(self.path), need)
        if valid < need:
            dpo = "(all the rest)" if self.dpo_n is None else f"{self.dpo_n:,}"
            variable = context.findings.variable(context.key + key, whole=True)
            fix = f"set {variable} to a larger HH-RLHF file" if variable else "point path at a larger HH-RLHF file"
            context.add(("sft_n",), f"sft_n {self.sft_n:,} + dpo_n {dpo} + heldout_n {self.heldout_n:,} needs {need:,} "
                                    f"HH-RLHF pairs, but {self.path} has {rows:,} rows ({valid:,} well-formed); "
                                    f"{fix} or lower sft_n")

    def plan(self, context: PlanContext) -> list[PlanLine]:
        rest = self.dpo_n
        if rest is None:  # all the rest of the file
            rows = count_lines(Path(self.path)) if self.path is not None and Path(self.path).is_file() else 0
            rest = max(rows - self.sft_n - self.heldout_n, 0)
        context.expected.update(hh_sft=self.sft_n, hh_dpo=rest, hh_heldout=self.heldout_n)
        return []

    def disk_mb(self, recipe: RecipeView) -> float:
        return (self.sft_n + (self.dpo_n or 0) + self.heldout_n) * 3 / 1024


def _count_valid(path: Path, need: int) -> tuple[int, int]:
    """(rows read, well-formed pairs among them), stopping once `need` are found."""
    rows = valid = 0
    try:
        with open_data(path) as handle:
            for line in handle:
                if valid >= need:
                    break
                rows += bool(line.strip())
                try:
                    parse_row(load_row(line))
                except Malformed:
                    continue  # a blank or malformed row: the slicer skips it too
                valid += 1
    except UnicodeDecodeError:
        pass  # reported by the preview
    return rows, valid


STEP = HHSlicesStep
