"""The recipe's `generate` section: one sub-section per scheme, each with its seeds, counts and sampling.

Defaults follow the papers where they say (PAPER-NOTES §1, §6): LaMini-LM shows 3 example
instructions and asks for 20 more; Evol-Instruct runs 4 epochs at temperature 0.8 and eliminates
with a judge's equality check; Orca samples FLAN sub-collections in the proportions of its FLAN-5M
and pairs each with one of the system messages the paper allows for that sub-collection. Counts
default to the sizes of OpenBezoar's released data sets (LaMini 1,504, Evol-Instruct 2,304, Orca
5,520); `n: 0` skips a scheme.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from bezoar.config_base import StrictModel
from bezoar.llm.protocol import Sampling

EvolOperation = Literal["add_constraints", "deepening", "concretizing", "increase_reasoning", "complicate_input"]
IN_DEPTH: tuple[EvolOperation, ...] = ("add_constraints", "deepening", "concretizing", "increase_reasoning", "complicate_input")


class SamplingConfig(StrictModel):
    """Decoding for one kind of call."""

    temperature: float = Field(0.8, ge=0, le=2)
    """0 is greedy. The Evol-Instruct authors used 0.8 for everything."""
    top_p: float = Field(0.95, gt=0, le=1)
    """Nucleus sampling: sample from the smallest set of tokens whose probability reaches this."""
    max_new_tokens: int = Field(512, ge=1)
    """Longest reply. Local batches run until their longest member stops, so keep it tight on CPU."""

    def build(self, seed: int) -> Sampling:
        return Sampling(temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens, seed=seed)


class SeedFile(StrictModel):
    """One seed file. A bare string in the recipe is shorthand for `{path: ...}`."""

    path: Path
    """JSONL(.gz), JSON array or FLAN CoT TSV(.gz); see `bezoar.generate.seeds` for the row shapes."""
    licence: str | None = None
    """Declare the licence (e.g. `apache-2.0`) when bezoar's registry does not know the file."""
    limit: int | None = Field(None, ge=1)
    """Use only the first `limit` rows."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, (str, Path)) else value


class SchemeConfig(StrictModel):
    """What every scheme has."""

    n: int = Field(0, ge=0)
    """Records to generate; the scheme tops up past rejections until it has exactly this many."""
    seeds: list[SeedFile] = Field(default_factory=list)
    """Seed files (a bare path is shorthand for `{path: ...}`)."""
    batch_size: int = Field(32, ge=1)
    """Work items sent to the teacher per round (records are appended after each round)."""
    max_attempts_per_record: float = Field(10.0, ge=1)
    """Give up (with the records made so far kept) after n x this many candidates without reaching n."""
    skip_bad_lines: bool = False
    """Skip malformed seed rows (counted and reported) instead of stopping at the first."""


class LaMiniConfig(SchemeConfig):
    """LaMini-LM (arXiv 2304.14402): new instructions from example instructions or topics, then answers."""

    n: int = Field(1504, ge=0)
    """Records to make (0: off). Default: the size of SurgeGlobal's LaMini-style set."""
    topic_guided_fraction: float = Field(0.5, ge=0, le=1)
    """Share of prompts that add sampled topics (topic-guided) to the examples (example-guided)."""
    examples_per_prompt: int = Field(3, ge=1)
    """Seed instructions shown per prompt (LaMini-LM: 3)."""
    topics_per_prompt: int = Field(3, ge=1)
    """Topics named in a topic-guided prompt."""
    instructions_per_prompt: int = Field(20, ge=1)
    """How many new instructions each prompt asks for (LaMini-LM: 20)."""
    topics_file: Path | None = None
    """One topic a line; default: the broad, Wikipedia-category-like list shipped in bezoar/prompts."""
    max_seed_similarity: float = Field(0.7, gt=0, le=1)
    """Drop a new instruction whose word-set Jaccard similarity to a seed or an earlier one reaches this."""
    min_words: int = Field(3, ge=1)
    """Shortest instruction kept, in words."""
    max_words: int = Field(200, ge=1)
    """Longest instruction kept, in words (a longer one is usually a list or an essay run together)."""
    instruction_sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(temperature=1.0, max_new_tokens=512))
    response_sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(temperature=0.7, max_new_tokens=512))


