"""Each scheme with the real embedded teacher and real seeds: valid records with provenance and lineage,
top-up past rejections, recorded (never fatal) failures, the licence gate, and the recipe's generate step."""
from __future__ import annotations

import json

import pytest

from bezoar.errors import DataError, LicenceError
from bezoar.generate.config import EvolConfig, LaMiniConfig, OrcaConfig, SamplingConfig
from bezoar.generate.runner import GenerationIncomplete
from bezoar.generate.seeds import read_seeds
from bezoar.generate.stage import generate
from bezoar.prompts import scheme, template
from bezoar.records import Record, read_jsonl


def tight(max_new_tokens: int, temperature: float = 0.7) -> SamplingConfig:
    return SamplingConfig(temperature=temperature, max_new_tokens=max_new_tokens)


def _records(path) -> list[Record]:
    records = list(read_jsonl(path, Record))  # validates every line against the record model
    assert len({r.meta.id for r in records}) == len(records)
    return records


def _rejections(path) -> list[dict]:
    rejected = path.with_name(path.name.replace(".jsonl", ".rejected.jsonl"))
    return list(read_jsonl(rejected)) if rejected.exists() else []


def _licences(record: Record) -> dict:
    return {s.kind: (s.name, s.licence, s.commercial_use.value) for s in record.licence.sources}


def test_orca_answers_flan_tasks_under_the_papers_system_messages(local_model, data_dir, tmp_path):
    files = [data_dir / "seeds/flan/cot_data/gsm8k_train.tsv.gz", data_dir / "seeds/flan/t0_p3_sample_25_per_template.jsonl.gz"]
    config = OrcaConfig(n=3, seeds=[str(f) for f in files], mix={"cot": 1, "t0": 1}, response_sampling=tight(24), batch_size=4)
    out = tmp_path / "orca.jsonl"
    summary = generate("orca", config, local_model, "local", out, seed=1)
    records = _records(out)
    assert summary["records"] == len(records) == 3
    seeds = {s.id: s for f in files for s in read_seeds(f).seeds}
    allowed = scheme("orca")["sub_collections"]
    for record in records:
        details, seed = record.meta.details, seeds[record.meta.seed_ids[0]]
        assert record.instruction == seed.prompt and details["gold_target"] == seed.target
        group = details["sub_collection"]
        choices = (details["multiple_choice"] and allowed.get(f"{group}_multiple_choice")) or allowed[group]
        assert details["system_message_id"] in choices
        assert details["gold_short"] is (len(seed.target.split()) <= 5) and record.response
        assert record.meta.template == template("orca", "task").id and record.meta.sampling["max_new_tokens"] == 24
        assert _licences(record) == {"seed": (seed.dataset, "apache-2.0", "yes"), "teacher": ("local", "apache-2.0", "yes")}
        assert record.licence.commercial_use.value == "yes"
    with pytest.raises(DataError, match="different settings"):  # another seed would mix two streams in one file
        generate("orca", config, local_model, "local", out, seed=2)


