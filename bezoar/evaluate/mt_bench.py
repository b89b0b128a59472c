"""MT-Bench (Zheng et al. 2023) as FastChat's llm_judge runs it, through bezoar's cached backends.

The model answers both turns of each question with its chat template at FastChat's per-category
temperature; a judge grades every turn 1-10 with FastChat's prompts (single-v1, or single-math-v1
with the GPT-4 reference answer for math, reasoning and coding; the `-multi-turn` variants for turn
2), or compares two models' answers (pair-v2, both orders). What differs from FastChat, and why:
- A judge reply without a readable rating is retried (sampled, new seed) before it is recorded as
  an error (score -1, FastChat's own sentinel) — small judges often miss the format once.
- `judge_repeats` grades K times; the score is the median per item, and the spread is reported,
  because judge variance is a known weakness of single-answer grading.
- A local judge is by default read from its next-token distribution after "Rating: [[" (judge_mode
  `auto`): SmolLM2-135M as judge mostly continues the answer instead of grading it (seen: no readable
  rating in any of 10 replies to 4 questions), while its distribution over "1".."10" still ranks.
- Every call is batched and cached (`CachedModel`), so a killed run resumes with cache hits.
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from bezoar.errors import ConfigError, DataError
from bezoar.evaluate.config import MTBenchConfig
from bezoar.evaluate.mt_bench_files import (
    Answer,
    Question,
    answer_record,
    load_answers,
    load_judge_prompts,
    load_questions,
    safe_name,
)
from bezoar.evaluate.mt_bench_scores import pairwise_table, single_table
from bezoar.failures import FailureLog
from bezoar.llm.cache import CachedModel
from bezoar.llm.local import LocalBackend, decoding_of
from bezoar.llm.next_token import pair_scorer, rating_scorer
from bezoar.llm.protocol import Sampling
from bezoar.records import write_json, write_jsonl
from bezoar.verdicts import parse_bracket_rating, parse_choice, parse_rating

log = logging.getLogger(__name__)

ERROR_OUTPUT = "$ERROR$"  # FastChat's answer text for a call that failed after its retries


def read_score(text: str) -> float | None:
    """A 1-10 rating from a judge reply, or None.

    FastChat's rule comes first (`[[N]]`, else `[N]`, first match), so any reply FastChat can read
    gets the number FastChat would give; only replies it cannot read fall through to the lenient
    reader ("Rating: 7", "7/10", "a score of 8 out of 10"). Out-of-range numbers are no rating.
    """
    value = parse_bracket_rating(text)
    if value is not None:
        return value
    return parse_rating(text)[0]


def read_choice(text: str) -> str | None:
    """"A", "B" or "tie" from a pairwise judge reply, or None.

    FastChat checks `[[A]]`, then `[[B]]`, then `[[C]]` anywhere in the reply; that order is kept,
    then the lenient reader ("Verdict: A", "Assistant B is better") for replies FastChat would drop.
    """
    for marker, verdict in (("[[A]]", "A"), ("[[B]]", "B"), ("[[C]]", "tie")):
        if marker in text:
            return verdict
    return parse_choice(text)


@dataclass
class Graded:
    """The outcome of grading one item once (after retries)."""

    value: object  # float score, or "A"/"B"/"tie"; None when unreadable
    text: str
    attempts: int
    error: str | None = None


# --- answering ---------------------------------------------------------------------------------

def answer(model: CachedModel, questions: list[Question], model_id: str, max_new_tokens: int,
           seed: int = 0, progress: Callable[[int], None] | None = None) -> list[dict]:
    """Both (all) turns of every question, batched turn by turn and grouped by temperature."""
    histories = {q.question_id: [] for q in questions}
    texts: dict[int, list[str]] = {q.question_id: [] for q in questions}
    reasons: dict[int, list[str]] = {q.question_id: [] for q in questions}
    errors: dict[int, list[str | None]] = {q.question_id: [] for q in questions}
    for turn in range(max(len(q.turns) for q in questions)):
        asking = [q for q in questions if turn < len(q.turns)]
        for temperature, group in _by_temperature(asking).items():
            conversations = [histories[q.question_id] + [{"role": "user", "content": q.turns[turn]}] for q in group]
            sampling = Sampling(temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
            for q, conversation, reply in zip(group, conversations, model.chat(conversations, sampling, progress)):
                text = ERROR_OUTPUT if reply.failed else reply.text
                histories[q.question_id] = conversation + [{"role": "assistant", "content": text}]
                texts[q.question_id].append(text)
                reasons[q.question_id].append(reply.finish_reason)
                errors[q.question_id].append(reply.error)
    now = time.time()
    return [answer_record(q, model_id, texts[q.question_id],
                          {"tstamp": now, "finish_reasons": reasons[q.question_id], "errors": errors[q.question_id]})
            for q in questions]


def _by_temperature(questions: list[Question]) -> dict[float, list[Question]]:
    groups: dict[float, list[Question]] = defaultdict(list)
    for question in questions:
        groups[question.temperature].append(question)
    return groups


# --- judging -------------------------------------------------------------------------------------

def single_prompt(question: Question, answer_turns: list[str], turn: int, prompts: dict,
                  reference: list[str] | None) -> tuple[str, list[dict]]:
    """(prompt name, judge conversation) for grading `turn` (1-based) of one answer."""
    use_ref = question.needs_reference and reference is not None
    name = ("single-math-v1" if use_ref else "single-v1") + ("-multi-turn" if turn == 2 else "")
    template = prompts[name]
    fields = {"ref_answer_1": reference[0], "ref_answer_2": reference[-1]} if use_ref else {}
    if turn == 2:
        fields.update(question_1=question.turns[0], question_2=question.turns[1],
                      answer_1=answer_turns[0], answer_2=answer_turns[1])
    else:
        fields.update(question=question.turns[0], answer=answer_turns[0])
    return name, _conversation(template, template["prompt_template"].format(**fields))


def pair_prompt(question: Question, turns_a: list[str], turns_b: list[str], turn: int, prompts: dict,
                reference: list[str] | None) -> tuple[str, list[dict]]:
    """(prompt name, judge conversation) comparing assistant A and B on `turn`."""
    use_ref = question.needs_reference and reference is not None
    name = ("pair-math-v1" if use_ref else "pair-v2") + ("-multi-turn" if turn == 2 else "")
    template = prompts[name]
    fields = {"ref_answer_1": reference[0], "ref_answer_2": reference[-1]} if use_ref else {}
    if turn == 2:
        fields.update(question_1=question.turns[0], question_2=question.turns[1], answer_a_1=turns_a[0],
                      answer_a_2=turns_a[1], answer_b_1=turns_b[0], answer_b_2=turns_b[1])
    else:
        fields.update(question=question.turns[0], answer_a=turns_a[0], answer_b=turns_b[0])
    return name, _conversation(template, template["prompt_template"].format(**fields))


def _conversation(template: dict, user_prompt: str) -> list[dict]:
    return [{"role": "system", "content": template["system_prompt"]}, {"role": "user", "content": user_prompt}]


def grade(judge: CachedModel, conversations: list[list[dict]], read: Callable[[str], object],
          config: MTBenchConfig, progress: Callable[[int], None] | None = None) -> list[list[Graded]]:
    """Grade every conversation `judge_repeats` times; unreadable replies are retried.

    Attempt 0 is greedy when K = 1 (FastChat judges at temperature 0) and sampled at
    `repeat_temperature` with one seed per repeat when K > 1 (repeating a greedy judgment would
    only measure backend nondeterminism). Retries sample at `retry_temperature` with a new seed, so
    they are new draws and still cached: a resumed run makes the same calls.
    """
    repeats = config.judge_repeats
    results: dict[tuple[int, int], Graded] = {}
    pending = [(item, r) for item in range(len(conversations)) for r in range(repeats)]
    for attempt in range(1 + config.judge_retries):
        groups: dict[Sampling, list[tuple[int, int]]] = defaultdict(list)
        for key in pending:
            groups[_judge_sampling(config, key[1], attempt)].append(key)
        pending = []
        prefill = config.judge_prefill or ""
        opened = [{"role": "assistant", "content": prefill}] if prefill else []
        for sampling, keys in groups.items():
            replies = judge.chat([conversations[item] + opened for item, _ in keys], sampling, progress)
            for key, reply in zip(keys, replies):
                value = read(prefill + reply.text) if not reply.failed else None
                error = None if value is not None else _why(reply, attempt + 1)
                results[key] = Graded(value, prefill + reply.text, attempt + 1, error)
                if value is None:
                    pending.append(key)
        if not pending:
            break
    return [[results[(item, r)] for r in range(repeats)] for item in range(len(conversations))]


def _judge_sampling(config: MTBenchConfig, repeat: int, attempt: int) -> Sampling:
    if attempt > 0:
        temperature = config.retry_temperature
    else:
        temperature = 0.0 if config.judge_repeats == 1 else config.repeat_temperature
    return Sampling(temperature=temperature, max_new_tokens=config.judge_max_new_tokens,
                    seed=config.seed + repeat + 7919 * attempt)


def _why(reply, attempts: int) -> str:
    if reply.failed:
        return f"judge call failed after {attempts} attempt(s): {reply.error}"
    return f"no readable rating/verdict in the judge's reply after {attempts} attempt(s)"


def judges_for(judge: CachedModel, mode: str) -> tuple[CachedModel, CachedModel, str]:
    """(single-answer judge, pairwise judge, effective mode).

    In next-token mode the local judge is wrapped by bezoar.llm.next_token's scorers, which
    answer "Rating: [[6.84]]" / "Verdict: [[A]]" from the next-token distribution; the wrappers
    share the judge's cache, usage counters and budget.
    """

    local = isinstance(judge.backend, LocalBackend)
    if mode == "generate" or (mode == "auto" and not local):
        return judge, judge, "generate"
    if judge.identity.startswith("anthropic:"):
        raise ConfigError(f"judge_mode next_token needs a local or OpenAI-compatible judge (got {judge.identity}: "
                          "the Messages API returns no log-probabilities); use generate")

    def wrap(backend) -> CachedModel:
        return CachedModel(backend, judge.cache, role=judge.role, usage=judge.usage, budget=judge.budget)

    return wrap(rating_scorer(judge.backend)), wrap(pair_scorer(judge.backend)), "next_token"


# --- the whole benchmark -------------------------------------------------------------------------

def judge_single(judge: CachedModel, judge_id: str, questions: list[Question], answers: dict[int, Answer],
                 references: dict[int, list[str]], config: MTBenchConfig, prompts: dict,
                 progress=None) -> list[dict]:
    """FastChat single-answer judgments, one line per (question, turn, repeat)."""
    items = [(q, turn) for q in questions for turn in range(1, min(2, len(q.turns)) + 1)]
    built = [single_prompt(q, answers[q.question_id].turns, turn, prompts, _reference(q, references))
             for q, turn in items]
    failed = [ERROR_OUTPUT in answers[q.question_id].turns[:turn] for q, turn in items]
    graded = iter(grade(judge, [c for (_, c), bad in zip(built, failed) if not bad], read_score, config, progress))
    graded = [[Graded(None, "", 0, "the model's answer failed (backend error)")] * config.judge_repeats if bad
              else next(graded) for bad in failed]
    now, lines = time.time(), []
    for (question, turn), (name, conversation), outcomes in zip(items, built, graded):
        for repeat, outcome in enumerate(outcomes):
            lines.append({"question_id": question.question_id, "model": answers[question.question_id].model_id,
                          "judge": [judge_id, name], "user_prompt": conversation[1]["content"],
                          "judgment": outcome.text, "score": outcome.value if outcome.value is not None else -1,
                          "turn": turn, "tstamp": now, "category": question.category, "repeat": repeat,
                          "attempts": outcome.attempts, "error": outcome.error})
    return lines


def judge_pairwise(judge: CachedModel, judge_id: str, questions: list[Question], ours: dict[int, Answer],
                   theirs: dict[int, Answer], references: dict[int, list[str]], config: MTBenchConfig,
                   prompts: dict, progress=None) -> list[dict]:
    """FastChat pair-v2 judgments: each item graded in both orders (g1: ours is A; g2: ours is B)."""
    items = [(q, turn) for q in questions if q.question_id in theirs
             for turn in range(1, min(2, len(q.turns)) + 1)]
    built = []
    for q, turn in items:
        a, b, ref = ours[q.question_id].turns, theirs[q.question_id].turns, _reference(q, references)
        built += [pair_prompt(q, a, b, turn, prompts, ref), pair_prompt(q, b, a, turn, prompts, ref)]
    graded = grade(judge, [conversation for _, conversation in built], read_choice, config, progress)
    now, lines = time.time(), []
    for index, (question, turn) in enumerate(items):
        (name, g1_conv), (_, g2_conv) = built[2 * index], built[2 * index + 1]
        for repeat, (g1, g2) in enumerate(zip(graded[2 * index], graded[2 * index + 1])):
            lines.append({"question_id": question.question_id, "model_1": ours[question.question_id].model_id,
                          "model_2": theirs[question.question_id].model_id,
                          "g1_winner": _winner(g1.value, "model_1", "model_2"),
                          "g2_winner": _winner(g2.value, "model_2", "model_1"),
                          "judge": [judge_id, name], "g1_user_prompt": g1_conv[1]["content"],
                          "g1_judgment": g1.text, "g2_user_prompt": g2_conv[1]["content"],
                          "g2_judgment": g2.text, "turn": turn, "tstamp": now, "category": question.category,
                          "repeat": repeat, "attempts": [g1.attempts, g2.attempts],
                          "error": g1.error or g2.error})
    return lines


def _winner(choice, as_a: str, as_b: str) -> str:
    return {"A": as_a, "B": as_b, "tie": "tie"}.get(choice, "error")


def _reference(question: Question, references: dict[int, list[str]]) -> list[str] | None:
    reference = references.get(question.question_id) or question.reference
    if question.needs_reference and reference is None:
        log.warning("question %s (%s) has no reference answer: graded with the general prompt",
                    question.question_id, question.category)
    return reference


def load_references(path: Path | None) -> dict[int, list[str]]:
    if path is None or not Path(path).exists():
        if path is not None:
            log.warning("%s: no reference answers; math/reasoning/coding use the general prompt", path)
        return {}
    return {qid: answer.turns for qid, answer in load_answers(Path(path)).items()}


def run_mt_bench(model: CachedModel, judge: CachedModel, out_dir: Path, config: MTBenchConfig,
                 model_id: str, judge_id: str) -> dict:
    """Answer, judge (single and optionally pairwise), score; FastChat's files under `out_dir`."""


    out_dir = Path(out_dir)
    model_id, judge_id = safe_name(model_id), safe_name(judge_id)
    questions = load_questions(config.questions, config.limit, config.per_category)
    references = load_references(config.reference_answers)
    prompts = load_judge_prompts(config.judge_prompts)
    started = time.perf_counter()
    with tqdm(total=sum(len(q.turns) for q in questions), desc=f"mt-bench answers ({model_id})", disable=None) as bar:
        records = answer(model, questions, model_id, config.max_new_tokens, config.seed, bar.update)
    answer_file = out_dir / "model_answer" / f"{model_id}.jsonl"
    write_jsonl(answer_file, records)
    answers = load_answers(answer_file)
    rater, comparer, mode = judges_for(judge, config.judge_mode)
    if mode != "generate":  # a next-token judge has its own prefix
        config = config.model_copy(update={"judge_prefill": None})
    summary = {"model_id": model_id, "judge_id": judge_id, "model": model.identity, "judge": rater.identity,
               "decoding": decoding_of(model.backend),
               "judge_mode": mode, "questions": len(questions), "files": {"answers": str(answer_file)}}
    items = sum(min(2, len(q.turns)) for q in questions) * config.judge_repeats
    with tqdm(total=items, desc=f"mt-bench judge ({judge_id})", disable=None) as bar:
        lines = judge_single(rater, judge_id, questions, answers, references, config, prompts, bar.update)
    summary["files"]["single"] = str(_write(out_dir / "model_judgment" / f"{judge_id}_single.jsonl", lines))
    summary["single"] = single_table(lines, config.bootstrap_samples, config.seed)
    if config.pairwise_against is not None:
        summary["pairwise"] = _pairwise(comparer, judge_id, questions, answers, references, config, prompts, out_dir)
        summary["files"]["pair"] = summary["pairwise"].pop("file")
    summary.update(_failures(out_dir, records, lines, questions, model.identity, rater.identity))
    summary["usage"] = {"model": model.usage.to_json(), "judge": judge.usage.to_json()}
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    write_json(out_dir / "summary.json", summary)
    return summary