class EvolConfig(SchemeConfig):
    """Evol-Instruct (arXiv 2304.12244) as OpenBezoar ran it on Dolly-15k."""

    n: int = Field(2304, ge=0)
    """Records to make (0: off). Default: the size of SurgeGlobal's Evol-Instruct set."""
    epochs: int = Field(4, ge=1)
    """Evolution rounds M over each pool (WizardLM: 4)."""
    selection: Literal["per_instruction", "per_epoch"] = "per_instruction"
    """`per_instruction`: each instruction draws its own evolution, uniformly over the in-depth
    operations and in-breadth (WizardLM). `per_epoch`: one draw per epoch for the whole pool, first
    in-depth vs in-breadth, then the operation (the OpenBezoar authors' port)."""
    operations: list[EvolOperation] = Field(default_factory=lambda: list(IN_DEPTH))
    """In-depth operations to draw from (the authors' port left out `complicate_input`)."""
    in_breadth: bool = True
    """Also draw in-breadth mutation (a new, rarer prompt in the same domain)."""
    pool_size: int = Field(64, ge=1)
    """Seeds evolved together through all epochs before the next pool starts."""
    include_context: bool = True
    """Append Dolly's context (or an input) to the instruction, as the authors did."""
    max_seed_chars: int = Field(4000, ge=100)
    """Truncate long seeds (the authors cut at 1,024 teacher tokens)."""
    equality_check: bool = True
    """Ask the judge whether the evolved prompt equals its parent (elimination rule 1)."""
    equality_attempts: int = Field(3, ge=1)
    """Re-asks when the judge's answer is unparseable (the authors allowed ~6)."""
    on_unparseable_equality: Literal["reject", "keep"] = "reject"
    """`reject`: an unparseable verdict counts as a failed evolution (the authors' choice)."""
    evolve_sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(temperature=0.8, max_new_tokens=256))
    response_sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(temperature=0.8, max_new_tokens=512))

    @model_validator(mode="after")
    def _has_an_operation(self) -> "EvolConfig":
        if not self.operations and not self.in_breadth:
            raise ValueError("no evolution left: give at least one in-depth operation or set in_breadth: true")
        return self


class OrcaConfig(SchemeConfig):
    """Orca explanation tuning (arXiv 2306.02707) over FLAN tasks with gold targets."""

    n: int = Field(5520, ge=0)
    """Records to make (0: off). Default: the size of SurgeGlobal's Orca-style set."""
    mix: dict[Literal["cot", "niv2", "t0", "flan2021", "other"], float] = {
        "flan2021": 2.5, "t0": 2.0, "niv2": 0.44, "cot": 0.15, "other": 1.0}
    """Sampling weight per FLAN sub-collection, over those present in the seeds (default: Orca's
    FLAN-5M, in millions of queries; `other` is any seed file without a known sub-collection)."""
    gold_max_words: int = Field(5, ge=1)
    """A gold target of at most this many words is "short": the teacher's final answer is checked against it."""
    response_sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(temperature=0.7, max_new_tokens=512))

    @model_validator(mode="after")
    def _positive_mix(self) -> "OrcaConfig":
        if any(weight < 0 for weight in self.mix.values()) or not any(self.mix.values()):
            raise ValueError("mix weights must be >= 0 with at least one above 0")
        return self


class ConstraintsConfig(SchemeConfig):
    """Constraint prompts (Tulu 3's verifiable rewards): seed instructions plus 1-3 constraints from
    bezoar's catalogue of IFEval's 25 instruction types, which lm-eval's checkers verify. No teacher."""

    n: int = Field(0, ge=0)
    """Records to make (0: this scheme is off)."""
    types: list[str] | None = None
    """Instruction ids to draw from (e.g. `punctuation:no_comma`); None is the whole catalogue."""
    min_constraints: int = Field(1, ge=1, le=3)
    """Fewest verifiable constraints added to a prompt."""
    max_constraints: int = Field(3, ge=1, le=3)
    """Constraints per prompt, drawn uniformly in [min, max] (compatible ones only)."""

    @model_validator(mode="after")
    def _ordered(self) -> "ConstraintsConfig":
        if self.min_constraints > self.max_constraints:
            raise ValueError(f"min_constraints ({self.min_constraints}) is above max_constraints ({self.max_constraints})")
        return self


METHODS = ("lamini", "evol", "orca")
"""The schemes that make instruction/response records, in the recipe's order (also the names the generate
step hands their files on under, and the filter step its kept records)."""


class GenerateConfig(StrictModel):
    """The generate step's settings: one scheme each (a scheme with n: 0 is off)."""

    lamini: LaMiniConfig = Field(default_factory=LaMiniConfig)
    evol: EvolConfig = Field(default_factory=EvolConfig)
    orca: OrcaConfig = Field(default_factory=OrcaConfig)
    constraints: ConstraintsConfig = Field(default_factory=ConstraintsConfig)
    """Constraint prompts (no teacher): handed on as `constraints`, which a preferences step answers."""

    def scheme(self, method: str) -> SchemeConfig:
        return getattr(self, method)

    def enabled_methods(self) -> list[str]:
        """The record-making schemes this recipe runs (n > 0)."""
        return [m for m in METHODS if self.scheme(m).n > 0]
