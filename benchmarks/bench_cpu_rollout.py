"""Generated tokens per second of the CPU rollout server: 16 concurrent requests decoded as one batch vs one at a time.

Both sides go through the same ``CPURolloutServer.generate`` (the method verl's agent loops call through Ray); the
only difference is whether the requests are pending together. Prompts are the arithmetic prompts of the training
data in the Qwen2.5 chat template; every request samples at temperature 1 with ``ignore_eos`` so both sides generate
exactly the same number of tokens.

    python benchmarks/bench_cpu_rollout.py [--model DIR] [--requests 16] [--max-tokens 64] [--repeats 2]

Without ``--model`` a tiny random Qwen2 with the real Qwen2.5 tokenizer is built offline in a temporary folder.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _prompts(tokenizer: Any, count: int) -> list[list[int]]:
    from data_prep.schema import render_prompt

    prompts = []
    for number in range(count):
        messages = [{"role": "user", "content": render_prompt(f"What is {17 + number} + {29 * number % 97}?")}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompts.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return prompts


def _server(model_dir: Path, max_tokens: int, threads: int | None) -> Any:
    from verl.workers.config import HFModelConfig, RolloutConfig

    from verl_cpu.rollout import CPURolloutServer

    config = RolloutConfig(
        name="cpu",
        tensor_model_parallel_size=1,
        prompt_length=512,
        response_length=max_tokens,
        load_format="auto",
        engine_kwargs={"cpu": {"num_threads": threads}},
    )
    return CPURolloutServer(config, HFModelConfig(path=str(model_dir), override_config={"attn_implementation": "sdpa"}))


async def _batched(server: Any, prompts: list[list[int]], params: dict[str, Any]) -> int:
    requests = [
        server.generate(prompt_ids=prompt, sampling_params=dict(params), request_id=f"b{i}")
        for i, prompt in enumerate(prompts)
    ]
    outputs = await asyncio.gather(*requests)
    return sum(len(o.token_ids) for o in outputs)


async def _one_at_a_time(server: Any, prompts: list[list[int]], params: dict[str, Any]) -> int:
    generated = 0
    for i, prompt in enumerate(prompts):
        output = await server.generate(prompt_ids=prompt, sampling_params=dict(params), request_id=f"s{i}")
        generated += len(output.token_ids)
    return generated


def _tokens_per_second(run: Any, server: Any, prompts: list[list[int]], params: dict[str, Any], repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        tokens = asyncio.run(run(server, prompts, params))
        rates.append(tokens / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="Hugging Face model folder (default: a tiny random Qwen2)")
    parser.add_argument("--requests", type=int, default=16, help="concurrent requests (default 16)")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens generated per request (default 64)")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats per side, median reported (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="acpo_bench_rollout_") as tmp:
        if args.model is None:
            from recipe.acpo.offline_models import build_tiny_qwen2

            model_dir = build_tiny_qwen2(Path(tmp) / "tiny_qwen2")
            model_name = "tiny random Qwen2 (hidden 64, 2 layers, Qwen2.5 vocabulary)"
        else:
            model_dir, model_name = args.model, str(args.model)
        server = _server(model_dir, args.max_tokens, args.threads)
        prompts = _prompts(server.model_config.tokenizer, args.requests)
        params = {"temperature": 1.0, "max_tokens": args.max_tokens, "ignore_eos": True, "logprobs": True}

        asyncio.run(_batched(server, prompts[:2], params))  # warm-up: first-call allocations, thread pools
        one_at_a_time = _tokens_per_second(_one_at_a_time, server, prompts, params, args.repeats)
        batched = _tokens_per_second(_batched, server, prompts, params, args.repeats)
        batch_sizes = sorted(set(server.batch_sizes[1:]))

    print(f"model: {model_name}")
    print(
        f"{args.requests} requests x {args.max_tokens} tokens, prompts of {min(map(len, prompts))}-"
        f"{max(map(len, prompts))} tokens, temperature 1, torch threads {server.options.num_threads or os.cpu_count()}"
    )
    print(f"batch sizes the server decoded: {batch_sizes}")
    print(f"one at a time: {one_at_a_time:8.1f} generated tokens/s")
    print(f"batched:       {batched:8.1f} generated tokens/s")
    print(f"speed-up:      {batched / one_at_a_time:8.2f}x (target >= 4x)")


if __name__ == "__main__":
    main()
