"""SFT with the embedded SmolLM2 on real Dolly answers: loss falls on a tiny over-fit set, the run
resumes after SIGKILL exactly where it was, the sft step's data sets continue one adapter, and export round-trips."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bezoar.records import ChatMessage, Record, RecordMeta, write_jsonl
from recipe_dicts import hand_on

REPO = Path(__file__).resolve().parents[1]
TINY = dict(max_steps=6, per_device_train_batch_size=4, gradient_accumulation_steps=1, warmup_steps=0,
            learning_rate=3e-3, eval_steps=2, logging_steps=1, max_length=64, validation_fraction=0.0)


def dolly_records(data_dir: Path, count: int, skip: int = 0) -> list[Record]:
    """Short real Dolly question/answer pairs as chat records."""
    rows = [json.loads(line) for line in (data_dir / "seeds/dolly15k_open_qa_subset.jsonl").open()]
    short = [r for r in rows if len(r["instruction"]) + len(r["response"]) < 160][skip:skip + count]
    return [Record(messages=[ChatMessage(role="user", content=r["instruction"]),
                             ChatMessage(role="assistant", content=r["response"])],
                   meta=RecordMeta(method="dolly", seed_ids=[str(i)])).with_id() for i, r in enumerate(short)]


@pytest.fixture(scope="module")
def records_file(data_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sft-data") / "dolly.jsonl"
    write_jsonl(path, dolly_records(data_dir, 8))
    return path


@pytest.fixture(scope="module")
def trained(records_file, tmp_path_factory) -> tuple[Path, dict]:
    """Six steps over the same eight examples (an over-fit set), uninterrupted."""
    from bezoar.train.config import SFTStageConfig
    from bezoar.train.sft import train_sft

    out = tmp_path_factory.mktemp("sft") / "adapter"
    return out, train_sft("local", [records_file], out, SFTStageConfig(**TINY))


def test_loss_falls_and_outputs_are_complete(trained):
    out, summary = trained
    rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    losses = [row["loss"] for row in rows if "loss" in row]
    assert len(losses) == 6 and all(0 < loss < 20 for loss in losses)
    assert summary["last_train_loss"] < 0.8 * summary["first_train_loss"], losses
    assert (out / "adapter_model.safetensors").exists() and (out / "tokenizer_config.json").exists()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert not list(out.glob("checkpoint-*"))  # removed once the run is done
    info = json.loads((out / "bezoar-train.json").read_text())
    assert info["finished"] and info["template_sha256"] == summary["template_sha256"]
    assert "lora_dropout 0.0" in summary["plan"]  # CPU: no dropout


def test_a_finished_run_is_not_repeated(trained, records_file):
    from bezoar.train.config import SFTStageConfig
    from bezoar.train.sft import train_sft

    out, summary = trained
    start = time.perf_counter()
    again = train_sft("local", [records_file], out, SFTStageConfig(**TINY))
    assert again == summary and time.perf_counter() - start < 30


RUNNER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from bezoar.train.config import SFTStageConfig
    from bezoar.train.sft import train_sft
    settings = SFTStageConfig.model_validate_json(sys.argv[3])
    train_sft("local", [Path(sys.argv[1])], Path(sys.argv[2]), settings)
""")


