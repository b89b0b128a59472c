"""Property tests (hypothesis) for every parser of outside input: recipes, seed files in each format,
HH-RLHF rows, records JSONL, MT-Bench question files, judge replies and MT-Bench ratings.

The property is the promise in the README: whatever the bytes, a parser returns a valid result or
raises a `BezoarError` whose every line starts with the file's name (and the line, where the fault
is in one); never another exception, never a hang. Cases are derandomized (the same in every CI
run) and counted; the counts are printed at the end of the module (`CASES` below).
"""
from __future__ import annotations

import copy
import gzip
import json
import math
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bezoar.errors import BezoarError

REPO = Path(__file__).resolve().parents[1]
CASES: Counter = Counter()
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module", autouse=True)
def _report_counts(request):
    yield
    line = "hypothesis cases per parser: " + json.dumps(dict(sorted(CASES.items())))
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():  # shown in every run, not only with -s
        print("\n" + line)


def clean(parser: str, path: Path, call):
    """Run `call`; a BezoarError must name `path` on every line. Returns the result or None."""
    CASES[parser] += 1
    try:
        return call()
    except BezoarError as error:
        CASES[parser + " (refused)"] += 1
        for line in str(error).splitlines():
            assert re.match(rf"{re.escape(str(path))}(:\d+)?: \S", line), (parser, line)
        return None


# --- values --------------------------------------------------------------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                           max_leaves=12)
FIELDS = ["instruction", "context", "response", "category", "input", "output", "inputs", "targets", "template",
          "prompt", "completion", "question", "answer", "messages", "instances", "id", "name", "task_name",
          "role", "content", "meta", "licence", "chosen", "rejected", "question_id", "turns", "reference"]
rows = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6)


def _messages():
    return st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool", ""]),
                                           "content": st.one_of(st.text(max_size=30), json_values)}), max_size=3)


def _json_line(value) -> str:
    return json.dumps(value, allow_nan=True)


# --- recipes -------------------------------------------------------------------------------------

