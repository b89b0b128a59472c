"""The launch plumbing without training: when a step asks for a launch, its recipe keys, the thread share
of each rank, and the one-line failure when a private TRL/transformers API is out of range (the accelerate
command line itself: tests/test_processes.py)."""
from __future__ import annotations

import pytest

from bezoar.errors import BezoarError, ConfigError


def test_launch_settings_ask_for_a_launch_only_when_needed(tmp_path):
    from bezoar.train.config import LaunchSettings

    assert not LaunchSettings().wanted and LaunchSettings(num_processes=2).wanted
    assert LaunchSettings(config_file=tmp_path / "fsdp.yaml").wanted  # an FSDP or DeepSpeed config, even on 1


def test_launch_section_is_validated_with_its_line(tmp_path):
    from bezoar.config import load_recipe

    path = tmp_path / "recipe.yaml"
    path.write_text("steps:\n  - type: dpo\n    launch:\n      num_processes: 0\n")
    with pytest.raises(ConfigError, match=r"recipe.yaml:4: steps.0.launch.num_processes"):
        load_recipe(path)
    path.write_text("steps:\n  - type: sft\n    launch: {num_processes: 2, config_file: recipes/accelerate/fsdp.yaml}\n")
    assert load_recipe(path).step("sft").launch.num_processes == 2


def test_shipped_accelerate_configs_load():
    from pathlib import Path

    from accelerate.commands.config.config_args import load_config_from_file

    folder = Path(__file__).resolve().parents[1] / "recipes/accelerate"
    kinds = {p.name: str(load_config_from_file(str(p)).distributed_type) for p in sorted(folder.glob("*.yaml"))}
    assert kinds == {"deepspeed-zero2.yaml": "DistributedType.DEEPSPEED", "fsdp.yaml": "DistributedType.FSDP"}


def test_ranks_share_the_cores(monkeypatch):
    from bezoar.llm.device import cpu_threads
    from bezoar.train.config import SFTStageConfig
    from bezoar.train.student import plan_training

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert plan_training(SFTStageConfig(dtype="float32")).threads == max(1, cpu_threads() // 2)


def test_private_api_out_of_range_fails_in_one_line(monkeypatch):
    from bezoar import private_apis as versions

    versions.require.cache_clear()
    monkeypatch.setitem(versions.SUPPORTED, "trl", ("0.1", "0.2"))
    with pytest.raises(versions.UnsupportedVersion) as error:
        versions.require("trl", "bezoar's DPO trainer")
    message = str(error.value)
    assert "\n" not in message and "trl>=0.1,<0.2" in message and "bezoar's DPO trainer" in message
    versions.require.cache_clear()
    monkeypatch.undo()
    versions.require("trl", "bezoar's DPO trainer")  # the installed one is in range
    versions.require("transformers", "the decoder")
