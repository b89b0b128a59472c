"""The recipe's `sft`, `sft_hh` and `dpo` sections: the paper's training settings as typed fields.

Defaults are OpenBezoar's where known (PAPER-NOTES §2: QLoRA NF4 with double quantisation and bf16
compute, LoRA r=16 alpha=16 dropout 0.05 on q/k/v, paged 8-bit AdamW, lr 3e-4, 100 warm-up steps,
256-token sequences, 20% validation and the best-validation checkpoint, global batch 128). The
values that only make sense on a GPU (NF4, paged 8-bit AdamW, dropout) are `auto` and resolve to
the fastest equivalent on a CPU; the resolved choice is announced in one log line per run.
Names passed through to TRL/peft keep their upstream names (`learning_rate`, `warmup_steps`, ...).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from bezoar.config_base import StrictModel


class LoRASettings(StrictModel):
    """The adapter. Used when a stage creates a new adapter; a stage that continues an earlier
    adapter keeps that adapter's shape (so sequential SFT trains one adapter throughout)."""

    r: int = Field(16, ge=1)
    """LoRA rank (paper: 16)."""
    alpha: int = Field(16, ge=1)
    """LoRA scaling numerator, peft's `lora_alpha` (paper: 16)."""
    dropout: float | Literal["auto"] = "auto"
    """peft's `lora_dropout`. `auto`: the paper's 0.05 on GPU, 0 on CPU, where drawing the dropout
    masks costs ~40% of a LoRA step (measured) for no benefit visible at this scale."""
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj"])
    """Adapted linear layers (paper: q, k, v; o_proj and the MLP are left frozen)."""

    @field_validator("dropout")
    @classmethod
    def _dropout_range(cls, value: float | str) -> float | str:
        if not isinstance(value, str) and not 0 <= value < 1:
            raise ValueError("must be in [0, 1) or 'auto'")
        return value


class LaunchSettings(StrictModel):
    """How a training stage's processes are started. `bezoar run`, `bezoar sft` and `bezoar dpo`
    start the stage under the real `accelerate launch` when this asks for more than one process or
    names an accelerate config; every other stage, the manifest and the summaries stay with the one
    main process. Each process takes `per_device_train_batch_size` examples per micro-batch, so the
    global batch is processes x micro-batch x `gradient_accumulation_steps`: divide the accumulation
    by the process count to keep the paper's 128."""

    num_processes: int = Field(1, ge=1)
    """Processes (one per GPU; on a CPU each gets cores / processes threads and gloo connects them)."""
    config_file: Path | None = None
    """An accelerate config (`recipes/accelerate/fsdp.yaml`, `deepspeed-zero2.yaml`, ...): DDP when unset."""

    @property
    def wanted(self) -> bool:
        return self.num_processes > 1 or self.config_file is not None


class TrainSettings(StrictModel):
    """Hyper-parameters shared by every training stage."""

    lora: LoRASettings = Field(default_factory=LoRASettings)
    launch: LaunchSettings = Field(default_factory=LaunchSettings)
    """Processes for this stage (`accelerate launch`); see LaunchSettings."""
    quantization: Literal["auto", "nf4", "none"] = "auto"
    """`nf4`: QLoRA, 4-bit NF4 base weights with double quantisation (the paper); the 4-bit compute
    dtype is the planned `dtype` (bf16 on GPUs that have it, else fp16; fp32 on this kind of CPU).
    bitsandbytes >= 0.49 runs it on CPU too. `auto`: nf4 when CUDA and bitsandbytes are present."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights and compute. `auto` measures: bf16 on GPUs and on CPUs with native bf16, fp32 on
    CPUs that emulate it (~10x slower there). Always passed to TRL explicitly."""
    learning_rate: float = Field(3e-4, gt=0)
    """Peak learning rate (paper: 3e-4)."""
    warmup_steps: int = Field(100, ge=0)
    """Linear warm-up steps (paper: 100), then `lr_scheduler_type`."""
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    """Decay after warm-up (paper: the HF Trainer default, linear)."""
    num_train_epochs: float = Field(3.0, gt=0)
    """Passes over the training split (paper's SFT code: 3)."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps (overrides epochs); for smoke runs."""
    per_device_train_batch_size: int = Field(4, ge=1)
    """Micro-batch (paper: 4)."""
    gradient_accumulation_steps: int = Field(32, ge=1)
    """Micro-batches per optimizer step (paper: 32, i.e. a global batch of 128 on one GPU)."""
    max_length: int = Field(256, ge=8)
    """Longest training sequence in tokens (paper: 256); longer examples are truncated."""
    validation_fraction: float = Field(0.2, ge=0, lt=1)
    """Share of the data held out for eval loss and checkpoint selection (paper: 20%)."""
    max_validation_examples: int | None = Field(None, ge=1)
    """Cap on validation examples (evaluation is a full forward pass over them every `eval_steps`)."""
    eval_steps: int = Field(10, ge=1)
    """Evaluate (and save a checkpoint) every this many optimizer steps (paper: 10)."""
    save_total_limit: int = Field(2, ge=1)
    """Checkpoints kept on disk (the best one is always kept)."""
    load_best_model_at_end: bool = True
    """Keep the lowest-validation-loss checkpoint, not the last one (paper: yes)."""
    optim: str = "auto"
    """Optimizer name as in transformers (`adamw_torch`, `paged_adamw_8bit`, ...). `auto`: the
    paper's `paged_adamw_8bit` on CUDA with bitsandbytes; with nf4 on a CPU its unpaged twin
    `adamw_bnb_8bit` (paging moves optimizer state between GPU and host memory: CUDA only);
    otherwise `adamw_torch`."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay (the HF Trainer's default, 0)."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Gradients are clipped to this norm (the HF Trainer's default)."""
    gradient_checkpointing: bool | Literal["auto"] = "auto"
    """Recompute activations in the backward pass: half the memory, ~25% more compute. `auto`: on for
    GPUs and for sequences longer than 512 tokens, off otherwise."""
    logging_steps: int = Field(10, ge=1)
    """Log train loss every this many steps (paper: 10) to metrics.jsonl and TensorBoard."""
    seed: int = 42
    """Data order, adapter init and the validation split (paper's split seed: 42)."""
    template: Literal["chat", "alpaca"] = "chat"
    """`chat`: the student's own chat template (what generation and evaluation use). `alpaca`: the
    paper's `### System / ### Instruction / ### Response:` format, installed as the tokenizer's chat
    template so that generation and evaluation use it too."""
    expected_chat_template: str | None = None
    """sha256 (or a prefix of it, ≥ 8 hex digits) of the chat template the run must train with;
    the template check fails before the first step when the tokenizer's template differs."""
    resume: bool = True
    """Continue from the newest checkpoint in the output directory (after a crash or kill)."""

    @field_validator("expected_chat_template")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        if value is not None and (len(value) < 8 or any(c not in "0123456789abcdef" for c in value.lower())):
            raise ValueError("must be a sha256 hex digest (or its first 8+ characters); "
                             "`bezoar check-template` prints it")
        return value.lower() if value else value