def _paths(tree, prefix=()):
    """Every key path of a recipe, into its lists too (the steps, and each step's keys)."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for key, value in items:
        yield prefix + (key,)
        yield from _paths(value, prefix + (key,))


SHIPPED = {p.name: yaml.safe_load(p.read_text()) for p in sorted((REPO / "recipes").glob("*.yaml"))}
STEP_TYPES = ["generate", "filter", "sft", "hh_slices", "sft_hh", "preferences", "dpo", "eval", "report", "nosuch", ""]


@st.composite
def mutated_recipes(draw) -> str:
    name = draw(st.sampled_from(sorted(SHIPPED)))
    tree = copy.deepcopy(SHIPPED[name])
    for _ in range(draw(st.integers(1, 4))):
        paths = list(_paths(tree))
        if not paths:
            break
        where = draw(st.sampled_from(paths))
        parent = tree
        for key in where[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["delete", "retype", "rename", "garbage"]))
        if action == "delete":
            del parent[where[-1]]
        elif action == "retype":
            parent[where[-1]] = draw(json_values)
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=10))] = parent.pop(where[-1])
        elif action == "rename":  # a list item (a step) has no name of its own: another step type instead
            parent[where[-1]] = {**parent[where[-1]], "type": draw(st.sampled_from(STEP_TYPES))} \
                if isinstance(parent[where[-1]], dict) else draw(json_values)
        else:
            parent[where[-1]] = draw(st.sampled_from(["${NOPE}", "${X:-}", "-1", "1e999", "local:/nonexistent",
                                                      "openai:", "anthropic:x@", "", "~", "[", "{a: b}"]))
    text = yaml.safe_dump(tree, allow_unicode=True)
    lines = text.splitlines(keepends=True)
    textual = draw(st.sampled_from(["none", "truncate", "duplicate line", "insert", "tabs"]))
    if textual == "truncate":
        text = text[:draw(st.integers(0, len(text)))]
    elif textual == "duplicate line" and lines:
        at = draw(st.integers(0, len(lines) - 1))
        text = "".join(lines[:at + 1] + [lines[at]] + lines[at + 1:])
    elif textual == "insert":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.text(alphabet=":{}[]&*!|>'\"%@`#-? \n\t", max_size=6)) + text[at:]
    elif textual == "tabs":
        text = text.replace("  ", "\t", draw(st.integers(1, 3)))
    return text


@FUZZ
@given(text=mutated_recipes())
def test_recipe_loader(tmp_path, text):
    from bezoar.config import load_recipe

    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    clean("recipe YAML", path, lambda: load_recipe(path))


# --- seeds ---------------------------------------------------------------------------------------

texts = st.text(min_size=1, max_size=20)
seed_rows = st.one_of(
    st.fixed_dictionaries({"instruction": texts, "context": st.text(max_size=20), "response": texts,
                           "category": st.sampled_from(["open_qa", "brainstorming"])}),
    st.fixed_dictionaries({"question": texts, "answer": texts}),
    rows,
    st.fixed_dictionaries({"instruction": json_values, "context": json_values, "response": json_values,
                           "category": json_values}),
    st.fixed_dictionaries({"instruction": st.text(max_size=20), "input": json_values, "output": json_values}),
    st.fixed_dictionaries({"inputs": json_values, "targets": json_values, "task_name": json_values}),
    st.fixed_dictionaries({"template": json_values, "prompt": json_values, "completion": json_values}),
    st.fixed_dictionaries({"id": json_values, "name": json_values, "instruction": json_values,
                           "instances": st.lists(st.dictionaries(st.sampled_from(["input", "output"]), json_values))}),
    st.fixed_dictionaries({"messages": _messages()}),
    json_values,
)


@FUZZ
@given(kind=st.sampled_from([".jsonl", ".jsonl.gz", ".json", ".tsv", ".tsv.gz"]),
       items=st.lists(seed_rows, max_size=5), raw=st.lists(st.text(max_size=40), max_size=2),
       skip_bad=st.booleans(), truncate=st.booleans())
def test_seed_reader(tmp_path, kind, items, raw, skip_bad, truncate):
    from bezoar.generate.seeds import read_seeds

    if kind.startswith(".json") and not kind.startswith(".jsonl"):
        text = json.dumps(items + raw, allow_nan=True)
    elif kind.startswith(".tsv"):
        text = "".join("\t".join(str(v).replace("\n", "\\n") for v in (item.values() if isinstance(item, dict) else [item]))
                       + "\n" for item in items) + "".join(line + "\n" for line in raw)
    else:
        text = "".join(_json_line(item) + "\n" for item in items) + "".join(line + "\n" for line in raw)
    data = gzip.compress(text.encode("utf-8")) if kind.endswith(".gz") else text.encode("utf-8")
    if truncate:
        data = data[:len(data) // 2]  # may split a UTF-8 character or cut a gzip stream short
    path = tmp_path / f"seeds{kind}"
    path.write_bytes(data)
    found = clean(f"seed file {kind}", path, lambda: read_seeds(path, licence="apache-2.0", skip_bad=skip_bad))
    if found is not None:
        assert found.seeds and all(isinstance(s.instruction, str) and s.instruction for s in found.seeds)


# --- HH-RLHF --------------------------------------------------------------------------------------

turn = st.tuples(st.sampled_from(["\n\nHuman: ", "\n\nAssistant: ", "\n\nHuman:", "Human: ", "\n\nassistant: ", ""]),
                 st.text(max_size=25))
transcripts = st.lists(turn, max_size=5).map(lambda parts: "".join(a + b for a, b in parts))
hh_rows = st.one_of(st.fixed_dictionaries({"chosen": transcripts, "rejected": transcripts}),
                    st.fixed_dictionaries({"chosen": transcripts}).map(lambda r: {**r, "rejected": r["chosen"] + "\n\nAssistant: x"}),
                    st.dictionaries(st.sampled_from(["chosen", "rejected", "prompt"]), json_values, max_size=3),
                    json_values)


@FUZZ
@given(items=st.lists(hh_rows, min_size=1, max_size=5), raw=st.lists(st.text(max_size=30), max_size=2))
def test_hh_rlhf_reader(tmp_path, items, raw):
    from bezoar.hh_rlhf import read_hh_pairs, read_pairs

    path = tmp_path / "hh.jsonl"
    path.write_text("".join(_json_line(i) + "\n" for i in items) + "".join(r + "\n" for r in raw), encoding="utf-8")
    for skip_bad in (True, False):
        found = clean("HH-RLHF rows", path, lambda: read_hh_pairs(path, skip_bad=skip_bad))
        if found is not None:
            pairs, bad = found
            assert all(p.prompt and p.prompt[0].role == "user" and p.chosen[0].content != p.rejected[0].content
                       for p in pairs)
            assert all(line.startswith(f"{path}:") for line in bad)
    clean("HH-RLHF rows", path, lambda: read_pairs(path))


# --- records JSONL --------------------------------------------------------------------------------

record_rows = st.one_of(
    st.fixed_dictionaries({"messages": _messages()}, optional={"meta": json_values, "licence": json_values}),
    st.fixed_dictionaries({"messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]),
                                                                        "content": st.text(max_size=20)}), max_size=3),
                           "meta": st.fixed_dictionaries({}, optional={"id": json_values, "method": json_values,
                                                                      "details": json_values})}),
    rows, json_values)


@FUZZ
@given(items=st.lists(record_rows, max_size=5), raw=st.lists(st.text(max_size=30), max_size=2),
       schema=st.sampled_from(["Record", "PreferencePair", None]))
def test_records_reader(tmp_path, items, raw, schema):
    import bezoar.records as records

    path = tmp_path / "records.jsonl"
    path.write_text("".join(_json_line(i) + "\n" for i in items) + "".join(r + "\n" for r in raw), encoding="utf-8")
    model = getattr(records, schema) if schema else None
    clean("records JSONL", path, lambda: list(records.read_jsonl(path, model)))
    bad: list[str] = []
    clean("records JSONL", path, lambda: list(records.read_jsonl(path, model, skip_bad=True, bad_lines=bad)))
    assert all(re.match(rf"{re.escape(str(path))}:\d+: ", line) for line in bad)


# --- MT-Bench question files ------------------------------------------------------------------------

question_rows = st.one_of(
    st.fixed_dictionaries({"question_id": st.integers(0, 10**6), "category": st.sampled_from(["writing", "math"]),
                           "turns": st.lists(texts, min_size=1, max_size=2)}),
    st.fixed_dictionaries({"question_id": st.one_of(st.integers(0, 5), json_values),
                           "category": st.one_of(st.sampled_from(["writing", "math"]), json_values),
                           "turns": st.one_of(st.lists(st.text(max_size=20), max_size=3), json_values)},
                          optional={"reference": json_values}),
    rows, json_values)


@FUZZ
@given(items=st.lists(question_rows, max_size=5), raw=st.lists(st.text(max_size=30), max_size=1))
def test_mt_bench_question_file(tmp_path, items, raw):
    from bezoar.evaluate.mt_bench_files import load_answers, load_questions

    path = tmp_path / "question.jsonl"
    path.write_text("".join(_json_line(i) + "\n" for i in items) + "".join(r + "\n" for r in raw), encoding="utf-8")
    clean("MT-Bench questions", path, lambda: load_questions(path, per_category=1))
    clean("MT-Bench answers", path, lambda: load_answers(path))


# --- judge replies and MT-Bench ratings ------------------------------------------------------------

reply_pieces = st.sampled_from(["[[", "]]", "[", "]", "Rating:", "rating: ", "Score", "/10", " out of 10", "Verdict:",
                                "accept", "reject", "ACCEPT", "Reject.", '{"rating": ', '{"score": "', '"verdict": "',
                                "}", "{", "\n", " ", "A", "B", "C", "[[A]]", "[[B]]", "[[C]]", "tie", "Assistant B",
                                "is better", "Reason:", "1e309", "NaN", "-3", "0", "10", "11", "7.5", "١٢", "½"])
replies = st.one_of(st.text(max_size=80), st.lists(st.one_of(reply_pieces, st.text(max_size=5)), max_size=12).map("".join))


@FUZZ
@given(text=replies)
def test_judge_reply_readers(text):
    from bezoar.verdicts import parse_choice, parse_judgment

    CASES["judge replies"] += 1
    judgment = parse_judgment(text)
    assert judgment.verdict in (None, "accept", "reject")
    assert judgment.rating is None or (math.isfinite(judgment.rating) and 0 <= judgment.rating <= 10)
    assert parse_choice(text) in (None, "A", "B", "tie")
    json.dumps(judgment.to_json())  # it goes into a JSONL file


@FUZZ
@given(text=replies)
def test_mt_bench_rating_readers(text):
    from bezoar.evaluate.mt_bench import read_choice, read_score

    CASES["MT-Bench ratings"] += 1
    score = read_score(text)
    assert score is None or (math.isfinite(score) and 1 <= score <= 10), score
    assert read_choice(text) in (None, "A", "B", "tie")
