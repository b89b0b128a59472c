"""MT-Bench: the judge-reply readers, question-file errors, and a real run with the embedded model as
both model and judge on a few questions (one per judging path: general, reference-guided, multi-turn),
read from its next-token distribution (the default for local judges) and, once, as FastChat's
generate-then-parse judge."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bezoar.errors import DataError
from bezoar.evaluate.config import MTBenchConfig
from bezoar.evaluate.mt_bench import read_choice, read_score
from bezoar.evaluate.mt_bench_files import load_answers, load_questions

BEZOAR = str(Path(sys.executable).parent / "bezoar")

# Replies in the shapes judges really produce (GPT-4/Claude style, and the small-model styles seen
# from SmolLM2 as judge), with the rating FastChat's rule or our fallback must read.
RATINGS = [
    ("The assistant's answer is accurate and covers the main points. Rating: [[8]]", 8.0),
    ("Explanation: the response is relevant but shallow.\n\nRating: [[6.5]]", 6.5),
    ("[[3]] The answer ignores the user's constraint.", 3.0),
    ("Rating: [7]", 7.0),  # FastChat's single-bracket backup
    # FastChat takes the first [[N]]: a judge that echoes the format example gets the example's number.
    ('You asked for the format "Rating: [[5]]". My rating is [[9]].', 5.0),
    ("The response is helpful and well structured. Rating: 7/10", 7.0),
    ("I would rate this response 4 out of 10 because it is incomplete.", 4.0),
    ("Score: 9", 9.0),
    ("Overall, my rating is 2.", 2.0),
    ("8", 8.0),
    ("Rating: [[rating]]", None),
    ("Rating: [[0]]", None),
    ("Rating: [[11]]", None),
    ("The assistant's answer is correct and the code runs in 3 seconds.", None),
    ("", None),
]

CHOICES = [
    ("Assistant A follows the instructions more closely. [[A]]", "A"),
    ("Both answers are equally good. Final verdict: [[C]]", "tie"),
    ("Assistant B's poem rhymes and A's does not.\n\n[[B]]", "B"),
    # FastChat checks [[A]] before [[B]] anywhere in the reply; an echo of the format picks A.
    ('Output "[[A]]" if assistant A is better. I choose [[B]].', "A"),
    ("My verdict: B", "B"),
    ("Both responses have merits.", None),
]


@pytest.mark.parametrize("reply,expected", RATINGS)
def test_rating_reader(reply, expected):
    assert read_score(reply) == expected


@pytest.mark.parametrize("reply,expected", CHOICES)
def test_pairwise_verdict_reader(reply, expected):
    assert read_choice(reply) == expected


def _questions(data_dir: Path, tmp_path: Path, ids: tuple[int, ...]) -> Path:
    rows = [json.loads(line) for line in (data_dir / "eval/mt_bench/question.jsonl").read_text().splitlines()]
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows if r["question_id"] in ids))
    return path


def test_malformed_question_file_names_file_and_line(tmp_path, data_dir):
    good = (data_dir / "eval/mt_bench/question.jsonl").read_text().splitlines()[:3]
    missing_turns = json.dumps({"question_id": 999, "category": "writing"})
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([good[0], good[1], missing_turns, good[2]]) + "\n")
    with pytest.raises(DataError, match=rf"^{path}:3: turns: Field required"):
        load_questions(path)
    path.write_text("\n".join([good[0], good[0]]) + "\n")
    with pytest.raises(DataError, match=rf"^{path}:2: question_id 81 repeats line 1"):
        load_questions(path)
    path.write_text(good[0] + "\n{not json\n")
    result = subprocess.run([BEZOAR, "eval", "mt-bench", "--out", str(tmp_path / "out"), "--questions", str(path)], timeout=300,
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == f"{path}:2: not valid JSON (Expecting property name enclosed in double quotes at column 2)"


@pytest.fixture(scope="module")
def mt_run(tmp_path_factory, data_dir):
    """One real MT-Bench run: 3 questions (writing: single-v1, answered at temperature 0.7; math:
    single-math-v1 with the GPT-4 reference; extraction), both turns, the embedded model answering
    and judging."""
    from bezoar.evaluate.mt_bench import run_mt_bench
    from bezoar.llm.cache import CachedModel, CallCache
    from bezoar.llm.local import LocalBackend

    tmp = tmp_path_factory.mktemp("mt")
    backend = LocalBackend()
    cache = CallCache(tmp / "calls.sqlite")
    model, judge = CachedModel(backend, cache, role="student"), CachedModel(backend, cache, role="judge")
    config = MTBenchConfig(questions=_questions(data_dir, tmp, (81, 111, 131)),
                           reference_answers=data_dir / "eval/mt_bench/reference_answer/gpt-4.jsonl",
                           max_new_tokens=40, judge_max_new_tokens=16, judge_retries=1)
    summary = run_mt_bench(model, judge, tmp / "out", config, "smollm2", "smollm2-judge")
    return {"summary": summary, "config": config, "out": tmp / "out", "model": model, "judge": judge,
            "backend": backend, "cache": cache}


def test_answers_are_fastchat_answer_lines(mt_run):
    path = mt_run["out"] / "model_answer" / "smollm2.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["question_id"] for line in lines] == [81, 111, 131]
    for line in lines:
        assert set(line) >= {"question_id", "answer_id", "model_id", "choices", "tstamp"}
        assert line["model_id"] == "smollm2" and len(line["choices"][0]["turns"]) == 2
        assert all(turn.strip() for turn in line["choices"][0]["turns"])
    assert load_answers(path)[111].turns == lines[1]["choices"][0]["turns"]


def test_judgments_use_fastchat_prompts_and_fields(mt_run):
    lines = [json.loads(line) for line in (mt_run["out"] / "model_judgment" / "smollm2-judge_single.jsonl").open()]
    assert len(lines) == 6  # 3 questions x 2 turns
    prompts = {(line["question_id"], line["turn"]): line["judge"][1] for line in lines}
    assert prompts == {(81, 1): "single-v1", (81, 2): "single-v1-multi-turn",
                       (111, 1): "single-math-v1", (111, 2): "single-math-v1-multi-turn",
                       (131, 1): "single-v1", (131, 2): "single-v1-multi-turn"}
    math_turn2 = next(line for line in lines if line["question_id"] == 111 and line["turn"] == 2)
    assert "### Reference answer:" in math_turn2["user_prompt"] and "Assistant A:" in math_turn2["user_prompt"]
    assert mt_run["summary"]["judge_mode"] == "next_token"  # auto: a local judge is read by next-token
    for line in lines:
        assert line["model"] == "smollm2" and line["judge"][0] == "smollm2-judge"
        assert line["judgment"].startswith("Rating: [[") and line["attempts"] == 1 and line["error"] is None
        assert 1 <= line["score"] <= 10 and read_score(line["judgment"]) == line["score"]
        probabilities = json.loads(line["judgment"].split("\n", 1)[1])["probabilities"]
        assert line["score"] == pytest.approx(sum(int(k) * p for k, p in probabilities.items()), abs=0.01)


def test_generated_judgments_retry_then_record_errors(mt_run, tmp_path):
    """judge_mode generate is FastChat's: the judge writes, `[[rating]]` is parsed. SmolLM2 mostly
    continues the answer instead; such replies are retried once, then recorded as score -1."""
    from bezoar.evaluate.mt_bench import run_mt_bench

    config = mt_run["config"].model_copy(update={"judge_mode": "generate", "limit": 1})
    summary = run_mt_bench(mt_run["model"], mt_run["judge"], tmp_path, config, "smollm2", "smollm2-judge")
    assert summary["judge_mode"] == "generate"
    lines = [json.loads(line) for line in (tmp_path / "model_judgment/smollm2-judge_single.jsonl").open()]
    assert len(lines) == 2
    for line in lines:
        if line["score"] == -1:  # recorded error: every attempt was made, and the reason is kept
            assert line["attempts"] == 2 and "no readable rating" in line["error"]
            assert read_score(line["judgment"]) is None
        else:
            assert line["error"] is None and read_score(line["judgment"]) == line["score"]
    assert summary["single"]["errors"] == sum(line["score"] == -1 for line in lines)


def test_scores_match_what_fastchat_show_result_computes(mt_run):
    """show_result.py: read the judgment jsonl with pandas, drop score -1, mean by turn and overall."""
    import pandas as pd

    frame = pd.read_json(mt_run["out"] / "model_judgment" / "smollm2-judge_single.jsonl", lines=True)
    frame = frame[["model", "score", "turn"]]
    frame = frame[frame["score"] != -1]
    single = mt_run["summary"]["single"]
    rows = {row["name"]: row for row in single["rows"]}
    assert [r["name"] for r in single["rows"]] == ["writing", "math", "extraction", "turn 1", "turn 2", "overall"]
    assert len(frame) == 6 and single["errors"] == 0
    assert single["overall"]["score"] == pytest.approx(frame["score"].mean())
    for turn in (1, 2):
        scores = frame[frame["turn"] == turn]["score"]
        assert rows[f"turn {turn}"]["score"] == pytest.approx(scores.mean()) and rows[f"turn {turn}"]["n"] == 3
        low, high = rows[f"turn {turn}"]["ci95"]
        assert low <= scores.mean() <= high and low >= scores.min() and high <= scores.max()


def test_pairwise_grades_both_orders_against_published_answers(mt_run, data_dir, tmp_path):
    """pair-math-v1 (question 111, with the reference) against Llama-2-7b-chat's published answers."""
    from bezoar.evaluate.mt_bench import run_mt_bench

    config = mt_run["config"].model_copy(update={
        "questions": _questions(data_dir, tmp_path, (111,)),
        "pairwise_against": data_dir / "eval/mt_bench/model_answer/llama-2-chat7b.jsonl"})
    summary = run_mt_bench(mt_run["model"], mt_run["judge"], tmp_path / "out", config, "smollm2", "smollm2-judge")
    lines = [json.loads(line) for line in (tmp_path / "out/model_judgment/smollm2-judge_pair.jsonl").open()]
    answers = load_answers(tmp_path / "out/model_answer/smollm2.jsonl")
    assert len(lines) == 2
    for line in lines:
        assert line["model_1"] == "smollm2" and line["model_2"] == "llama-2-chat7b"
        assert {line["g1_winner"], line["g2_winner"]} <= {"model_1", "model_2", "tie"}
        expected = ("pair-math-v1" if line["question_id"] == 111 else "pair-v2") + ("-multi-turn" if line["turn"] == 2 else "")
        assert line["judge"][1] == expected
        # g1 shows our answer as assistant A, g2 swaps the positions (FastChat's two games)
        ours = answers[line["question_id"]].turns[0][:60]
        g1, g2 = line["g1_user_prompt"], line["g2_user_prompt"]
        assert g1.index("Assistant A") < g1.index(ours) < g1.index("Assistant B")
        assert g2.index("Assistant B") < g2.index(ours)
    pairwise = summary["pairwise"]
    assert pairwise["against"] == "llama-2-chat7b"
    assert pairwise["win"] + pairwise["loss"] + pairwise["tie"] == 2 and pairwise["errors"] == 0
    outcome = {"model_1": 1.0, "model_2": 0.0}
    expected = [outcome[l["g1_winner"]] if l["g1_winner"] == l["g2_winner"] and l["g1_winner"] in outcome else 0.5
                for l in lines]
    assert pairwise["win_rate_adjusted"] == pytest.approx(sum(expected) / 2)


