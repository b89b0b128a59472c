"""The judge with the real embedded model (next-token scoring and generated replies) and, for the remote
code path, over HTTP through the OpenAI backend."""
from __future__ import annotations

import json

import pytest

from bezoar.errors import ConfigError
from bezoar.filter.config import FilterConfig, JudgeConfig
from bezoar.filter.judge import judge_records, load_prompt, scoring_mode
from bezoar.filter.runner import Item, filter_items
from bezoar.llm.cache import CachedModel, CallCache
from bezoar.records import ChatMessage, Record, RecordMeta
from servers import FaultServer


def record(instruction: str, response: str) -> Record:
    return Record(messages=[ChatMessage(role="user", content=instruction), ChatMessage(role="assistant", content=response)],
                  meta=RecordMeta(method="test")).with_id()


@pytest.fixture(scope="module")
def records(data_dir) -> list[Record]:
    rows = [json.loads(line) for line in (data_dir / "seeds/dolly15k_open_qa_subset.jsonl").open()][:3]
    good = [record(r["instruction"], r["response"]) for r in rows]
    return good + [record(rows[0]["instruction"], "banana banana banana")]


@pytest.fixture(scope="module")
def scored(embedded, records, tmp_path_factory):
    model = CachedModel(embedded, CallCache(tmp_path_factory.mktemp("judge") / "calls.sqlite"), role="judge")
    return model, judge_records(records, model, JudgeConfig(chunk_size=2, rule="rating"))


def test_local_judge_rates_from_next_token_probabilities(scored, records):
    model, results = scored
    assert model.usage.calls == len(records)
    for result in results:
        assert result.scoring == "logprobs" and result.fmt == "logprobs" and result.error is None
        assert 1.0 <= result.rating <= 10.0
        reply = result.raw[0]
        assert reply.startswith(f"Rating: [[{result.rating:.2f}]]")
        evidence = json.loads(reply.split("\n", 1)[1])
        probabilities = evidence["probabilities"]
        assert list(probabilities) == [str(r) for r in range(1, 11)] and abs(sum(probabilities.values()) - 1) < 1e-3
        expected = sum(int(r) * p for r, p in probabilities.items())
        assert abs(expected - result.rating) < 0.01
        assert 0 < evidence["mass"] <= 1  # how much the model wanted to write a rating at all
        assert result.accepted == (result.rating >= 6.0)
        assert "next-token" in result.judge and result.prompt.startswith("judge_rubric#")


def test_cached_judgments_are_not_asked_again(scored, records):
    model, results = scored
    again = CachedModel(model.backend, CallCache(model.cache.path), role="judge")
    repeat = judge_records(records, again, JudgeConfig(chunk_size=3))
    assert again.usage.calls == 0 and again.usage.cache_hits == len(records)
    assert [r.rating for r in repeat] == [r.rating for r in results]


def test_batched_scores_equal_one_by_one(scored, records):
    model, results = scored
    fresh = CachedModel(model.backend, CallCache(model.cache.path.with_name("solo.sqlite")), role="judge")
    solo = [judge_records([r], fresh, JudgeConfig())[0].rating for r in records[:2]]
    assert solo == [r.rating for r in results[:2]]


def test_top_fraction_keeps_the_best_rated(scored, records):
    model, results = scored
    ratings = sorted((r.rating for r in results), reverse=True)
    for config in (JudgeConfig(rule="top_fraction", keep_fraction=0.5), JudgeConfig(keep_fraction=0.5)):
        kept = judge_records(records, model, config)  # the second: `auto` means top_fraction for next-token scores
        assert all(r.rule == "top_fraction" for r in kept) and sum(r.accepted for r in kept) >= 2
        assert all(r.accepted == (r.rating >= ratings[1]) for r in kept)


def test_unreadable_replies_are_retried_once_then_become_failed_items(embedded, records, tmp_path):
    """SmolLM2 generating one token cannot write a rating: the strict prompt is tried, then judge_error."""
    model = CachedModel(embedded, CallCache(tmp_path / "calls.sqlite"), role="judge")
    config = JudgeConfig(scoring="generate", max_new_tokens=1)
    results = judge_records(records[:2], model, config)
    assert model.usage.calls == 4  # two records, each asked twice
    for result in results:
        assert result.error == "judge_error" and result.attempts == 2 and not result.accepted
        assert len(result.raw) == 2 and result.prompt.startswith("judge_strict#")
    items = [Item(r, "evol") for r in records[:2]]
    summary = filter_items(items, FilterConfig(judge=config), model)
    # failed items: neither kept nor rejected, counted, with the judge's raw replies (not lost)
    assert [(i.failed, i.alive, i.rejected) for i in items] == [(True, False, False)] * 2
    assert summary["failed_items"] == 2 and summary["kept"] == 0 and summary["rejected"] == 0
    assert [i.judgment.error for i in items] == ["judge_error"] * 2
    assert summary["judge"]["errors"] == 2 and summary["judge"]["retried"] == 2
    assert summary["judge"]["usage"]["calls"] == 0  # all four replies came from the cache