def test_lamini_tops_up_past_rejections_to_exactly_n(local_model, data_dir, tmp_path):
    config = LaMiniConfig(n=2, seeds=[str(data_dir / "seeds/self_instruct_seed_tasks.jsonl")], batch_size=4,
                          instruction_sampling=tight(64, temperature=0.0), response_sampling=tight(16),
                          max_attempts_per_record=20)
    out = tmp_path / "lamini.jsonl"
    summary = generate("lamini", config, local_model, "local", out, seed=3)
    records = _records(out)
    assert len(records) == 2 and summary["attempts"] >= 2
    assert len({r.instruction.lower() for r in records}) == 2
    seed_ids = {s.id for s in read_seeds(data_dir / "seeds/self_instruct_seed_tasks.jsonl").seeds}
    for record in records:
        details = record.meta.details
        assert details["mode"] in ("example_guided", "topic_guided") and (details["mode"] == "topic_guided") == bool(details["topics"])
        assert record.meta.template == template("lamini", details["mode"]).id
        assert len(record.meta.seed_ids) == 3 and set(record.meta.seed_ids) <= seed_ids
        assert record.meta.sampling["instruction"]["max_new_tokens"] == 64 and record.response
    rejections = _rejections(out)
    assert sum(summary["rejected"].values()) == len(rejections) == summary["attempts"] - 2
    assert all(r["raw"] and r["reason"] and r["stage"] in ("instruction_list", "instruction", "response") for r in rejections)
    # Batch size only groups the calls: one item per round gives the same file, entirely from the cache.
    one_by_one = generate("lamini", config.model_copy(update={"batch_size": 1}), local_model, "local",
                          tmp_path / "one_by_one.jsonl", seed=3)
    assert (tmp_path / "one_by_one.jsonl").read_text() == out.read_text() and one_by_one["usage"]["calls"] == 0


def test_unparseable_teacher_lists_are_recorded_then_the_attempt_limit_stops_cleanly(local_model, data_dir, tmp_path):
    config = LaMiniConfig(n=1, seeds=[str(data_dir / "seeds/dolly15k_open_qa_subset.jsonl")], batch_size=2,
                          instruction_sampling=tight(2), max_attempts_per_record=3)
    out = tmp_path / "lamini.jsonl"
    with pytest.raises(GenerationIncomplete, match=r"attempt limit .* 0 of 1 records .*unparseable_list"):
        generate("lamini", config, local_model, "local", out)
    rejections = _rejections(out)
    assert len(rejections) >= 3 and {r["reason"] for r in rejections} == {"unparseable_list"}
    assert all(r["stage"] == "instruction_list" and len(r["seed_ids"]) == 3 for r in rejections)
    assert not out.exists() or out.read_text() == ""


def test_evol_instruct_records_parent_epoch_and_operation(local_model, data_dir, tmp_path):
    seed_file = data_dir / "seeds/dolly15k_open_qa_subset.jsonl"
    config = EvolConfig(n=2, seeds=[str(seed_file)], epochs=2, pool_size=2, batch_size=2,
                        evolve_sampling=tight(32, temperature=0.0), response_sampling=tight(16, temperature=0.0),
                        max_attempts_per_record=20)
    out = tmp_path / "evol.jsonl"
    summary = generate("evol", config, local_model, "local", out, seed=4)
    records = _records(out)
    assert summary["records"] == len(records) == 2
    seeds = {s.id: s for s in read_seeds(seed_file).seeds}
    by_id = {r.meta.id: r for r in records}
    for record in records:
        details = record.meta.details
        assert details["strategy"] in ("in_depth", "in_breadth") and details["epoch"] in (1, 2)
        assert (details["operation"] in config.operations) if details["strategy"] == "in_depth" else details["operation"] is None
        assert record.meta.template == template("evol_instruct", details["strategy"]).id
        assert details["equality"] == "skipped" and details["category"] == "open_qa"
        root = seeds[details["root_seed_id"]]
        if details["generation"] == 1:
            assert details["parent_id"] == root.id and details["parent_instruction"] == root.prompt
        elif details["parent_id"] in by_id:
            assert by_id[details["parent_id"]].instruction == details["parent_instruction"]
        assert "rewritten prompt" not in record.instruction.lower()
    assert all(r["reason"] in ("empty_evolution", "leaked_template", "no_information_gain", "sorry_short",
                               "only_stopwords") for r in _rejections(out))
    one_by_one = generate("evol", config.model_copy(update={"batch_size": 1}), local_model, "local",
                          tmp_path / "one_by_one.jsonl", seed=4)
    assert (tmp_path / "one_by_one.jsonl").read_text() == out.read_text() and one_by_one["usage"]["calls"] == 0


