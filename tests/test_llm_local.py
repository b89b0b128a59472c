"""The local backend on the real embedded SmolLM2 and real seed prompts."""
from __future__ import annotations

import json

from bezoar.llm.protocol import Sampling


def _dolly_prompts(data_dir, count: int) -> list[list[dict]]:
    lines = (data_dir / "seeds" / "dolly15k_open_qa_subset.jsonl").read_text().splitlines()[:count]
    return [[{"role": "user", "content": json.loads(line)["instruction"]}] for line in lines]


def test_embedded_model_answers(embedded):
    reply = embedded.generate([[{"role": "user", "content": "What is the capital of France?"}]],
                              Sampling(max_new_tokens=24))[0][0]
    assert "Paris" in reply.text
    assert reply.prompt_tokens > 10 and 0 < reply.completion_tokens <= 24
    assert reply.finish_reason in ("stop", "length")


def test_batched_greedy_equals_one_by_one(embedded, data_dir):
    prompts = _dolly_prompts(data_dir, 8)  # mixed lengths, so the batch is left-padded
    sampling = Sampling(max_new_tokens=40)
    batched = [r[0].text for r in embedded.generate(prompts, sampling)]
    single = [embedded.generate([p], sampling)[0][0].text for p in prompts]
    assert batched == single
    assert len(set(batched)) == len(batched)  # real, distinct answers


def test_sampling_is_per_row_reproducible(embedded, data_dir):
    prompts = _dolly_prompts(data_dir, 4)
    sampling = Sampling(max_new_tokens=24, temperature=0.9, top_p=0.95, n=2, seed=7)
    batched = embedded.generate(prompts, sampling)
    alone = embedded.generate(prompts[2:3], sampling)[0]
    assert [r.text for r in batched[2]] == [r.text for r in alone]
    assert all(rows[0].text != rows[1].text for rows in batched)  # n samples differ
    other_seed = embedded.generate(prompts[2:3], sampling.with_(seed=8))[0]
    assert [r.text for r in other_seed] != [r.text for r in alone]


def test_length_and_stop_strings(embedded):
    prompt = [[{"role": "user", "content": "Count from 1 to 30, separated by commas."}]]
    capped = embedded.generate(prompt, Sampling(max_new_tokens=8))[0][0]
    assert capped.finish_reason == "length" and capped.completion_tokens == 8
    stopped = embedded.generate(prompt, Sampling(max_new_tokens=64, stop=("5",)))[0][0]
    assert stopped.finish_reason == "stop" and "5" not in stopped.text and stopped.text


def test_roles_share_one_loaded_model():
    from bezoar.config import ModelConfig
    from bezoar.llm.specs import open_model

    teacher = open_model(ModelConfig(spec="local"), role="teacher")
    judge = open_model(ModelConfig(spec="local"), role="judge")
    assert teacher.backend is judge.backend and teacher.role != judge.role


def test_a_model_nobody_holds_is_let_go(embedded):
    """The caches share a backend and its weights between roles but never pin them: the eval stage
    lets each checkpoint go before it loads the next."""
    import gc
    import weakref

    from bezoar.config import ModelConfig
    from bezoar.llm.specs import open_model

    model = open_model(ModelConfig(spec="local", batch_size=5), role="student")
    assert model.backend.loaded is embedded.loaded  # weights someone holds are shared, not loaded again
    backend = weakref.ref(model.backend)
    del model
    gc.collect()
    assert backend() is None


def test_rows_joining_a_running_batch_decode_as_alone(embedded, data_dir):
    """With 3 slots and 7 prompts, rows join as others finish (continuous batching): same text."""
    from bezoar.llm.local import LocalBackend

    small = LocalBackend(batch_size=3)
    assert small.loaded is embedded.loaded  # one model per process
    prompts = _dolly_prompts(data_dir, 7)
    sampling = Sampling(max_new_tokens=32)
    seen = []
    joined = small.generate(prompts, sampling, on_reply=lambda i, r: seen.append(i))
    alone = [embedded.generate([p], sampling)[0][0].text for p in prompts]
    assert [r[0].text for r in joined] == alone
    assert sorted(seen) == list(range(7))  # every conversation reported as it finished


def test_prepacked_linear_layers_compute_what_the_plain_model_computes(embedded, data_dir):
    """The backend packs its linear weights for oneDNN (faster decoding); the logits stay the plain model's."""
    import torch
    from transformers import AutoModelForCausalLM

    from bezoar.llm.prepack import PackedLinear

    layers = [m for m in embedded.loaded.model.modules() if isinstance(m, torch.nn.Linear | PackedLinear)]
    assert layers and all(isinstance(m, PackedLinear) for m in layers)
    plain = AutoModelForCausalLM.from_pretrained(embedded.loaded.path).eval()
    texts = [embedded.render(p) for p in _dolly_prompts(data_dir, 4)]
    batch = embedded.tokenizer(texts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        packed_logits, plain_logits = embedded.loaded.model(**batch).logits, plain(**batch).logits
    real = batch.attention_mask.bool()
    assert torch.allclose(packed_logits[real], plain_logits[real], atol=1e-3, rtol=0)
    assert torch.equal(packed_logits[real].argmax(-1), plain_logits[real].argmax(-1))


def test_fast_mode_decodes_in_the_dtype_measured_fastest(embedded_fast):
    """The default (fast) mode: bf16 where this CPU is faster in it, packed for oneDNN all the same; the
    model's identity (hence every cache key) names the dtype, so fp32 replies are never served to it."""
    import torch

    from bezoar.llm.device import plan_device
    from bezoar.llm.prepack import PackedLinear

    dtype = plan_device("auto", exact=False).dtype
    assert embedded_fast.loaded.plan.dtype == dtype and embedded_fast.identity.endswith(":" + str(dtype)[6:])
    assert all(isinstance(m, PackedLinear) for m in embedded_fast.loaded.model.modules()
               if isinstance(m, torch.nn.Linear | PackedLinear))
    reply = embedded_fast.generate([[{"role": "user", "content": "What is the capital of France?"}]],
                                   Sampling(max_new_tokens=24))[0][0]
    assert "Paris" in reply.text
