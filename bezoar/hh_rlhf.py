"""Anthropic HH-RLHF transcripts → `PreferencePair`s, split at the final assistant turn.

Each HH-RLHF row holds two whole transcripts, `chosen` and `rejected`, written as
"\\n\\nHuman: … \\n\\nAssistant: … \\n\\nHuman: … \\n\\nAssistant: <reply>". Both share the dialogue
up to the last assistant turn and differ only in that reply. We find the shared part by the longest
common prefix of the two texts, then cut at the last "\\n\\nAssistant:" marker inside it, instead of
simply taking the last marker of each text: a reply may itself contain "\\n\\nAssistant:" (a doubled
turn), and then the last marker of `chosen` would cut the reply in two.

Odd rows seen in the real data (harmless-base/test: 2,312 rows) and what we do with them:
- every transcript starts with "\\n\\n" and turns carry stray spaces: contents are stripped;
- doubled turns ("\\n\\nAssistant: a\\n\\nAssistant: b"): merged into one message joined by a blank
  line and noted in `meta["repairs"]`;
- "Human:" inside a turn without the blank line before it (the model imitating the user): kept as
  text, because it is what was said; noted in `meta["repairs"]`;
- chosen and rejected that diverge before the final turn, an empty or identical reply, a transcript
  that does not begin with a Human turn, invalid JSON: malformed, reported as "FILE:LINE: reason".
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from bezoar.errors import ConfigError, DataError, located
from bezoar.licences import dataset_licence
from bezoar.records import ChatMessage, Lineage, PreferencePair, open_data, read_jsonl

log = logging.getLogger(__name__)

SOURCE = "Anthropic/hh-rlhf"
_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_INLINE = re.compile(r"(?<!\n\n)\b(Human|Assistant):")
_ROLES = {"Human": "user", "Assistant": "assistant"}
_FINAL = "\n\nAssistant:"


class Malformed(ValueError):
    """A row we cannot turn into a pair; the message says why."""


def read_hh_pairs(path: Path | str, skip_bad: bool = True) -> tuple[list[PreferencePair], list[str]]:
    """All pairs of an HH-RLHF JSONL(.gz) file, in file order, and one "FILE:LINE: reason" per bad row.

    With `skip_bad=False` the first malformed row raises `DataError` instead.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    name, licence = dataset_licence(str(path))
    lineage = Lineage.of([(name if name != str(path) else SOURCE, "data", licence)])
    pairs: list[PreferencePair] = []
    bad: list[str] = []
    with open_data(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                pair = parse_row(load_row(line))
            except Malformed as error:
                message = located(path, number, str(error))
                if not skip_bad:
                    raise DataError(message) from None
                bad.append(message)
                continue
            pair.meta.update(id=f"{path.name}:{number}", source=SOURCE, file=str(path), line=number)
            pair.licence = lineage
            pairs.append(pair)
    return pairs, bad


def load_row(line: str) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise Malformed(f"not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(row, dict):
        raise Malformed("expected an object with 'chosen' and 'rejected' transcripts")
    for key in ("chosen", "rejected"):
        if not isinstance(row.get(key), str):
            raise Malformed(f"'{key}' is missing or not a string")
    return row


def parse_row(row: dict) -> PreferencePair:
    """One {"chosen", "rejected"} row → a pair; raises `Malformed` with the reason."""
    chosen, rejected = row["chosen"], row["rejected"]
    if chosen.strip() == rejected.strip():
        raise Malformed("chosen and rejected transcripts are identical")
    cut = _split_point(chosen, rejected)
    repairs: list[str] = []
    prompt = _turns(chosen[:cut], repairs)
    if not prompt or prompt[0].role != "user":
        raise Malformed("the transcript does not begin with a Human turn")
    if prompt[-1].role != "user":
        raise Malformed("the final assistant turn follows another assistant turn, not a Human turn")
    replies = [_reply(text[cut + len(_FINAL):], which, repairs) for text, which in
               ((chosen, "chosen"), (rejected, "rejected"))]
    if replies[0] == replies[1]:
        raise Malformed("chosen and rejected replies are identical after whitespace is stripped")
    return PreferencePair(prompt=prompt, chosen=[ChatMessage(role="assistant", content=replies[0])],
                          rejected=[ChatMessage(role="assistant", content=replies[1])],
                          meta={"repairs": sorted(set(repairs))})


def _split_point(chosen: str, rejected: str) -> int:
    """Index of the "\\n\\nAssistant:" marker that opens the final (differing) reply in both texts."""
    common = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        common += 1
    # The marker must lie wholly in the shared text; replies that start alike ("I ...") are fine.
    cut = chosen.rfind(_FINAL, 0, common)
    if cut < 0:
        raise Malformed("chosen and rejected share no dialogue before an assistant reply")
    for text, which in ((chosen, "chosen"), (rejected, "rejected")):
        if "\n\nHuman:" in text[cut:]:
            raise Malformed(f"chosen and rejected diverge before the final assistant turn "
                            f"({which} goes on with another Human turn)")
    return cut


def _turns(text: str, repairs: list[str]) -> list[ChatMessage]:
    """"\\n\\nHuman: a\\n\\nAssistant: b" → messages; doubled turns are merged, contents stripped."""
    parts = _TURN.split(text)
    if parts[0].strip():
        raise Malformed(f"text before the first Human/Assistant marker: {parts[0].strip()[:40]!r}")
    messages: list[ChatMessage] = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        role, content = _ROLES[speaker], content.strip()
        if _INLINE.search(content):
            repairs.append("role marker inside a turn kept as text")
        if messages and messages[-1].role == role:
            repairs.append(f"doubled {speaker} turn merged")
            messages[-1] = ChatMessage(role=role, content=f"{messages[-1].content}\n\n{content}".strip())
            continue
        if not content:
            raise Malformed(f"empty {speaker} turn in the prompt")
        messages.append(ChatMessage(role=role, content=content))
    return messages


def _reply(text: str, which: str, repairs: list[str]) -> str:
    """The final reply; a doubled "\\n\\nAssistant:" inside it is the same speaker going on."""
    pieces = [piece.strip() for piece in text.split(_FINAL)]
    if any(re.search(r"(?<!\n\n)\bHuman:", piece) for piece in pieces[:-1]):
        # "…  Human: question?\n\nAssistant: answer": a Human turn glued on without its blank line,
        # so the reply really spans several turns and the transcripts diverge earlier.
        raise Malformed(f"the {which} reply holds a glued-on 'Human:' turn followed by another Assistant turn")
    if len(pieces) > 1:
        repairs.append("doubled Assistant turn merged")
    reply = "\n\n".join(p for p in pieces if p)
    if not reply:
        raise Malformed(f"the {which} reply is empty")
    if _INLINE.search(reply):
        repairs.append("role marker inside a turn kept as text")
    return reply


def split_slices(pairs: list[PreferencePair], sft_n: int, dpo_n: int,
                 heldout_n: int) -> dict[str, list[PreferencePair]]:
    """Disjoint "sft", "dpo" and "heldout" slices of `pairs` (kept in their given order).

    Order rule: `sft` is the first `sft_n` pairs (the paper SFTs on "the first 100K examples"),
    `dpo` the next `dpo_n`, and `heldout` the LAST `heldout_n` pairs of the list. Taking the
    held-out slice from the end means it does not change when `sft_n` or `dpo_n` change, so
    evaluations of runs with different training sizes stay comparable, and it is never trained on.
    """
    for name, value in (("sft_n", sft_n), ("dpo_n", dpo_n), ("heldout_n", heldout_n)):
        if value < 0:
            raise ConfigError(f"{name} must be ≥ 0 (got {value})")
    if sft_n + dpo_n + heldout_n > len(pairs):
        raise ConfigError(f"sft_n + dpo_n + heldout_n = {sft_n} + {dpo_n} + {heldout_n} = "
                          f"{sft_n + dpo_n + heldout_n}, but only {len(pairs)} well-formed pairs were read; "
                          "lower one of them or give a larger HH-RLHF file")
    return {"sft": pairs[:sft_n], "dpo": pairs[sft_n:sft_n + dpo_n],
            "heldout": pairs[len(pairs) - heldout_n:] if heldout_n else []}


def read_pairs(path: Path | str) -> list[PreferencePair]:
    """Preference pairs from HH-RLHF transcripts (`chosen`/`rejected` strings) or from bezoar
    `PreferencePair` JSONL (`prompt`/`chosen`/`rejected` message lists), told apart by the first row."""

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    with open_data(path) as handle:
        first = next((line for line in handle if line.strip()), "")
    try:
        row = json.loads(first)
    except json.JSONDecodeError:
        raise DataError(f"{path}:1: not JSON; expected one preference pair per line") from None
    if isinstance(row, dict) and isinstance(row.get("chosen"), str):
        pairs, bad = read_hh_pairs(path)
        if bad:
            log.warning("%s: %d malformed rows skipped (first: %s)", path, len(bad), bad[0])
    else:
        pairs = list(read_jsonl(path, PreferencePair))
    if not pairs:
        raise DataError(f"{path}: no usable preference pairs")
    return pairs
