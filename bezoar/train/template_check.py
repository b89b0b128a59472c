"""One chat template, checked: render a training example exactly as the trainer sees it and fail
loudly on the template/EOS bugs that most often ruin fine-tunes silently.

Problems detected (each one sentence naming the fix):
- the EOS token the generator stops on does not follow the assistant reply, or carries no loss
  (the model never learns to stop: it rambles at inference while the loss looks healthy);
- the tokenizer's template is not the one the recipe expects (`expected_chat_template`), or not
  the one the adapter being continued was trained with;
- the prompt rendered alone (what generation sends) is not a prefix of prompt + reply (what
  training sees), so training and inference disagree at the boundary.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from bezoar.errors import DataError
from bezoar.train.encoding import IGNORE, encode_sft, template_sha256

# Used when no data file is given: one ordinary single-turn example.
SAMPLE = ([{"role": "user", "content": "Name three primary colours."}],
          [{"role": "assistant", "content": "Red, yellow and blue."}])


@dataclass
class TemplateReport:
    """What the trainer sees for one example, token by token, and what is wrong with it."""

    template_sha256: str
    eos_token: str
    tokens: list[tuple[int, str, bool]]  # (id, text, carries loss)
    prompt_length: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def marked_text(self, open_mark: str = "[[", close_mark: str = "]]") -> str:
        """The rendered example with loss-carrying spans between marks."""
        parts, inside = [], False
        for _, text, loss in self.tokens:
            if loss != inside:
                parts.append(open_mark if loss else close_mark)
                inside = loss
            parts.append(text)
        return "".join(parts) + (close_mark if inside else "")

    def to_json(self) -> dict:
        return {"template_sha256": self.template_sha256, "eos_token": self.eos_token, "ok": self.ok,
                "problems": self.problems, "prompt_tokens": self.prompt_length,
                "loss_tokens": sum(loss for *_, loss in self.tokens), "tokens": len(self.tokens)}


def check_template(tokenizer, prompt: list[dict], completion: list[dict], max_length: int = 4096,
                   loss: str = "assistant", expected_sha256: str | None = None,
                   trained_with: str | None = None) -> TemplateReport:
    """Render one example through `encode_sft` (the trainers' own path) and report its problems.

    `trained_with`: the template sha256 an adapter being continued was trained with.
    """
    encoded = encode_sft(tokenizer, prompt, completion, max_length=max_length, loss=loss)
    sha = template_sha256(tokenizer)
    tokens = [(i, tokenizer.decode([i]), label != IGNORE) for i, label in zip(encoded.input_ids, encoded.labels)]
    report = TemplateReport(sha, str(tokenizer.eos_token), tokens, encoded.prompt_length)
    report.problems += _eos_problems(tokenizer, encoded)
    if not encoded.prompt_matches:
        report.problems.append(
            "the prompt rendered for generation is not a prefix of prompt + reply as rendered for training "
            f"(they part after token {encoded.prompt_length}); use a template that renders the prompt the same way")
    if expected_sha256 and not sha.startswith(expected_sha256):
        report.problems.append(f"the tokenizer's chat template (sha256 {sha[:16]}) is not the one the recipe expects "
                               f"({expected_sha256[:16]}); fix the model or `expected_chat_template`")
    if trained_with and trained_with != sha:
        report.problems.append(f"the adapter being continued was trained with another chat template (sha256 "
                               f"{trained_with[:16]}, now {sha[:16]}); keep the `template` setting of the earlier stage")
    return report


def _eos_problems(tokenizer, encoded) -> list[str]:
    eos = tokenizer.eos_token_id
    if eos is None:
        return ["the tokenizer has no EOS token, so generation cannot know where a reply ends"]
    reply = list(zip(encoded.input_ids, encoded.labels))[encoded.prompt_length:]
    positions = [k for k, (token, _) in enumerate(reply) if token == eos]
    if not positions:
        return [f"the EOS token {tokenizer.eos_token!r} (id {eos}) does not follow the assistant reply, so the "
                "model never learns to stop; use a template that closes the assistant turn with EOS"]
    if reply[positions[0]][1] == IGNORE:
        return [f"the EOS token {tokenizer.eos_token!r} after the reply carries no loss, so the model never "
                "learns to stop"]
    return []


def trained_template(adapter_dir: Path | None) -> str | None:
    """The template sha256 recorded by the stage that wrote `adapter_dir` (None if unknown)."""
    if adapter_dir is None:
        return None
    try:
        return json.loads((Path(adapter_dir) / "bezoar-train.json").read_text()).get("template_sha256")
    except (OSError, ValueError):
        return None


def require_template(report: TemplateReport, where: str) -> None:
    """Raise before the first training step when the check found problems."""
    if report.problems:
        raise DataError(f"{where}: chat template check failed: " + "; ".join(report.problems))