class RemoteJudge(FaultServer):
    """An OpenAI-compatible judge that rambles on the rubric prompt and obeys the strict one: a fault a
    strong judge shows now and then, which no local model can be made to show on demand."""

    def act(self, handler, action):
        body = self.seen[-1]["body"]
        strict = "Output only this JSON object" in body["messages"][-1]["content"]
        text = '{"rating": 8, "verdict": "accept", "reason": "Correct and concise."}' if strict else \
            "This response is quite good and addresses the question well."
        self.ok_body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                     "finish_reason": "stop"}], "usage": {"prompt_tokens": 50, "completion_tokens": 12}}
        super().act(handler, "ok")


def test_remote_judge_goes_through_generation_parsing_and_the_retry(records, tmp_path):
    from bezoar.config import ModelConfig
    from bezoar.llm.specs import open_model

    server = RemoteJudge([])
    try:
        # One request at a time, so the reply the server builds always belongs to the request it last saw.
        model = open_model(ModelConfig(spec=f"openai:judge-model@{server.url}/v1", concurrency=1), "judge",
                           CallCache(tmp_path / "calls.sqlite"))
        assert scoring_mode(model, "auto") == "generate"
        assert scoring_mode(model, "logprobs") == "logprobs"  # an OpenAI-compatible server returns top_logprobs
        claude = open_model(ModelConfig(spec=f"anthropic:claude@{server.url}", api_key_env="PATH"), "judge",
                            CallCache(tmp_path / "calls.sqlite"))
        with pytest.raises(ConfigError, match="the Messages API returns no log-probabilities"):
            scoring_mode(claude, "logprobs")
        results = judge_records(records[:2], model, JudgeConfig(rule="both"))
    finally:
        server.close()
    assert len(server.seen) == 4
    for result in results:
        assert (result.rating, result.verdict, result.accepted, result.attempts) == (8.0, "accept", True, 2)
        assert result.raw[0].startswith("This response is quite good") and result.fmt == "json"


def test_prompt_files_and_bad_prompt_names(tmp_path):
    rubric = load_prompt("judge_rubric")
    conversation = rubric.render(instruction="Name a colour.", response="Blue.")
    assert conversation[0]["role"] == "system" and "Harmlessness" in conversation[0]["content"]
    assert "[Instruction]\nName a colour." in conversation[1]["content"] and "Rating: [[N]]" in conversation[1]["content"]
    custom = tmp_path / "mine.txt"
    custom.write_text("Be strict.\n=== user ===\n$instruction -> $response")
    assert load_prompt(str(custom)).render(instruction="a", response="b")[1]["content"] == "a -> b"
    with pytest.raises(ConfigError, match="judge prompt 'nope'"):
        load_prompt("nope")


def test_judge_clusters_keeps_the_member_the_judge_rates_best(scored, records):
    model, results = scored
    rewording = record(records[0].instruction.replace("for long", "for a long time"), records[1].response)
    items = [Item(records[0], "lamini"), Item(rewording, "evol"), Item(records[2], "lamini")]
    config = FilterConfig.model_validate({"dedup": {"judge_clusters": True}, "contamination": {"enabled": False},
                                          "judge": {"rule": "rating", "threshold": 1.0}, "heuristics": {"enabled": False}})
    fresh = CachedModel(model.backend, CallCache(model.cache.path.with_name("clusters.sqlite")), role="judge")
    summary = filter_items(items, config, fresh)
    ratings = [judge_records([i.record], model, JudgeConfig())[0].rating for i in items[:2]]
    best = 0 if ratings[0] >= ratings[1] else 1
    assert items[best].alive and items[1 - best].reasons == ["near_duplicate"]
    assert summary["judge"]["usage"]["calls"] == 3  # two cluster members + the distinct record, each once
