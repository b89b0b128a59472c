"""Seed readers on the real seed files, and FILE:LINE errors on malformed ones."""
from __future__ import annotations

import gzip
import json

import pytest

from bezoar.errors import DataError
from bezoar.generate.seeds import read_seeds


def test_dolly_rows_keep_instruction_context_response_and_category(data_dir):
    found = read_seeds(data_dir / "seeds/dolly15k_open_qa_subset.jsonl")
    assert len(found.seeds) == 3742 and not found.bad_lines
    first = found.seeds[0]
    assert first.instruction == "Why can camels survive for long without water?"
    assert first.target.startswith("Camels use the fat") and first.category == "open_qa"
    assert first.id == "dolly15k_open_qa_subset:1" and first.licence == "cc-by-sa-3.0"
    assert len({s.id for s in found.seeds}) == len(found.seeds)


def test_self_instruct_takes_the_first_instance_as_context_and_target(data_dir):
    found = read_seeds(data_dir / "seeds/self_instruct_seed_tasks.jsonl")
    assert len(found.seeds) == 175
    antonyms = next(s for s in found.seeds if s.id == "self_instruct_seed_tasks:seed_task_1")
    assert antonyms.context == "Night : Day :: Right : Left" and antonyms.category == "antonym_relation"
    assert antonyms.prompt == antonyms.instruction + "\n\n" + antonyms.context
    assert found.licences[str(data_dir / "seeds/self_instruct_seed_tasks.jsonl")] == ("self-instruct-seed-tasks", "apache-2.0")


def test_alpaca_json_array_is_read_with_its_non_commercial_licence(data_dir):
    found = read_seeds(data_dir / "seeds/alpaca_en_demo_llamafactory.json")
    assert len(found.seeds) == 999
    assert sum(1 for s in found.seeds if s.context) == 412
    assert {s.licence for s in found.seeds} == {"cc-by-nc-4.0"}


def test_flan_cot_tsv_unescapes_newlines_and_keeps_the_gold_answer(data_dir):
    found = read_seeds(data_dir / "seeds/flan/cot_data/aqua_train.tsv.gz")
    assert len(found.seeds) == 2728
    first = found.seeds[0]
    assert "\nOptions:\n(A) 300" in first.instruction and "\\n" not in first.instruction
    assert first.target == "(C)" and first.sub_collection == "cot" and first.licence == "apache-2.0"
    gsm8k = read_seeds(data_dir / "seeds/flan/cot_data/gsm8k_train.tsv.gz", limit=5)
    assert len(gsm8k.seeds) == 5 and gsm8k.seeds[0].target == "72"


def test_t0_sample_strips_the_end_of_text_marker(data_dir):
    found = read_seeds(data_dir / "seeds/flan/t0_p3_sample_25_per_template.jsonl.gz")
    assert len(found.seeds) == 6973
    assert all(s.sub_collection == "t0" and s.task for s in found.seeds)
    assert not any(s.target.endswith("<|endoftext|>") for s in found.seeds)


def _dolly_lines(data_dir, count=5) -> list[str]:
    with open(data_dir / "seeds/dolly15k_open_qa_subset.jsonl", encoding="utf-8") as handle:
        return [next(handle) for _ in range(count)]


def test_malformed_line_names_file_and_line_or_is_skipped_with_a_count(data_dir, tmp_path):
    lines = _dolly_lines(data_dir)
    lines[2] = '{"instruction": "cut off in the mid\n'
    lines[3] = '{"title": "no instruction here"}\n'
    path = tmp_path / "dolly_broken.jsonl"
    path.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(DataError) as caught:
        read_seeds(path)
    assert str(caught.value).startswith(f"{path}:3: not valid JSON")
    found = read_seeds(path, skip_bad=True)
    assert len(found.seeds) == 3 and len(found.bad_lines) == 2
    assert found.bad_lines[1].startswith(f"{path}:4: no instruction field") and "title" in found.bad_lines[1]


def test_json_array_error_names_the_line_of_the_bad_item(data_dir, tmp_path):
    rows = json.loads((data_dir / "seeds/alpaca_en_demo_llamafactory.json").read_text())[:3]
    rows[1] = {"instruction": 42}
    path = tmp_path / "alpaca_bad.json"
    path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    with pytest.raises(DataError) as caught:
        read_seeds(path)
    starts = [i + 1 for i, text in enumerate(json.dumps(rows, indent=2).splitlines()) if text == "  {"]
    assert str(caught.value) == f"{path}:{starts[1]}: field 'instruction' must be a string, got int"


def test_tsv_with_a_missing_column_is_reported(data_dir, tmp_path):
    with gzip.open(data_dir / "seeds/flan/cot_data/strategyqa_train.tsv.gz", "rt", encoding="utf-8") as handle:
        lines = [next(handle) for _ in range(4)]
    lines[1] = "a question with no answer column\n"
    path = tmp_path / "strategyqa_cut.tsv"
    path.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}:2: expected at least 2 tab-separated columns"):
        read_seeds(path)


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no such seed file"):
        read_seeds(tmp_path / "nope.jsonl")