def _failures(out_dir: Path, records: list[dict], lines: list[dict], questions: list[Question], model: str,
              judge: str) -> dict:
    """Answers the model's server refused and judgments that failed or stayed unreadable, to failed.jsonl;
    returns the counts the failure-rate check needs (items tried: answer turns plus judgments)."""

    failures = FailureLog(out_dir / "failed.jsonl", f"eval mt-bench {out_dir.name}").start()
    asked = {q.question_id: q.turns for q in questions}
    for record in records:
        for turn, error in enumerate(record.get("errors", []), 1):
            if error is not None:
                failures.record(f"{record['question_id']}-answer-{turn}", error, model,
                                asked[record["question_id"]][turn - 1], role="model", turn=turn)
    for line in lines:
        if line["error"] and line["attempts"]:  # attempts 0: not judged because the answer failed
            failures.record(f"{line['question_id']}-judge-{line['turn']}-{line['repeat']}", line["error"], judge,
                            line["user_prompt"], role="judge", turn=line["turn"])
    tried = sum(len(r.get("errors", [])) for r in records) + len(lines)
    return {**failures.summary(), "tried_items": tried}


def _pairwise(judge, judge_id, questions, answers, references, config, prompts, out_dir) -> dict:


    theirs = load_answers(config.pairwise_against)
    if not any(q.question_id in theirs for q in questions):
        raise DataError(f"{config.pairwise_against}: answers none of the {len(questions)} questions")
    items = 2 * sum(min(2, len(q.turns)) for q in questions if q.question_id in theirs) * config.judge_repeats
    with tqdm(total=items, desc=f"mt-bench pairwise ({judge_id})", disable=None) as bar:
        lines = judge_pairwise(judge, judge_id, questions, answers, theirs, references, config, prompts, bar.update)
    table = pairwise_table(lines, config.bootstrap_samples, config.seed)
    table["file"] = str(_write(out_dir / "model_judgment" / f"{judge_id}_pair.jsonl", lines))
    table["against"] = next(iter(theirs.values())).model_id
    return table


def _write(path: Path, lines: list[dict]) -> Path:
    write_jsonl(path, lines)
    return path