def test_rerun_is_all_cache_hits_and_same_files(mt_run, tmp_path):
    from bezoar.evaluate.mt_bench import run_mt_bench
    from bezoar.llm.cache import CachedModel

    model = CachedModel(mt_run["backend"], mt_run["cache"], role="student")
    judge = CachedModel(mt_run["backend"], mt_run["cache"], role="judge")
    again = run_mt_bench(model, judge, tmp_path, mt_run["config"], "smollm2", "smollm2-judge")
    assert model.usage.calls == 0 and judge.usage.calls == 0 and model.usage.cache_hits > 0
    assert again["single"] == mt_run["summary"]["single"]
    before = (mt_run["out"] / "model_answer/smollm2.jsonl").read_text()
    after = (tmp_path / "model_answer/smollm2.jsonl").read_text()
    assert [json.loads(l)["choices"] for l in before.splitlines()] == [json.loads(l)["choices"] for l in after.splitlines()]


def test_judge_repeats_report_median_and_spread(mt_run, tmp_path):
    from bezoar.evaluate.mt_bench import run_mt_bench
    from bezoar.evaluate.mt_bench_scores import single_table

    config = mt_run["config"].model_copy(update={"judge_repeats": 3, "limit": 1})
    summary = run_mt_bench(mt_run["model"], mt_run["judge"], tmp_path, config, "smollm2", "smollm2-judge")
    lines = [json.loads(line) for line in (tmp_path / "model_judgment/smollm2-judge_single.jsonl").open()]
    assert sorted((l["turn"], l["repeat"]) for l in lines) == [(t, r) for t in (1, 2) for r in range(3)]
    import statistics

    overall = summary["single"]["overall"]
    assert summary["single"]["repeats"] == 3 and "spread" in overall
    medians, ranges, by_repeat = [], [], {r: [] for r in range(3)}
    for turn in (1, 2):
        valid = sorted(l["score"] for l in lines if l["turn"] == turn and l["score"] != -1)
        for l in lines:
            if l["turn"] == turn and l["score"] != -1:
                by_repeat[l["repeat"]].append(l["score"])
        if valid:
            assert summary["single"]["items"][f"81:{turn}"] == statistics.median(valid)
            medians.append(statistics.median(valid))
        if len(valid) > 1:
            ranges.append(valid[-1] - valid[0])
    # The table's figures recomputed by hand from the judgment file (not by calling the code under test).
    assert overall["n"] == len(medians) and overall["errors"] == 2 - len(medians)
    assert overall["score"] == (statistics.fmean(medians) if medians else None)
    assert overall["spread"]["mean_item_range"] == (statistics.fmean(ranges) if ranges else 0.0)
    assert overall["spread"]["repeat_means"] == [statistics.fmean(v) for v in by_repeat.values() if v]
    assert single_table(lines, samples=10)["overall"]["score"] == overall["score"]  # the file alone suffices


def test_per_category_takes_the_first_questions_of_each_category(data_dir):
    questions = load_questions(data_dir / "eval/mt_bench/question.jsonl", per_category=1)
    assert [q.question_id for q in questions] == [81, 91, 101, 111, 121, 131, 141, 151]
    assert len({q.category for q in questions}) == 8
    assert [q.question_id for q in load_questions(data_dir / "eval/mt_bench/question.jsonl", 3, 2)] == [81, 82, 91]
