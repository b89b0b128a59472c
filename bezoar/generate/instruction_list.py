"""Reading a teacher's list of new instructions, and spotting near-copies of instructions seen before.

Teachers answer "write 20 instructions as a numbered list" in many shapes: numbered (`1.`, `1)`,
`(1)`, `1.2:`, `**1.**`, `*1.`), bulleted, `Instruction 3:` labels, LaMini-LM's `<example>` tags, or a
JSON array; small ones wrap the list in chatter. `parse_instruction_list` takes the items from any
of these and leaves the rest; a reply with no list at all gives an empty result (a recorded rejection).
"""
from __future__ import annotations

import json
import re

_NUMBERED = re.compile(r"^\s*(?:[-*•+>]\s*)?(?:\*\*)?(?:\(?\d{1,3}(?:\.\d{1,3})*\s*[.):\]]|#\d{1,3}[.:]?)(?:\*\*)?\s+(.*)$")
_BULLET = re.compile(r"^\s*[-*•+]\s+(.*)$")
_LABELLED = re.compile(r"^\s*(?:\*\*)?(?:new\s+)?(?:instruction|task|question|prompt|example)\s*#?\s*\d+\s*(?:\*\*)?\s*[:.)-]\s*(.*)$",
                       re.IGNORECASE)
_TAGGED = re.compile(r"<example>\s*(.*?)\s*</example>", re.IGNORECASE | re.DOTALL)
_TRAILING_ANSWER = re.compile(r"\s+(?:answer|output|response|solution|input)\s*:.*$", re.IGNORECASE)
_PREFIX = re.compile(r"^(?:instruction|task|question|prompt)\s*:\s*", re.IGNORECASE)


def parse_instruction_list(text: str) -> list[str]:
    """The instructions in a reply, cleaned, in order, without exact repeats; [] when there is no list."""
    items = _from_json(text) or _from_tags(text) or _from_lines(text)
    cleaned, seen = [], set()
    for item in items:
        item = clean_item(item)
        if item and item.lower() not in seen:
            seen.add(item.lower())
            cleaned.append(item)
    return cleaned


def clean_item(item: str) -> str:
    item = item.replace("**", "").strip()
    item = _TRAILING_ANSWER.sub("", item).strip()
    item = _PREFIX.sub("", item).strip()
    if len(item) >= 2 and item[0] == item[-1] and item[0] in "\"'`":
        item = item[1:-1].strip()
    return item


def _from_json(text: str) -> list[str]:
    """A JSON array of strings (or of objects with an `instruction`), possibly inside a code fence."""
    start, end = text.find("["), text.rfind("]")
    if start < 0 or end <= start:
        return []
    try:
        value = json.loads(text[start:end + 1])
    except json.JSONDecodeError:
        return []
    if not isinstance(value, list):
        return []
    items = [v.get("instruction") if isinstance(v, dict) else v for v in value]
    return [v for v in items if isinstance(v, str)]


def _from_tags(text: str) -> list[str]:
    return _TAGGED.findall(text)


def _from_lines(text: str) -> list[str]:
    """Numbered, labelled or bulleted lines; unmarked lines (preambles, answers, chatter) are left out."""
    items = []
    for line in text.splitlines():
        match = _NUMBERED.match(line) or _LABELLED.match(line) or _BULLET.match(line)
        if match and match.group(1).strip():
            items.append(match.group(1))
    return items


def words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class NearCopies:
    """Instructions seen so far, and which of them a new one nearly copies (word-set Jaccard).

    datasketch's MinHash LSH finds the candidates in sub-linear time (exact pairwise comparison with
    thousands of seeds per candidate is too slow in Python); each candidate is then checked exactly,
    so a reported near-copy is always real.
    """

    NUM_PERM = 64

    def __init__(self, threshold: float):
        from datasketch import MinHashLSH

        self.threshold = threshold
        self.lsh = MinHashLSH(threshold=threshold, num_perm=self.NUM_PERM)
        self.words: dict[str, set[str]] = {}

    def _signature(self, found: set[str]):
        from datasketch import MinHash

        signature = MinHash(num_perm=self.NUM_PERM)
        signature.update_batch([w.encode("utf-8") for w in sorted(found)])
        return signature

    def add(self, key: str, text: str) -> None:
        found = words(text)
        if key not in self.words and found:
            self.words[key] = found
            self.lsh.insert(key, self._signature(found))

    def match(self, text: str) -> str | None:
        """The key of an instruction this one nearly copies, or None."""
        found = words(text)
        if not found:
            return None
        for key in sorted(self.lsh.query(self._signature(found))):
            if jaccard(found, self.words[key]) >= self.threshold:
                return key
        return None
