"""Constraint prompts: the catalogue covers IFEval's 25 instruction types, lm-eval's checkers accept
every record's parameters and verify answers written to satisfy them, and IFEval's prompts are nowhere
in what is generated (the 13-gram contamination check finds none)."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

BEZOAR = str(Path(sys.executable).parent / "bezoar")
DOLLY = "seeds/dolly15k_open_qa_subset.jsonl"
IFEVAL = "eval/ifeval/input_data.jsonl"


@pytest.fixture(scope="module")
def records(data_dir):
    from bezoar.generate.constraints import make_records
    from bezoar.generate.seeds import read_seeds

    seeds = read_seeds(data_dir / DOLLY).seeds
    seeds += read_seeds(data_dir / "seeds/self_instruct_seed_tasks.jsonl").seeds
    return make_records(seeds, 600, random.Random(0))


def test_catalogue_covers_ifevals_instruction_types(records):
    from bezoar.evaluate.ifeval import instruction_registry
    from bezoar.generate.constraints import CATALOGUE

    assert set(CATALOGUE) == set(instruction_registry()) and len(CATALOGUE) == 25
    used = {name for r in records for name in r.meta.details["instruction_id_list"]}
    assert used == set(CATALOGUE)  # 600 prompts draw every type
    sizes = [len(r.meta.details["instruction_id_list"]) for r in records]
    assert min(sizes) == 1 and max(sizes) == 3
    for record in records:
        names = record.meta.details["instruction_id_list"]
        groups = [CATALOGUE[n].group for n in names if CATALOGUE[n].group]
        assert len(groups) == len(set(groups)), names
        assert len(names) == 1 or not any(CATALOGUE[n].alone for n in names), names
        assert record.meta.seed_ids and record.licence.sources and record.meta.id


def test_checkers_accept_every_record_and_verify_written_answers(records):
    from bezoar.evaluate.ifeval import follow, share_followed
    from bezoar.generate.constraints import checker_doc

    for key, record in enumerate(records[:200]):
        result = follow(checker_doc(record, key), "x")  # build_description takes every drawn parameter
        assert len(result["inst_level_strict_acc"]) == len(record.meta.details["instruction_id_list"])

    def single(name: str) -> tuple[dict, dict]:
        record = next(r for r in records if r.meta.details["instruction_id_list"] == [name])
        return checker_doc(record), record.meta.details["kwargs"][0]

    doc, _ = single("punctuation:no_comma")
    assert share_followed(doc, "A reply without any of them.") == 1.0 and share_followed(doc, "One, two.") == 0.0
    doc, kwargs = single("startend:end_checker")
    assert share_followed(doc, f"Camels store fat. {kwargs['end_phrase']}") == 1.0
    doc, kwargs = single("combination:repeat_prompt")
    assert share_followed(doc, f"{kwargs['prompt_to_repeat']} The answer follows.") == 1.0
    assert share_followed(doc, "The answer follows.") == 0.0
    doc, _ = single("detectable_format:json_format")
    assert share_followed(doc, '{"answer": "yes"}') == 1.0 and share_followed(doc, "yes") == 0.0
    doc, kwargs = single("detectable_format:number_bullet_lists")
    bullets = "\n".join(f"* point {i}" for i in range(kwargs["num_bullets"]))
    assert share_followed(doc, bullets) == 1.0 and share_followed(doc, bullets + "\n* extra") == 0.0


def test_no_ifeval_prompt_leaks_into_constraint_prompts(records, data_dir):
    from bezoar.filter.config import ContaminationConfig
    from bezoar.filter.contamination import build_index

    index = build_index([data_dir / IFEVAL], ContaminationConfig.model_validate({"embedding": {"enabled": False}}))
    assert index.matches(json.loads((data_dir / IFEVAL).open().readline())["prompt"])  # the check does fire
    leaked = [(r.instruction, hits) for r in records if (hits := index.matches(r.instruction))]
    assert leaked == []


def test_constraints_command_needs_no_teacher(tmp_path, data_dir):
    out = tmp_path / "prompts.jsonl"
    command = [BEZOAR, "generate", "--method", "constraints", "--seeds", str(data_dir / DOLLY), "--n", "40",
               "--out", str(out), "--teacher", "openai:none@http://127.0.0.1:9/v1", "--require-commercial-use"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    first = out.read_text()
    lines = [json.loads(line) for line in first.splitlines()]
    assert len(lines) == 40 and all(line["meta"]["method"] == "constraints" for line in lines)
    assert [m["role"] for m in lines[0]["messages"]] == ["user"]
    assert subprocess.run(command, capture_output=True, text=True, timeout=300).returncode == 0
    assert out.read_text() == first  # the same seed gives the same prompts
    bad = subprocess.run([BEZOAR, "generate", "--method", "constraint", "--seeds", str(data_dir / DOLLY), "--n", "4",
                          "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "constraints" in bad.stderr