def test_evol_equality_check_asks_the_judge(local_model, data_dir, tmp_path):
    config = EvolConfig(n=1, seeds=[str(data_dir / "seeds/self_instruct_seed_tasks.jsonl")], epochs=1, pool_size=2,
                        batch_size=2, equality_attempts=1, on_unparseable_equality="keep",
                        evolve_sampling=tight(24, temperature=0.0), response_sampling=tight(12, temperature=0.0),
                        max_attempts_per_record=20)
    out = tmp_path / "evol.jsonl"
    generate("evol", config, local_model, "local", out, judge=local_model, judge_spec="local")
    record = _records(out)[0]
    assert record.meta.details["equality"] in (False, None) and record.meta.details["judge"] == "local"
    assert not any(r["reason"] == "equality_unparseable" for r in _rejections(out))  # "keep" keeps them


def test_licence_gate_refuses_a_non_commercial_seed_before_loading_anything(data_dir, tmp_path):
    opened = []
    config = OrcaConfig(n=2, seeds=[str(data_dir / "seeds/alpaca_en_demo_llamafactory.json")])
    with pytest.raises(LicenceError) as caught:
        generate("orca", config, lambda: opened.append(1), "local", tmp_path / "x.jsonl", require_commercial_use=True)
    assert "alpaca_en_demo_llamafactory.json" in str(caught.value) and "cc-by-nc-4.0" in str(caught.value)
    assert opened == [] and not (tmp_path / "x.jsonl").exists()
    with pytest.raises(LicenceError, match="teacher 'anthropic:claude-2.1'"):
        generate("orca", OrcaConfig(n=1, seeds=[str(data_dir / "seeds/flan/cot_data/qasc_train.tsv.gz")]),
                 lambda: opened.append(1), "anthropic:claude-2.1", tmp_path / "x.jsonl", require_commercial_use=True)


def test_recipe_step_writes_the_run_layout(local_model, data_dir, tmp_path):
    from bezoar.config import load_recipe
    from bezoar.steps.base import StepContext

    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(f"""
run: {{name: gen, seed: 5, require_commercial_use: true}}
steps:
  - type: generate
    lamini: {{n: 0}}
    evol: {{n: 0}}
    orca:
      n: 2
      seeds: ["{data_dir}/seeds/flan/cot_data/strategyqa_train.tsv.gz"]
      response_sampling: {{temperature: 0.7, max_new_tokens: 16}}
""", encoding="utf-8")
    recipe = load_recipe(recipe_path)

    def run_generate():
        return recipe.step("generate").run(StepContext(recipe, tmp_path / "run", "generate", {"teacher": local_model}))

    result = run_generate()
    out = tmp_path / "run/generate/orca.jsonl"
    assert list(result.details["schemes"]) == ["orca"]
    assert result.outputs == {"orca": "generate/orca.jsonl"}  # handed on relative to the run
    first = _records(out)
    assert len(first) == 2 and json.loads((tmp_path / "run/generate/orca.generate.json").read_text())["n"] == 2

    again = run_generate().details["schemes"]["orca"]
    assert again["new_records"] == 0 and again["usage"]["calls"] == 0 and again["usage"]["cache_hits"] >= 2

    recipe.step("generate").orca.n = 3  # a bigger n extends the same stream: the first records stay as they were
    more = run_generate().details["schemes"]["orca"]
    assert more["new_records"] == 1 and [r.meta.id for r in _records(out)[:2]] == [r.meta.id for r in first]


def test_recipe_generate_step_errors_name_file_line_and_key(tmp_path):
    from bezoar.config import load_recipe
    from bezoar.errors import ConfigError

    path = tmp_path / "bad.yaml"
    path.write_text("steps:\n  - type: generate\n    evol:\n      epochs: 0\n      selektion: per_epoch\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_recipe(path)
    lines = str(caught.value).splitlines()
    assert lines[0].startswith(f"{path}:4: steps.0.evol.epochs:") and lines[1].startswith(f"{path}:5: steps.0.evol.selektion: unknown key")
