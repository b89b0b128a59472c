"""Generation throughput with the embedded SmolLM2-135M: 64 mixed-length seed prompts, up to 128 new
tokens, greedy. Compares, in one run on one machine:
  (a) sequential `model.generate`, one prompt at a time, transformers' defaults (the obvious baseline)
  (b) bezoar's local backend (batched, left-padded, longest-first)
  (c) bezoar through `bezoar serve`, 8 concurrent clients over HTTP
  (d) llama-cpp-python in-process batch-1 on the same GGUF, when it is installed
Tokens/s counts real generated tokens (up to and including EOS), never padding.

    .venv/bin/python benchmarks/bench_generation.py [--baseline-prompts 16]
"""
from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

from common import emit, mixed_prompts

MAX_NEW = 128


def baseline_sequential(prompts) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bezoar.llm.weights import resolve_model_dir

    path = resolve_model_dir(None)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)  # transformers' defaults
    tokens, started = 0, time.perf_counter()
    for conversation in prompts:
        ids = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=MAX_NEW, do_sample=False)
        tokens += out.shape[1] - ids["input_ids"].shape[1]
    return tokens / (time.perf_counter() - started)


def bezoar_local(prompts, batch_size: int) -> float:
    from bezoar.llm.local import LocalBackend
    from bezoar.llm.protocol import Sampling

    backend = LocalBackend(batch_size=batch_size)
    started = time.perf_counter()
    replies = backend.generate(prompts, Sampling(max_new_tokens=MAX_NEW))
    return sum(r[0].completion_tokens for r in replies) / (time.perf_counter() - started)


def bezoar_served(prompts, clients: int = 8) -> float:
    import httpx

    from servers import bezoar_server

    def ask(url, conversation) -> int:
        body = {"model": "smollm2", "messages": conversation, "max_tokens": MAX_NEW, "temperature": 0}
        return httpx.post(f"{url}/chat/completions", json=body, timeout=600).json()["usage"]["completion_tokens"]

    with bezoar_server() as url:
        ask(url, prompts[0])  # warm-up
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            tokens = sum(pool.map(lambda c: ask(url, c), prompts))
        return tokens / (time.perf_counter() - started)


def llama_cpp(prompts) -> float | None:
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    from bezoar.llm.weights import embedded_gguf

    llm = Llama(model_path=str(embedded_gguf()), n_ctx=2048, verbose=False)
    tokens, started = 0, time.perf_counter()
    for conversation in prompts:
        out = llm.create_chat_completion(conversation, max_tokens=MAX_NEW, temperature=0)
        tokens += out["usage"]["completion_tokens"]
    return tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--baseline-prompts", type=int, default=16, help="(a) is slow; its rate is taken on fewer")
    args = parser.parse_args()
    prompts = mixed_prompts(args.prompts)
    figures = {"baseline_tok_s": baseline_sequential(prompts[:args.baseline_prompts])}
    print(f"(a) sequential HF generate: {figures['baseline_tok_s']:.1f} tok/s", flush=True)
    for batch in (32, 64):
        figures[f"bezoar_local_b{batch}_tok_s"] = bezoar_local(prompts, batch)
        print(f"(b) bezoar local backend, batch {batch}: {figures[f'bezoar_local_b{batch}_tok_s']:.1f} tok/s", flush=True)
    figures["bezoar_serve_c8_tok_s"] = bezoar_served(prompts)
    print(f"(c) bezoar serve, 8 clients: {figures['bezoar_serve_c8_tok_s']:.1f} tok/s", flush=True)
    figures["llama_cpp_tok_s"] = llama_cpp(prompts[:args.baseline_prompts])
    print(f"(d) llama.cpp in-process batch 1: {figures['llama_cpp_tok_s'] or 'not installed'}", flush=True)
    base = figures["baseline_tok_s"]
    for key in [k for k in figures if k.startswith("bezoar") or k.startswith("llama")]:
        if figures[key]:
            figures[key.replace("_tok_s", "_speedup")] = round(figures[key] / base, 2)
            print(f"  {key}: {figures[key] / base:.1f}x (a)")
    emit({k: round(v, 2) if isinstance(v, float) else v for k, v in figures.items()})


if __name__ == "__main__":
    main()
