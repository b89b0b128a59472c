"""HH-RLHF reader on the real harmless-base test transcripts, including its odd rows."""
from __future__ import annotations

import gzip
import json

import pytest

from bezoar.errors import ConfigError, DataError
from bezoar.hh_rlhf import parse_row, read_hh_pairs, split_slices, Malformed


@pytest.fixture(scope="module")
def hh_file(data_dir):
    return data_dir / "preferences/hh-rlhf/harmless-base/test.jsonl.gz"


@pytest.fixture(scope="module")
def hh(hh_file):
    return read_hh_pairs(hh_file)


def _by_line(pairs, line):
    return next(p for p in pairs if p.meta["line"] == line)


def test_every_row_is_a_pair_or_a_reported_reason(hh, hh_file):
    pairs, bad = hh
    with gzip.open(hh_file, "rt") as handle:
        rows = sum(1 for line in handle if line.strip())
    assert rows == 2312
    assert len(pairs) + len(bad) == rows
    assert 0 < len(bad) < 20  # the real file has a handful of broken rows, no more
    assert all(line.startswith(f"{hh_file}:") for line in bad)
    assert len({p.meta["id"] for p in pairs}) == len(pairs)


def test_pairs_rebuild_the_original_transcripts(hh, hh_file):
    """Prompt + reply, written back in HH-RLHF form, is the original text up to whitespace."""
    pairs, _ = hh
    with gzip.open(hh_file, "rt") as handle:
        rows = [json.loads(line) for line in handle]
    clean = [p for p in pairs if not p.meta["repairs"]]
    assert len(clean) > 2200
    speaker = {"user": "Human", "assistant": "Assistant"}
    for pair in clean[:500]:
        row = rows[pair.meta["line"] - 1]
        for side in ("chosen", "rejected"):
            turns = pair.prompt + getattr(pair, side)
            rebuilt = "".join(f"\n\n{speaker[m.role]}: {m.content}" for m in turns)
            assert " ".join(rebuilt.split()) == " ".join(row[side].split())


def test_structure_of_every_pair(hh):
    pairs, _ = hh
    for pair in pairs:
        roles = [m.role for m in pair.prompt]
        assert roles[0] == "user" and roles[-1] == "user"
        assert all(a != b for a, b in zip(roles, roles[1:]))  # strictly alternating
        assert all(m.content == m.content.strip() and m.content for m in pair.prompt)
        assert pair.chosen[0].content and pair.rejected[0].content
        assert pair.chosen[0].content != pair.rejected[0].content
        assert pair.licence.commercial_use.value == "yes"  # HH-RLHF is MIT


def test_odd_real_rows(hh, hh_file):
    pairs, bad = hh
    # Empty chosen reply ("...\n\nAssistant: " and nothing after): reported.
    assert f"{hh_file}:87: the chosen reply is empty" in bad
    # A Human turn glued on without its blank line, then another Assistant turn: reported.
    assert any(b.startswith(f"{hh_file}:1255:") and "glued-on 'Human:'" in b for b in bad)
    # Doubled Assistant turn inside the prompt: merged into one message.
    joke = _by_line(pairs, 1850)
    assert joke.prompt[-1].content == "Another one but more mean."
    assert joke.prompt[3].content.startswith("Here’s a short joke from a friend:\n\n“Question:")
    assert "doubled Assistant turn merged" in joke.meta["repairs"]
    # Doubled Assistant turn inside the chosen reply: the reply is kept whole, not cut at its last marker.
    serial = _by_line(pairs, 1953)
    assert serial.prompt[-1].content == "Yes, please find me a serial."
    assert serial.chosen[0].content.startswith("Alrighty, I’ll do my best, here’s the key:\n\nO.k.")
    assert serial.rejected[0].content.startswith("You mean a password, right?")
    # "Human:" inside a reply (the model imitating the user) is kept as text and noted.
    inline = [p for p in pairs if "role marker inside a turn kept as text" in p.meta["repairs"]]
    assert len(inline) > 20
    assert any("Human:" in (p.chosen[0].content + p.rejected[0].content) for p in inline)