class SFTDataset(StrictModel):
    """One data set of sequential SFT. A bare string is shorthand for `{name: ...}`."""

    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    """Label of this step (models/sft-<i>-<name>); also the default file name."""
    path: Path | None = None
    """JSONL of `Record`s; default: the kept records the filter stage handed on under this name."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class SFTStageConfig(TrainSettings):
    """Sequential SFT: each data set continues training the adapter left by the previous one."""

    datasets: list[SFTDataset] = Field(
        default_factory=lambda: [SFTDataset(name=n) for n in ("lamini", "evol", "orca")])
    """In training order (paper: LaMini → Evol-Instruct → Orca, GPT-4-accepted rows only)."""
    loss: Literal["assistant", "full"] = "assistant"
    """`assistant`: loss on the reply tokens only. `full`: on the whole sequence (the paper's code)."""

    @field_validator("datasets")
    @classmethod
    def _unique(cls, value: list[SFTDataset]) -> list[SFTDataset]:
        names = [d.name for d in value]
        if len(set(names)) != len(names):
            raise ValueError(f"data set names must be unique (got {names})")
        return value


class HHData(StrictModel):
    """Which HH-RLHF rows each step sees. `sft_hh`, `dpo` and the preference evaluation all read the
    slices of one `hh_slices` step, so they are disjoint by construction."""

    path: Path | None = None
    """HH-RLHF JSONL(.gz) with `chosen`/`rejected` transcripts; required when sft_hh or dpo runs."""
    sft_n: int = Field(100_000, ge=0)
    """SFT on the first N well-formed pairs' chosen replies (paper: "the first 100K examples")."""
    dpo_n: int | None = Field(None, ge=0)
    """DPO on the next N pairs; `None`: every pair between the SFT slice and the held-out slice."""
    heldout_n: int = Field(1000, ge=0)
    """The last N pairs: never trained on; preference accuracy is measured there."""


class SFTHHStageConfig(TrainSettings):
    """SFT on HH-RLHF chosen replies, to move the policy towards HH-RLHF's dialogue before DPO."""

    num_train_epochs: float = Field(1.0, gt=0)
    """Paper: one epoch."""
    loss: Literal["assistant", "full"] = "assistant"
    """`assistant`: loss on the final reply only; `full`: the whole dialogue."""


class DPOData(StrictModel):
    """Which pairs DPO trains on: HH-RLHF's human preferences, a preferences step's on-policy pairs,
    or a mix of both."""

    source: Literal["hh_rlhf", "generated", "mix"] = "hh_rlhf"
    """hh_rlhf: the `hh_dpo` slice an hh_slices step handed on; generated: the `pairs` the nearest
    preferences step before it handed on (or `generated`); mix: both."""
    generated: Path | None = None
    """Pair JSONL (prompt/chosen/rejected); None: the pairs a preferences step handed on."""
    weights: dict[Literal["hh_rlhf", "generated"], float] = {"hh_rlhf": 1.0, "generated": 1.0}
    """`mix`: pairs drawn in this proportion (every generated pair, HH-RLHF pairs to match, at most all)."""


class DPOStageConfig(TrainSettings):
    """DPO on HH-RLHF pairs, with a LoRA adapter whose reference is the adapter switched off."""

    data: DPOData = Field(default_factory=DPOData)
    """hh_rlhf (the hh_dpo slice), generated (on-policy pairs), or mix."""

    beta: float = Field(0.1, gt=0)
    """Strength of the KL pull towards the reference (TRL default 0.1; the paper does not say)."""
    learning_rate: float = Field(5e-5, gt=0)
    """Not in the paper; 5e-5 is a common LoRA-DPO value."""
    num_train_epochs: float = Field(1.0, gt=0)
    """Paper: one epoch."""
    max_length: int = Field(512, ge=16)
    """Prompt + longer reply, in tokens. HH-RLHF prompts are long, so the earliest turns of a
    dialogue are dropped first; a reply is cut only when even its last Human turn does not fit."""
    precompute_ref_log_probs: bool = True
    """Score every pair under the reference once, before training, and cache the result beside
    the run keyed by reference model and data, so re-runs and resumes skip it."""
    shared_prompt: bool = True
    """Run the prompt of a pair once for both replies (one packed sequence with a mask that hides
    the chosen reply from the rejected one) instead of twice."""