def test_resume_after_sigkill_matches_an_uninterrupted_run(trained, records_file, tmp_path):
    """Kill a real training process after its step-2 checkpoint, start again: it resumes at step 2
    (optimizer, scheduler, data order) and ends with the uninterrupted run's weights."""
    from safetensors.torch import load_file

    from bezoar.train.config import SFTStageConfig
    from bezoar.train.sft import train_sft

    out = tmp_path / "adapter"
    settings = SFTStageConfig(**TINY)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-c", RUNNER, str(records_file), str(out), settings.model_dump_json()],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (out / "checkpoint-2" / "trainer_state.json").exists():
        assert process.poll() is None, "the training process ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.5)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert not (out / "summary.json").exists()

    summary = train_sft("local", [records_file], out, settings)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    assert [row["step"] for row in rows if "loss" in row] == [1, 2, 3, 4, 5, 6]  # nothing repeated or lost
    assert summary["global_step"] == 6
    resumed = load_file(out / "adapter_model.safetensors")
    uninterrupted = load_file(trained[0] / "adapter_model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    for name, tensor in uninterrupted.items():
        assert (resumed[name].float() - tensor.float()).abs().max() < 1e-4, name


def test_a_run_killed_while_finishing_takes_no_step_past_max_steps(records_file, tmp_path, monkeypatch):
    """Killed after its checkpoint at max_steps was saved but before it was marked done (while writing its
    summary): the resumed run ends at max_steps. 3 steps where an epoch has 2: transformers alone skips
    the batch done in epoch 2 and trains one more before it checks the limit. The kill is raised in
    `_finish` (a SIGKILL cannot be timed into that window reliably)."""
    from bezoar.train import run
    from bezoar.train.config import SFTStageConfig
    from bezoar.train.sft import train_sft

    out, settings = tmp_path / "adapter", SFTStageConfig(**{**TINY, "max_steps": 3, "eval_steps": 3})

    def killed(*args, **kwargs):
        raise SystemExit("killed while finishing")

    monkeypatch.setattr(run, "_finish", killed)
    with pytest.raises(SystemExit):
        train_sft("local", [records_file], out, settings)
    assert (out / "checkpoint-3" / "trainer_state.json").exists() and not (out / "summary.json").exists()
    monkeypatch.undo()

    summary = train_sft("local", [records_file], out, settings)
    assert summary["global_step"] == 3 and summary["resumed_from"] == "checkpoint-3"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    assert [row["step"] for row in rows if "loss" in row] == [1, 2, 3]


def test_sequential_data_sets_continue_one_adapter(data_dir, tmp_path):
    """The `sft` step over two data sets: the second continues the first one's adapter."""
    from safetensors.torch import load_file

    from bezoar.config import Recipe
    from bezoar.steps.base import StepContext

    run_dir = tmp_path / "run"
    kept = {name: run_dir / "filter" / f"{name}.jsonl" for name in ("lamini", "evol")}
    for (name, path), skip in zip(kept.items(), (0, 8)):
        write_jsonl(path, dolly_records(data_dir, 6, skip))
    # The pipeline's record of a done filter step (what sft asks for by name), paths relative to the run.
    hand_on(run_dir, "filter", kept)
    settings = {**TINY, "max_steps": 2, "validation_fraction": 0.34}
    recipe = Recipe.model_validate({"steps": [{"type": "filter"}, {"type": "sft", **settings,
                                                                     "datasets": ["lamini", "evol"]}]})
    result = recipe.step("sft").run(StepContext(recipe, run_dir, "sft"))
    first, second = (run_dir / "sft/sft-1-lamini", run_dir / "sft/sft-2-evol")
    assert result.details["runs"][-1]["output"] == str(second)
    assert result.checkpoints == {"sft-1-lamini": "sft/sft-1-lamini", "sft-2-evol": "sft/sft-2-evol"}
    info = json.loads((second / "bezoar-train.json").read_text())
    assert info["continued_adapter"] == str(first)
    assert all(run["initial_eval"]["eval_loss"] > 0 for run in result.details["runs"])
    a, b = load_file(first / "adapter_model.safetensors"), load_file(second / "adapter_model.safetensors")
    assert a.keys() == b.keys() and any(not (a[k] == b[k]).all() for k in a)


def test_export_merges_to_a_model_plain_transformers_loads(trained, tmp_path):
    """The merged model's greedy output equals base + adapter's, and so does the GGUF's."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bezoar.train.export import export

    adapter, _ = trained
    out = tmp_path / "merged"
    export(adapter, out, gguf=True)
    assert (out / "model.safetensors").exists() and not (out / "adapter_config.json").exists()
    tokenizer = AutoTokenizer.from_pretrained(out)
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    base_dir = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), adapter)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Who gave the UN the land in NY?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    alone = tmp_path / "gguf"  # transformers' GGUF reader, with nothing but the .gguf beside it
    alone.mkdir()
    (out / "model.gguf").rename(alone / "model.gguf")
    from_gguf = AutoModelForCausalLM.from_pretrained(alone, gguf_file="model.gguf", dtype=torch.float32)
    assert AutoTokenizer.from_pretrained(alone, gguf_file="model.gguf").chat_template == tokenizer.chat_template
    outputs = [m.generate(**prompt, max_new_tokens=12, do_sample=False)[0].tolist()
               for m in (merged, unmerged, from_gguf)]
    assert outputs[0] == outputs[1] == outputs[2]
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(adapter).chat_template
    assert merged.generation_config.eos_token_id == tokenizer.eos_token_id
