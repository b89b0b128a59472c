"""GRPO with the embedded SmolLM2 on real constraint prompts: the rewards are lm-eval's checkers, the
rollouts bezoar's seeded decoder, and a run killed after a checkpoint resumes where it was."""
from __future__ import annotations

import json
import random
import textwrap
import time
from pathlib import Path

import pytest

from killing import assert_same_adapter, kill_after_checkpoint

DOLLY = "seeds/dolly15k_open_qa_subset.jsonl"
TYPES = ["punctuation:no_comma", "change_case:english_lowercase", "startend:quotation", "detectable_format:title"]
# 2 prompts x 2 completions per step, 16 new tokens: seconds per step on two cores.
TINY = dict(max_steps=4, num_generations=2, per_device_train_batch_size=4, gradient_accumulation_steps=1,
            max_completion_length=16, learning_rate=1e-3, eval_steps=2, temperature=1.0)


def constraint_records(data_dir: Path, n: int, types: list[str] | None = TYPES):
    from bezoar.generate.constraints import make_records
    from bezoar.generate.seeds import read_seeds

    return make_records(read_seeds(data_dir / DOLLY).seeds, n, random.Random(3), types, 1, 2)


@pytest.fixture(scope="module")
def prompts_file(data_dir, tmp_path_factory) -> Path:
    from bezoar.records import write_jsonl

    path = tmp_path_factory.mktemp("grpo-data") / "prompts.jsonl"
    write_jsonl(path, constraint_records(data_dir, 4))
    return path


@pytest.fixture(scope="module")
def trained(prompts_file, tmp_path_factory) -> tuple[Path, dict]:
    """Four uninterrupted steps, on a fixed thread count (see `fixed_threads`)."""
    from bezoar.train.config import GRPOStageConfig
    from bezoar.train.grpo import train_grpo

    out = tmp_path_factory.mktemp("grpo") / "adapter"
    with pytest.MonkeyPatch.context() as patch:
        fixed_threads(patch)
        return out, train_grpo(GRPOStageConfig(**TINY), prompts_file, "local", out)


def fixed_threads(patch: pytest.MonkeyPatch) -> None:
    """The policy samples in bf16, whose sums depend on the thread count: bezoar's core sharing (which
    follows whatever else computes on the machine) is off, so a resumed run can be compared bit for bit."""
    patch.setenv("BEZOAR_SHARE_CORES", "0")


def test_the_reward_is_the_share_of_constraints_the_checkers_find_met(data_dir):
    from bezoar.records import ChatMessage, Record, RecordMeta
    from bezoar.train.rewards import constraint_share, prompt_row

    record = Record(messages=[ChatMessage(role="user", content="Describe rain. No commas, all lowercase.")],
                    meta=RecordMeta(method="constraints", details={
                        "instruction_id_list": ["punctuation:no_comma", "change_case:english_lowercase"],
                        "kwargs": [{}, {}]})).with_id()
    plain = Record(messages=[ChatMessage(role="user", content="Describe rain.")], meta=RecordMeta(method="dolly"))
    rows = [prompt_row(record)] * 3 + [prompt_row(plain)]
    answers = ["rain falls from clouds.", "Rain falls from clouds.", "Rain, water, clouds.", "Rain falls."]
    columns = {key: [row[key] for row in rows] for key in ("instruction_id_list", "constraint_kwargs")}
    rewards = constraint_share(prompts=[row["prompt"] for row in rows],
                               completions=[[{"role": "assistant", "content": a}] for a in answers], **columns)
    assert rewards == [1.0, 0.5, 0.0, None]  # both met; commas only; neither; nothing to check
    assert constraint_share([rows[0]["prompt"]], [[{"role": "assistant", "content": "   "}]],
                            [columns["instruction_id_list"][0]], [columns["constraint_kwargs"][0]]) == [0.0]


def test_shaping_terms_are_off_unless_weighted():
    from bezoar.train.config import GRPORewards
    from bezoar.train.rewards import missing_eos, overlong, reward_functions

    assert [f.__name__ for f in reward_functions(GRPORewards(), 64, [2])] == ["constraint_share"]
    both = reward_functions(GRPORewards(eos_penalty=0.5, overlong_penalty=1.0, overlong_buffer=4), 64, [2])
    assert [f.__name__ for f in both] == ["constraint_share", "eos_missing", "overlong_answer"]
    assert missing_eos([2], 0.5)(completion_ids=[[5, 2], [5, 6], []]) == [0.0, -0.5, -0.5]
    assert overlong(10, 4, 1.0)(completion_ids=[[1] * 6, [1] * 8, [1] * 10, [1] * 3]) == [0.0, -0.5, -1.0, 0.0]


def test_grpo_trains_on_verifiable_rewards(trained):
    out, summary = trained
    rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    steps = [row for row in rows if "reward" in row]
    assert [row["step"] for row in steps] == [1, 2, 3, 4]
    assert all(0 <= row["rewards/constraint_share/mean"] <= 1 for row in steps)
    assert all(0 < row["completions/mean_length"] <= 16 for row in steps)
    assert summary["global_step"] == 4 and summary["rollout"] == "bezoar" and summary["s_per_step"] > 0
    assert summary["data"]["train_examples"] == 4 and "lora_dropout 0.0" in summary["plan"]
    assert (out / "adapter_model.safetensors").exists() and not list(out.glob("checkpoint-*"))
    info = json.loads((out / "bezoar-train.json").read_text())
    assert info["finished"] and info["kind"] == "grpo"


def test_a_finished_run_is_not_repeated(trained, prompts_file):
    from bezoar.train.config import GRPOStageConfig
    from bezoar.train.grpo import train_grpo

    out, summary = trained
    start = time.perf_counter()
    assert train_grpo(GRPOStageConfig(**TINY), prompts_file, "local", out) == summary
    assert time.perf_counter() - start < 30