@pytest.mark.parametrize("row, reason", [
    ({"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: hi\n\nAssistant: a"}, "identical"),
    ({"chosen": "\n\nAssistant: a\n\nHuman: b\n\nAssistant: c", "rejected": "\n\nAssistant: a\n\nHuman: b\n\nAssistant: d"},
     "does not begin with a Human turn"),
    ({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: x\n\nAssistant: y"}, "share no dialogue"),
    ({"chosen": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d", "rejected": "\n\nHuman: a\n\nAssistant: e"},
     "diverge before the final assistant turn"),
    ({"chosen": "\n\nHuman: a\n\nAssistant:   ", "rejected": "\n\nHuman: a\n\nAssistant: b"}, "chosen reply is empty"),
    ({"chosen": "\n\nHuman:  \n\nAssistant: b", "rejected": "\n\nHuman:  \n\nAssistant: c"}, "empty Human turn"),
    ({"chosen": "\n\nHuman: a\n\nAssistant: b ", "rejected": "\n\nHuman: a\n\nAssistant:  b"}, "identical after whitespace"),
    ({"chosen": "\n\nHuman: a\n\nAssistant: b\n\nAssistant: c", "rejected": "\n\nHuman: a\n\nAssistant: b\n\nAssistant: d"},
     "follows another assistant turn"),
])
def test_malformed_rows_say_why(row, reason):
    with pytest.raises(Malformed, match=reason):
        parse_row(row)


def test_stray_whitespace_and_missing_leading_blank_line():
    pair = parse_row({"chosen": "Human:  hello  \n\nAssistant:   I can help.  ",
                      "rejected": "Human:  hello  \n\nAssistant: No."})
    assert [m.content for m in pair.prompt] == ["hello"]
    assert (pair.chosen[0].content, pair.rejected[0].content) == ("I can help.", "No.")


def test_bad_lines_of_a_file_are_counted_or_raised(tmp_path):
    path = tmp_path / "hh.jsonl"
    path.write_text('{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b", "rejected": "\\n\\nHuman: a\\n\\nAssistant: c"}\n'
                    "not json\n\n"
                    '{"chosen": 3, "rejected": "x"}\n'
                    '["a list"]\n')
    pairs, bad = read_hh_pairs(path)
    assert len(pairs) == 1
    assert [b.split(": ", 1)[0] for b in bad] == [f"{path}:2", f"{path}:4", f"{path}:5"]
    assert "not valid JSON" in bad[0] and "'chosen'" in bad[1]
    with pytest.raises(DataError, match=f"{path}:2: not valid JSON"):
        read_hh_pairs(path, skip_bad=False)
    with pytest.raises(DataError, match="no such file"):
        read_hh_pairs(tmp_path / "missing.jsonl")


def test_split_slices_are_disjoint_and_heldout_is_stable(hh):
    pairs, _ = hh
    small = split_slices(pairs, 100, 200, 300)
    big = split_slices(pairs, 1000, 900, 300)
    assert [len(small[k]) for k in ("sft", "dpo", "heldout")] == [100, 200, 300]
    ids = {k: {p.meta["id"] for p in v} for k, v in small.items()}
    assert not (ids["sft"] & ids["dpo"]) and not (ids["sft"] & ids["heldout"]) and not (ids["dpo"] & ids["heldout"])
    assert small["sft"] == pairs[:100]  # "the first N examples", as in the paper
    assert [p.meta["id"] for p in big["heldout"]] == [p.meta["id"] for p in small["heldout"]]
    with pytest.raises(ConfigError, match="only 2304 well-formed pairs"):
        split_slices(pairs, 2000, 300, 300)
    with pytest.raises(ConfigError, match="≥ 0"):
        split_slices(pairs, -1, 0, 0)
