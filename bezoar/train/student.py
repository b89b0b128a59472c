"""The model being trained: where its weights come from, on what device and dtype, with which adapter.

A base spec is what `--base` / `models.student` says: `local` (the embedded SmolLM2), `local:PATH`
or a bare PATH, where PATH is a transformers directory or a LoRA adapter directory written by an
earlier stage. An adapter is *continued*: the next stage keeps training the same adapter, so the
sequential SFT sets accumulate in one adapter and every stage's output is base + one adapter
(load it with plain peft, merge it with `bezoar export`).
"""
from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from bezoar.errors import BackendError, ConfigError
from bezoar.llm.device import plan_device
from bezoar.llm.weights import content_identity, resolve_model_dir
from bezoar.train.config import TrainSettings
from bezoar.processes import local_rank, local_world_size

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainPlan:
    """Every `auto` of the recipe resolved for this machine, announced in one log line."""

    device: str
    dtype: object  # torch.dtype
    quantization: str
    optim: str
    lora_dropout: float
    gradient_checkpointing: bool
    threads: int
    reason: str

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def trl_precision(self) -> dict:
        """TRL's configs default to bf16=True; we always say what we mean. On CPU the weights are
        loaded in the planned dtype and no autocast is used (autocast would re-cast every weight
        on every step); on CUDA autocast keeps the LoRA weights in fp32."""
        cuda = self.device == "cuda"
        return {"bf16": cuda and self.dtype_name == "bfloat16", "fp16": cuda and self.dtype_name == "float16",
                "use_cpu": not cuda}

    def describe(self) -> str:
        return (f"training on {self.device} in {self.dtype_name} ({self.reason}); quantization {self.quantization}, "
                f"optimizer {self.optim}, lora_dropout {self.lora_dropout}, gradient checkpointing "
                f"{'on' if self.gradient_checkpointing else 'off'}, {self.threads} threads")