def test_prompts_nothing_can_verify_are_left_out(data_dir, tmp_path):
    from bezoar.errors import DataError
    from bezoar.records import ChatMessage, Record, RecordMeta
    from bezoar.train.config import GRPOStageConfig
    from bezoar.train.grpo import prepare_prompts, train_grpo
    from bezoar.train.encoding import load_tokenizer
    from bezoar.train.student import resolve_base

    plain = Record(messages=[ChatMessage(role="user", content="Describe rain.")], meta=RecordMeta(method="dolly", id="p1"))
    tokenizer = load_tokenizer(resolve_base("local").base_dir)
    prepared = prepare_prompts(tokenizer, constraint_records(data_dir, 2) + [plain], GRPOStageConfig(max_length=400))
    assert len(prepared.train) == 2 and prepared.bad == ["p1: no constraints, so no program can score its answers"]
    too_long = prepare_prompts(tokenizer, constraint_records(data_dir, 2), GRPOStageConfig(max_length=16))
    assert not too_long.train and "over max_length=16" in too_long.bad[0]
    with pytest.raises(DataError, match="no usable constraint prompt"):
        train_grpo(GRPOStageConfig(**TINY), [plain], "local", tmp_path / "none")


def test_groups_must_fit_a_step():
    from pydantic import ValidationError

    from bezoar.train.config import GRPOStageConfig

    with pytest.raises(ValidationError, match="multiple of num_generations"):
        GRPOStageConfig(num_generations=3, per_device_train_batch_size=4, gradient_accumulation_steps=1)


def test_rollouts_are_seeded_per_row_and_step(data_dir):
    """Each rollout's stream depends on (seed, step, prompt, its place in its group) alone."""
    from bezoar.llm.local import LocalBackend
    from bezoar.train.rollouts import BezoarRollouts

    backend = LocalBackend()
    model, tokenizer = backend.loaded.model, backend.tokenizer
    rollouts = BezoarRollouts(tokenizer, 8, temperature=1.0, top_p=1.0, seed=0)
    first, second = ([{"role": "user", "content": r.instruction}] for r in constraint_records(data_dir, 2))
    seeds = rollouts.row_seeds([first, first, second, second], step_seed=7)
    assert len(set(seeds)) == 4 and seeds == rollouts.row_seeds([first, first, second, second], 7)
    assert rollouts.row_seeds([second, second], 7) == seeds[2:]  # not the row's position in the batch
    assert rollouts.row_seeds([first], 8) != seeds[:1]  # another step, another sample
    ids = [rollouts.encode(first)] * 2 + [rollouts.encode(second)] * 2
    together = rollouts.decode(model, ids, seeds, "cpu")
    alone = rollouts.decode(model, ids[2:], seeds[2:], "cpu")
    assert together[2:] == alone and together[0] != together[1]  # batch-independent; a group's samples differ
    assert ids[0] == tokenizer.apply_chat_template(first, add_generation_prompt=True, tokenize=True,
                                                   return_dict=True)["input_ids"]  # as TRL renders the prompt


def test_trl_generation_runs_too(prompts_file, tmp_path):
    """The `transformers` rollout engine (TRL's own generate) trains as well."""
    from bezoar.train.config import GRPOStageConfig
    from bezoar.train.grpo import train_grpo

    summary = train_grpo(GRPOStageConfig(**{**TINY, "max_steps": 1, "rollout": "transformers"}), prompts_file,
                         "local", tmp_path / "adapter")
    assert summary["global_step"] == 1 and summary["rollout"] == "transformers"


RUNNER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from bezoar.train.config import GRPOStageConfig
    from bezoar.train.grpo import train_grpo
    train_grpo(GRPOStageConfig.model_validate_json(sys.argv[3]), Path(sys.argv[1]), "local", Path(sys.argv[2]))
""")


def test_resume_after_sigkill_keeps_the_finished_steps_and_goes_on(trained, prompts_file, tmp_path, monkeypatch):
    """Kill a real GRPO process after its step-2 checkpoint, start again: it resumes at step 2 (optimizer,
    scheduler, prompt order), keeps the two finished steps as they were and trains steps 3-4 once, as an
    uninterrupted run does. Four prompts make two steps an epoch: the resume starts the second epoch, whose
    prompt order TRL's sampler drew from a generator seeded once (so it differed after a resume) and
    bezoar's draws from (seed, epoch)."""
    from bezoar.train.config import GRPOStageConfig
    from bezoar.train.grpo import train_grpo

    fixed_threads(monkeypatch)

    out, settings = tmp_path / "adapter", GRPOStageConfig(**TINY)
    kill_after_checkpoint(RUNNER, [str(prompts_file), str(out), settings.model_dump_json()], out, step=2)
    before = [json.loads(line) for line in (out / "metrics.jsonl").open()]

    summary = train_grpo(settings, prompts_file, "local", out)
    assert summary["resumed_from"] == "checkpoint-2" and summary["global_step"] == 4
    rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    assert [row["step"] for row in rows if "reward" in row] == [1, 2, 3, 4]  # nothing repeated or lost
    finished = [r for r in before if "reward" in r and r["step"] <= 2]
    assert [r for r in rows if "reward" in r and r["step"] <= 2] == finished  # kept as the killed process wrote them
    uninterrupted = [json.loads(line) for line in (trained[0] / "metrics.jsonl").open()]
    assert [r["reward"] for r in rows if "reward" in r] == [r["reward"] for r in uninterrupted if "reward" in r]
    assert_same_adapter(out, trained[0])
