"""Functions the bezoar_* lm-eval task YAMLs name with `!function bezoar_tasks.NAME`.

lm-eval imports this file from beside the rendered YAMLs, so it must stand alone (no bezoar
imports). Where lm-eval ships the same helper for its hub version of a task, we import it instead
of copying it, so a local task scores exactly as lm-eval's own.
"""
import csv
import re

import datasets

from lm_eval.tasks.truthfulqa.utils import process_results_mc2  # noqa: F401  (named by the YAML)
from lm_eval.tasks.winogrande.preprocess_winogrande import doc_to_choice, doc_to_target, doc_to_text  # noqa: F401

MMLU_COLUMNS = ("question", "A", "B", "C", "D", "answer")


def hellaswag_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """The 6-lines-per-item text extraction -> lm-eval hellaswag docs (query, choices, gold label).

    Line 1 is "<activity_label>: <ctx>" (already joined and preprocessed as lm-eval's
    `process_docs` does), line 2 the gold index, lines 3-6 the endings.
    """
    lines = dataset["text"]
    if len(lines) % 6:
        raise ValueError(f"hellaswag text has {len(lines)} lines, not a multiple of 6 (query, label, 4 endings)")
    docs = []
    for start in range(0, len(lines), 6):
        query, label, *endings = lines[start:start + 6]
        docs.append({"query": _preprocess(query), "choices": [_preprocess(e) for e in endings],
                     "label": int(label), "gold": int(label)})
    return datasets.Dataset.from_list(docs)


def _preprocess(text: str) -> str:
    """lm-eval's hellaswag `preprocess` (idempotent on text that went through it already)."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def load_mmlu(data_dir: str, subject: str, **_) -> datasets.DatasetDict:
    """One MMLU subject from hendrycks' CSVs (no header: question, A-D, answer letter).

    Read with the csv module, not pandas, so every cell stays the exact string in the file
    (pandas would turn a choice such as "0.50" into 0.5 and "None" into a missing value).
    """
    splits = {}
    for split, folder in (("test", "test"), ("dev", "dev"), ("validation", "val")):
        path = f"{data_dir}/{folder}/{subject}_{folder}.csv"
        with open(path, newline="", encoding="utf-8") as handle:
            rows = [dict(zip(MMLU_COLUMNS, row)) for row in csv.reader(handle) if row]
        for row in rows:
            row["subject"] = subject
        splits[split] = datasets.Dataset.from_list(rows)
    return datasets.DatasetDict(splits)
