"""Records and preference pairs → token ids and loss labels, exactly as the trainers see them.

bezoar tokenizes before handing data to TRL (TRL skips its own tokenization for data that already
has `input_ids`), for three reasons: the template check must show the very ids the trainer trains
on; padding-free batching needs sequences truncated beforehand (TRL refuses `max_length` there);
and HH-RLHF dialogues are too long for 256-512 tokens, so whole early turns are dropped rather
than cutting the reply. The rule itself is TRL's: render the prompt with the generation prompt,
render prompt + reply, and the reply starts where the two token lists stop agreeing.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from bezoar.errors import DataError
from bezoar.records import PreferencePair

IGNORE = -100  # the label PyTorch's cross-entropy (and TRL) skip

ALPACA_SYSTEM = ("Below is an instruction that describes a task, optionally paired with an input that provides "
                 "further context following that. Write a response that appropriately completes the request.")
# The paper's training format as a chat template, so generation and evaluation render it too.
# "### Response:" is followed directly by the reply, then EOS (PAPER-NOTES §2.1).
ALPACA_TEMPLATE = (
    "{%- set system = namespace(text='" + ALPACA_SYSTEM + "') -%}"
    "{%- for m in messages if m['role'] == 'system' %}{% set system.text = m['content'] %}{% endfor -%}"
    "### System:\n{{ system.text }}"
    "{%- for m in messages if m['role'] != 'system' -%}"
    "{%- if m['role'] == 'user' %}{{ '\\n\\n### Instruction:\\n' }}{{ m['content'] }}{{ '\\n\\n### Response:' }}"
    "{%- else %}{{ m['content'] }}{{ eos_token }}{% endif -%}"
    "{%- endfor -%}"
)


@dataclass
class Encoded:
    """One training sequence: ids, labels (IGNORE where no loss) and where the reply starts."""

    input_ids: list[int]
    labels: list[int]
    prompt_length: int
    prompt_matches: bool
    """False when the prompt rendered alone is not a prefix of prompt + reply (a template bug)."""
    truncated: bool = False


def load_tokenizer(model_dir: Path | str, template: str = "chat"):
    """The student's tokenizer, with the paper's template installed when `template == "alpaca"`."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if template == "alpaca":
        tokenizer.chat_template = ALPACA_TEMPLATE
    if not tokenizer.chat_template:
        raise DataError(f"{model_dir}: the tokenizer has no chat template; set `template: alpaca` to use the "
                        "paper's ### Instruction / ### Response format")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def template_sha256(tokenizer) -> str:
    return hashlib.sha256((tokenizer.chat_template or "").encode()).hexdigest()


def _ids(tokenizer, messages: list[dict], generation_prompt: bool) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                              add_generation_prompt=generation_prompt)["input_ids"])


def encode_sft(tokenizer, prompt: list[dict], completion: list[dict], max_length: int,
               loss: str = "assistant") -> Encoded:
    """Chat-templated ids; labels on the reply (loss="assistant") or everything (loss="full").

    A multi-turn prompt that does not fit loses its oldest exchanges first (HH-RLHF dialogues);
    what still does not fit is cut at the end.
    """
    from trl.data_utils import common_prefix_length

    system = [m for m in prompt[:1] if m["role"] == "system"]
    turns = prompt[len(system):]
    while True:
        prompt_ids = _ids(tokenizer, system + turns, generation_prompt=True)
        full_ids = _ids(tokenizer, system + turns + completion, generation_prompt=False)
        if len(full_ids) <= max_length or len(turns) <= 2:
            break
        turns = turns[2:]  # drop the oldest user/assistant exchange, keep the last user turn
    start = common_prefix_length(prompt_ids, full_ids)
    labels = list(full_ids) if loss == "full" else [IGNORE] * start + full_ids[start:]
    truncated = len(full_ids) > max_length
    return Encoded(full_ids[:max_length], labels[:max_length], start, start == len(prompt_ids), truncated)


def encode_pair(tokenizer, pair: PreferencePair, max_length: int) -> dict | None:
    """`prompt_ids`, `chosen_ids`, `rejected_ids` fitting `max_length`, or None if even the last
    Human turn leaves no room for a reply.

    Early turns are dropped (a user/assistant exchange at a time) until prompt + the longer reply
    fits; then the replies are cut at the end. A cut reply loses its EOS, which is fine for DPO:
    both replies are scored on the same tokens they have.
    """
    from trl.data_utils import common_prefix_length

    prompt = [m.model_dump() for m in pair.prompt]
    system = [m for m in prompt[:1] if m["role"] == "system"]
    turns = prompt[len(system):]
    while True:
        prompt_ids = _ids(tokenizer, system + turns, generation_prompt=True)
        replies = [_ids(tokenizer, system + turns + [m.model_dump() for m in side], generation_prompt=False)
                   for side in (pair.chosen, pair.rejected)]
        start = min(common_prefix_length(prompt_ids, r) for r in replies)
        longest = max(len(r) for r in replies)
        if longest <= max_length or len(turns) <= 2:
            break
        turns = turns[2:]  # drop the oldest user/assistant exchange, keep the last user turn
    room = max_length - start
    if room < 4:
        return None
    return {"prompt_ids": prompt_ids[:start], "chosen_ids": replies[0][start:start + room],
            "rejected_ids": replies[1][start:start + room], "prompt_turns": len(turns) + len(system)}
