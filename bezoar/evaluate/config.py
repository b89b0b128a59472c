"""The recipe's `eval` section: which evaluations run on each checkpoint, and how.

Defaults follow the sources: MT-Bench as FastChat's llm_judge runs it, the harness with the Open LLM
Leaderboard (v1) few-shot settings, preference accuracy on held-out HH-RLHF pairs. Data paths
default to `${BEZOAR_DATA:-../shared/data}/...` (bezoar.config_base.data_path), so pointing `BEZOAR_DATA`
at a data folder is enough.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from bezoar.config_base import ModelConfig, StrictModel, data_path
from bezoar.evaluate.harness_tasks import LOCAL_TASKS, short_name


class MTBenchConfig(StrictModel):
    enabled: bool = True
    """Run MT-Bench on every checkpoint."""
    questions: Path = Field(default_factory=lambda: data_path("eval/mt_bench/question.jsonl"))
    """FastChat question.jsonl (80 two-turn questions in 8 categories)."""
    reference_answers: Path | None = Field(
        default_factory=lambda: data_path("eval/mt_bench/reference_answer/gpt-4.jsonl"))
    """GPT-4 reference answers used by single-math-v1 for math, reasoning and coding."""
    judge_prompts: Path | None = None
    """FastChat judge_prompts.jsonl; None uses the copy shipped in bezoar/prompts (identical)."""
    limit: int | None = Field(None, ge=1)
    """Only the first N questions (smoke runs); None is all. The file is sorted by category, so a
    small limit covers writing only: prefer per_category."""
    per_category: int | None = Field(None, ge=1)
    """Only the first N questions of each category (per_category: 1 is 8 questions, every judge prompt)."""
    max_new_tokens: int = Field(1024, ge=1)
    """Longest answer per turn (FastChat gen_model_answer's default). On CPU, 256 cuts the wall
    time ~4x and truncates few answers of a small model."""
    judge_max_new_tokens: int = Field(1024, ge=1)
    """Longest judge reply (FastChat: 2048 for GPT-4, 1024 for Claude); the rating comes last."""
    judge: ModelConfig | None = None
    """The MT-Bench judge, when it is not `models.judge` (the paper filtered with GPT-4 but graded
    MT-Bench with Claude 2.1: `judge: {spec: anthropic:claude-2.1}`)."""
    judge_mode: Literal["auto", "generate", "next_token"] = "auto"
    """`generate`: the judge writes its explanation and `[[rating]]` (FastChat). `next_token`: a local
    judge's rating is its expected value over "1".."10" after "Rating: [[" (G-Eval style), for
    small models that never follow the format. `auto`: next_token for local judges, else generate."""
    judge_repeats: int = Field(1, ge=1)
    """Grade each item K times and report the median and the spread (judge variance)."""
    repeat_temperature: float = Field(0.7, ge=0)
    """Judge temperature when judge_repeats > 1 (K = 1 judges greedily, as FastChat)."""
    judge_prefill: str | None = None
    """`generate` mode: start the judge's reply with this text (e.g. `"Rating: [["`) so a judge that drifts
    from the format is put on it (local models, `bezoar serve`, vLLM, Anthropic; not api.openai.com)."""
    judge_retries: int = Field(2, ge=0)
    """Extra attempts for a judge reply with no readable [[rating]]; then it is recorded as an error."""
    retry_temperature: float = Field(0.7, ge=0)
    """Retries sample (with a new seed) so they are not the same greedy reply again."""
    pairwise_against: Path | None = None
    """Another model's FastChat answer file: also grade pair-v2 against it (e.g. model_answer/gpt-4o.jsonl)."""
    bootstrap_samples: int = Field(1000, ge=0)
    """Resamples for the 95% intervals (0 disables them)."""
    seed: int = 0
    """Seed of the bootstrap resampling."""


class HarnessConfig(StrictModel):
    enabled: bool = True
    """Run the LM Evaluation Harness tasks on every checkpoint."""
    tasks: list[str] = Field(default_factory=lambda: ["leaderboard"])
    """`leaderboard` = bezoar's local ARC-Challenge, HellaSwag, TruthfulQA-MC2, MMLU, Winogrande,
    GSM8K (those with data); `bezoar_<task>` one of them; any other name goes to lm-eval's registry."""
    data_dir: Path = Field(default_factory=lambda: data_path("eval/harness"))
    """Folder holding the local task data (layout as in ../shared/data/eval/harness)."""
    data_paths: dict[str, Path] = Field(default_factory=dict)
    """Per-task data file or folder overriding data_dir, e.g. `{winogrande: /data/winogrande/dev.jsonl}`."""
    num_fewshot: int | None = Field(None, ge=0)
    """None keeps each task's leaderboard shots (25/10/0/5/5/5); a number overrides all but 0-shot tasks."""
    limit: float | None = Field(None, gt=0)
    """Documents per task: a count, or a fraction when below 1 (lm-eval's --limit); None is all."""
    batch_size: int = Field(16, ge=1)
    """Requests per forward pass (lm-eval's default is 1: ~3x slower here)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """`auto`: fp32 on CPU (scores independent of batch size), bf16/fp16 on CUDA."""
    apply_chat_template: bool = False
    """The leaderboard scores base-style prompts; True wraps them in the model's chat template."""

    @field_validator("data_paths")
    @classmethod
    def _known_tasks(cls, value: dict[str, Path]) -> dict[str, Path]:

        unknown = [key for key in value if short_name(key) not in LOCAL_TASKS]
        if unknown:
            raise ValueError(f"no local task named {unknown}; local tasks: {sorted(LOCAL_TASKS)}")
        return {short_name(key): path for key, path in value.items()}


class PreferenceConfig(StrictModel):
    enabled: bool = True
    """Score held-out preference pairs by log-likelihood (and DPO's implicit reward)."""
    pairs: Path | None = None
    """HH-RLHF JSONL(.gz) transcripts, or bezoar pair JSONL (prompt/chosen/rejected). None: the
    held-out slice an hh_slices step before it handed on (pairs sft_hh and dpo never train on)."""
    heldout_n: int | None = Field(None, ge=1)
    """Score only the LAST N pairs of the file (split_slices' held-out rule). None: every pair."""
    limit: int | None = Field(None, ge=1)
    """Score only the first N of those pairs (each pair is two forward passes per model)."""
    batch_size: int = Field(8, ge=1)
    """Pairs per forward pass."""
    max_length: int = Field(1024, ge=16)
    """Tokens per sequence; longer prompts are cut from the left so the reply is always scored whole."""


class IFEvalConfig(StrictModel):
    enabled: bool = False
    """Off by default: 541 prompts take a while on a CPU (recipes/verifiable.yaml turns it on)."""
    prompts: Path = Field(default_factory=lambda: data_path("eval/ifeval/input_data.jsonl"))
    """IFEval's input_data.jsonl (key, prompt, instruction_id_list, kwargs)."""
    limit: int | None = Field(None, ge=1)
    """Only the first N prompts (smoke runs); None is all 541."""
    max_new_tokens: int = Field(512, ge=1)
    """Longest answer (lm-eval: 1280). Length instructions ask for up to ~800 words; on CPU, 256-512
    keeps the run short and cuts few answers of a small model."""
    bootstrap_samples: int = Field(1000, ge=0)
    """Resamples for the instruction-level intervals (prompts are resampled whole)."""
    seed: int = 0
    """Seed of the bootstrap resampling."""


class EvalConfig(StrictModel):
    mt_bench: MTBenchConfig = Field(default_factory=MTBenchConfig)
    harness: HarnessConfig = Field(default_factory=HarnessConfig)
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)
    ifeval: IFEvalConfig = Field(default_factory=IFEvalConfig)
    checkpoints: list[str] | None = None
    """Which of the run's checkpoints to evaluate, by name (e.g. [sft-3-orca, dpo]); None: every one
    its manifest records."""
    include_base: bool = True
    """Evaluate the untrained student too (the comparison's baseline)."""
