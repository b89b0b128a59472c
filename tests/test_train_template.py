"""The template check on the real SmolLM2 tokenizer: a good template passes, the classic template and
EOS bugs fail loudly, and the CLI shows the loss tokens. Also: training config errors are one line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bezoar.errors import ConfigError, DataError
from bezoar.train.template_check import SAMPLE, check_template, require_template

BEZOAR = str(Path(sys.executable).parent / "bezoar")


@pytest.fixture
def tokenizer():
    from bezoar.llm.weights import resolve_model_dir
    from bezoar.train.encoding import load_tokenizer

    return load_tokenizer(resolve_model_dir(None))


def test_smollm2_chat_template_passes_and_marks_the_reply(tokenizer):
    report = check_template(tokenizer, *SAMPLE)
    assert report.ok, report.problems
    marked = report.marked_text()
    assert marked.endswith("[[Red, yellow and blue.<|im_end|>\n]]")  # reply + EOS carry loss, nothing else
    assert marked.count("[[") == 1 and "<|im_start|>assistant\n[[" in marked
    full = check_template(tokenizer, *SAMPLE, loss="full")
    assert all(loss for *_, loss in full.tokens)


def test_paper_alpaca_template_passes(tokenizer):
    from bezoar.train.encoding import ALPACA_TEMPLATE

    tokenizer.chat_template = ALPACA_TEMPLATE
    report = check_template(tokenizer, *SAMPLE)
    assert report.ok, report.problems
    assert "### Instruction:\nName three primary colours.\n\n### Response:[[Red, yellow and blue.<|im_end|>]]" in \
        report.marked_text()


def test_template_without_eos_after_the_reply_fails(tokenizer):
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}assistant: {% endif %}")
    report = check_template(tokenizer, *SAMPLE)
    assert any("does not follow the assistant reply" in p for p in report.problems)
    with pytest.raises(DataError, match="sft: chat template check failed: the EOS token '<|im_end|>'"):
        require_template(report, "sft")


def test_prompt_that_renders_differently_alone_fails(tokenizer):
    # The generation prompt ends "assistant:\n" but a rendered reply follows "assistant: " directly.
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<|im_end|>{% endfor %}"
                               "{% if add_generation_prompt %}assistant:\n{% endif %}")
    report = check_template(tokenizer, *SAMPLE)
    assert any("not a prefix" in p for p in report.problems)


def test_unexpected_template_and_changed_template_fail(tokenizer):
    report = check_template(tokenizer, *SAMPLE, expected_sha256="0123456789abcdef")
    assert any("not the one the recipe expects" in p for p in report.problems)
    assert check_template(tokenizer, *SAMPLE, expected_sha256=report.template_sha256[:12]).ok
    report = check_template(tokenizer, *SAMPLE, trained_with="f" * 64)
    assert any("trained with another chat template" in p for p in report.problems)


def test_check_template_cli(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                            {"role": "assistant", "content": "Hello!"}]}) + "\n")
    run = subprocess.run([BEZOAR, "check-template", "--data", str(bad), "--json",
                          "--expect", "deadbeef"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 2
    assert json.loads(run.stdout.splitlines()[0])["loss_tokens"] == 4  # "Hello!" + <|im_end|> + "\n"
    assert "not the one the recipe expects" in run.stderr and len(run.stderr.strip().splitlines()) == 1
    ok = subprocess.run([BEZOAR, "check-template"], capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0 and "ok" in ok.stdout


def test_bad_training_hyperparameter_is_one_line_with_the_key(tmp_path):
    from bezoar.config import load_recipe

    recipe = tmp_path / "bad.yaml"
    recipe.write_text("steps:\n  - type: sft\n    learning_rate: -0.1\n    lora:\n      dropout: 1.5\n"
                      "  - type: dpo\n    beta: 0\n")
    with pytest.raises(ConfigError) as error:
        load_recipe(recipe)
    lines = str(error.value).splitlines()
    assert lines[0].startswith(f"{recipe}:3: steps.0.learning_rate: Input should be greater than 0")
    assert any(line.startswith(f"{recipe}:5: steps.0.lora.dropout: must be in [0, 1) or 'auto'") for line in lines)
    assert any(line.startswith(f"{recipe}:7: steps.1.beta:") for line in lines)
    run = subprocess.run([BEZOAR, "sft", "--data", str(recipe), "--out",
                          str(tmp_path / "o"), "--learning-rate", "-1"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 2 and run.stderr.strip().startswith("--learning-rate: Input should be greater than 0")