def bitsandbytes_available() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def plan_training(settings: TrainSettings, longest: int | None = None, kind: str = "sft") -> TrainPlan:
    """Resolve dtype (measured by `plan_device`), quantization, optimizer, dropout and checkpointing
    for a `kind` ("sft" or "dpo") of training."""
    device = plan_device(settings.dtype)
    cuda = device.device == "cuda"
    quantization = settings.quantization
    if quantization == "auto":
        quantization = "nf4" if cuda and bitsandbytes_available() else "none"
    if quantization == "nf4" and not bitsandbytes_available():
        raise ConfigError("quantization: nf4 needs bitsandbytes: pip install 'bezoar[gpu]' (or set quantization: none)")
    optim = settings.optim
    if optim == "auto":
        optim = _default_optimizer(cuda, quantization)
    dropout = settings.lora.dropout
    if dropout == "auto":
        dropout = 0.05 if cuda else 0.0
    checkpointing = settings.gradient_checkpointing
    if checkpointing == "auto":
        # Measured on CPU (benchmarks/bench_train.py, batch 8, <=256 tokens, one process per run): SFT
        # with recomputation peaks at 2,166 MB instead of 3,662 (hand-tuned TRL: 2,715) for 20% of its
        # speed (254 vs 317 tok/s); DPO would lose half its speed (0.29 vs 0.63 pairs/cpu-s) for
        # 3,945 -> 2,283 MB, so there it is kept for long sequences only.
        checkpointing = cuda or kind == "sft" or (longest or settings.max_length) > 512
    # Several ranks on one CPU share its cores: each takes its part, or they would thrash.
    threads = max(1, device.threads // local_world_size()) if not cuda else device.threads
    return TrainPlan(device.device, device.dtype, quantization, optim, float(dropout), bool(checkpointing),
                     threads, device.reason)


def _default_optimizer(cuda: bool, quantization: str) -> str:
    """The paper's paged 8-bit AdamW on CUDA; with NF4 on a CPU its unpaged twin (paging moves the
    optimizer state between GPU and host memory, so bitsandbytes has it for CUDA only)."""
    if not bitsandbytes_available():
        return "adamw_torch"
    if cuda:
        return "paged_adamw_8bit"
    return "adamw_bnb_8bit" if quantization == "nf4" else "adamw_torch"


@dataclass
class BaseWeights:
    """The transformers directory of the base and, when training continues one, an adapter."""

    base_dir: Path
    adapter_dir: Path | None

    @property
    def identity(self) -> str:
        """Content identity of base (+ adapter): keys the reference log-prob cache."""
        base = content_identity(self.base_dir)
        return base + (f"+{content_identity(self.adapter_dir)}" if self.adapter_dir else "")


def resolve_base(spec: str) -> BaseWeights:
    """`local`, `local:PATH` or PATH → base directory (+ adapter directory)."""
    source = spec.removeprefix("local:") if spec.startswith("local:") else (None if spec == "local" else spec)
    path = resolve_model_dir(source)
    config = path / "adapter_config.json"
    if not config.exists():
        return BaseWeights(path, None)
    base = json.loads(config.read_text()).get("base_model_name_or_path")
    if not base:
        raise BackendError(f"{config}: no base_model_name_or_path; cannot tell which model the adapter belongs to")
    return BaseWeights(resolve_model_dir(base), path)


def load_model(weights: BaseWeights, plan: TrainPlan):
    """The base model on the planned device/dtype (4-bit NF4 for QLoRA), ready for an adapter."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(plan.threads)
    options: dict = {"dtype": plan.dtype}
    if plan.quantization == "nf4":
        from transformers import BitsAndBytesConfig

        # The paper's QLoRA: NF4 storage and double quantisation; compute in the planned dtype (bf16
        # where the GPU has it, fp16 on older GPUs, fp32 on CPUs that emulate bf16).
        options["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=plan.dtype)
        # Each rank loads onto its own GPU: the launcher's LOCAL_RANK, known before accelerate's state exists.
        options["device_map"] = {"": local_rank() if plan.device == "cuda" else "cpu"}
    if plan.device == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        options["attn_implementation"] = "flash_attention_2"  # varlen kernels make padding-free pay
    model = AutoModelForCausalLM.from_pretrained(weights.base_dir, **options)
    if plan.quantization == "nf4":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=plan.gradient_checkpointing)
        _keep_4bit_trainable(model)
    return model


def _keep_4bit_trainable(model) -> None:
    """bitsandbytes (0.50.2) repacks a 4-bit weight for AVX512-BF16 inference the first time its layer
    runs in eval mode without grad (our initial evaluation, DPO's reference pass) and keeps it so; the
    training steps after that run through a kernel without a backward, so the gradient through the
    frozen base is dropped silently (PyTorch only warns "gemv_4bit: an autograd kernel was not
    registered"). A model that trains never takes that path."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def attach_adapter(model, weights: BaseWeights, settings: TrainSettings, plan: TrainPlan):
    """(model, peft_config): continue the adapter in `weights` (peft_config None: TRL must not add
    one), or describe a new LoRA adapter for TRL to create. (Given a continued adapter, TRL's DPO
    trainer copies it into a frozen "ref" adapter and uses that as the reference model.)"""
    from peft import LoraConfig, PeftModel

    if weights.adapter_dir is None:
        return model, LoraConfig(r=settings.lora.r, lora_alpha=settings.lora.alpha, lora_dropout=plan.lora_dropout,
                                 target_modules=settings.lora.target_modules, bias="none", task_type="CAUSAL_LM")
    model = PeftModel.from_pretrained(model, weights.adapter_dir, is_trainable=True)
    for module in model.modules():  # the continued adapter keeps its shape but takes this run's dropout
        if hasattr(module, "lora_dropout") and "default" in getattr(module, "lora_dropout", {}):
            module.lora_dropout["default"] = _dropout(plan.lora_dropout)
    return model, None


def _dropout(p: float):
    import torch

    return torch.nn.Dropout(p) if p > 0 else torch.nn.Identity()
