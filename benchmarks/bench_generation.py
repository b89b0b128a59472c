"""Generation throughput with the embedded SmolLM2-135M: 64 mixed-length seed prompts, up to 128 new
tokens, greedy. Compares, in one run on one machine:
  (a) sequential `model.generate`, one prompt at a time, transformers' defaults: fp32 (what a user's
      script does), and in the dtype bezoar's fast mode decodes in (bf16 on CPUs with native bf16)
  (b) bezoar's local backend (continuously batched), fast mode (the default) and deterministic mode (fp32)
  (c) bezoar through `bezoar serve`, 8 concurrent clients over HTTP
  (d) llama-cpp-python in-process batch-1 on the same GGUF, when it is installed
Tokens/s counts real generated tokens (up to and including EOS), never padding. The goals (issue 23):
(b) fast >= 15x (a) in the same dtype and >= 30x (a) in fp32.

    .venv/bin/python benchmarks/bench_generation.py [--baseline-prompts 16]
"""
from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

from common import emit, mixed_prompts, peak_rss_mb

MAX_NEW = 128


def baseline_sequential(prompts, dtype: str = "float32") -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bezoar.llm.weights import resolve_model_dir

    path = resolve_model_dir(None)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))  # otherwise transformers' defaults
    tokens, started = 0, time.perf_counter()
    for conversation in prompts:
        ids = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=MAX_NEW, do_sample=False)
        tokens += out.shape[1] - ids["input_ids"].shape[1]
    return tokens / (time.perf_counter() - started)


def bezoar_local(prompts, batch_size: int, exact: bool = False) -> float:
    from bezoar.llm.local import LocalBackend
    from bezoar.llm.protocol import Sampling

    backend = LocalBackend(batch_size=batch_size, exact=exact)
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
    from bezoar.llm.device import plan_device

    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--baseline-prompts", type=int, default=16, help="(a) is slow; its rate is taken on fewer")
    args = parser.parse_args()
    prompts = mixed_prompts(args.prompts)
    fast = plan_device("auto", exact=False).dtype_name
    figures: dict = {"fast_dtype": fast, "baseline_fp32_tok_s": baseline_sequential(prompts[:args.baseline_prompts])}
    print(f"(a) sequential HF generate, float32: {figures['baseline_fp32_tok_s']:.1f} tok/s", flush=True)
    if fast != "float32":
        figures[f"baseline_{fast}_tok_s"] = baseline_sequential(prompts[:args.baseline_prompts], fast)
        print(f"(a) sequential HF generate, {fast}: {figures[f'baseline_{fast}_tok_s']:.1f} tok/s", flush=True)
    for batch in (32, 64):
        figures[f"bezoar_local_b{batch}_tok_s"] = bezoar_local(prompts, batch)
        print(f"(b) bezoar local backend, fast ({fast}), batch {batch}: {figures[f'bezoar_local_b{batch}_tok_s']:.1f} tok/s",
              flush=True)
    figures["bezoar_local_deterministic_b64_tok_s"] = bezoar_local(prompts, 64, exact=True)
    print(f"(b) bezoar local backend, deterministic (float32), batch 64: "
          f"{figures['bezoar_local_deterministic_b64_tok_s']:.1f} tok/s", flush=True)
    figures["bezoar_serve_c8_tok_s"] = bezoar_served(prompts)
    print(f"(c) bezoar serve, 8 clients: {figures['bezoar_serve_c8_tok_s']:.1f} tok/s", flush=True)
    figures["llama_cpp_tok_s"] = llama_cpp(prompts[:args.baseline_prompts])
    print(f"(d) llama.cpp in-process batch 1: {figures['llama_cpp_tok_s'] or 'not installed'}", flush=True)
    same_dtype = figures.get(f"baseline_{fast}_tok_s", figures["baseline_fp32_tok_s"])
    for key in [k for k in figures if k.startswith(("bezoar", "llama")) and figures[k]]:
        name = key.removesuffix("_tok_s")
        figures[f"{name}_vs_fp32_generate"] = round(figures[key] / figures["baseline_fp32_tok_s"], 2)
        line = f"  {name}: {figures[key] / figures['baseline_fp32_tok_s']:.1f}x (a) fp32"
        if "deterministic" not in key:
            figures[f"{name}_vs_same_dtype_generate"] = round(figures[key] / same_dtype, 2)
            line += f", {figures[key] / same_dtype:.1f}x (a) {fast}"
        print(line)
    best = max(figures["bezoar_local_b32_tok_s"], figures["bezoar_local_b64_tok_s"])
    figures["goal_15x_same_dtype"] = best / same_dtype >= 15
    figures["goal_30x_fp32"] = best / figures["baseline_fp32_tok_s"] >= 30
    figures["peak_rss_mb"] = round(peak_rss_mb())
    emit({k: round(v, 2) if isinstance(v, float) else v for k, v in figures.items()})


if __name__ == "__main__":
    main()
