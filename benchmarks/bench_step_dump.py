"""Cost of the per-step dump (``acpo.dump``, recipe/acpo/step_dump.py) against a training step.

Builds a realistic batch, B = 64 responses of T = 96 tokens (arithmetic-like text tokenised with the real Qwen2.5
tokenizer, entropy with sparse peaks), runs the real ACPO step on it (segmentation, advantages; the workers' answer
scoring replaced by random log-likelihoods), then times what the trainer's driver adds on a dumped step: building the
records and writing the JSONL file, for ``max_responses`` 32 (the default) and 0 (all 64). Prints the median of
several runs after a warm-up, the file size, and the cost as a share of a CPU training step: the step time is read
from a run's metrics JSONL (``--metrics``, the mean ``timing_s/step``; the run's own ``timing_s/acpo_dump`` is printed
too) or given with ``--step-seconds``. Target (issue 11): at most 2% of a CPU demo step.

Run: ``python benchmarks/bench_step_dump.py [--metrics RUN/metrics.jsonl | --step-seconds 13] [--repeats 20]``
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from acpo_core.attribution import AttributionBatch, answer_batch
from acpo_core.config import ACPOConfig
from acpo_core.segmentation import VocabTables
from acpo_core.step import ACPOBatch, compute_acpo_step
from recipe.acpo.offline_models import load_qwen25_tokenizer
from recipe.acpo.step_dump import build_step_records, token_text_table, write_step_records


def arithmetic_text(rng: random.Random) -> str:
    sentences = []
    value = rng.randint(2, 99)
    for opener in ("First", "Then", "Next", "So", "Finally"):
        operand = rng.randint(2, 9)
        result = value * operand if rng.random() < 0.5 else value + operand
        sign = "*" if result == value * operand else "+"
        sentences.append(f"{opener}, {value} {sign} {operand} = {result}, which we keep for the next part.")
        value = result
    return " ".join(sentences) + f"\nAnswer: {value}"


def realistic_view(tokenizer, batch: int, width: int, seed: int = 0) -> ACPOBatch:
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    prompt = tokenizer("Compute step by step: start from a number and apply the operations.")["input_ids"]
    response_ids = torch.full((batch, width), tokenizer.pad_token_id, dtype=torch.long)
    for b in range(batch):
        ids = tokenizer(arithmetic_text(rng), add_special_tokens=False)["input_ids"][: width - 1]
        ids = (ids + [tokenizer.eos_token_id] * width)[:width]
        response_ids[b] = torch.tensor(ids)
    entropy = torch.rand(batch, width, generator=generator) * 0.5
    entropy[torch.rand(batch, width, generator=generator) < 0.08] = 3.0
    groups = 8
    scores = torch.tensor([float(rng.random() < 0.5) for _ in range(batch)])
    grouped = scores.view(groups, -1)
    base = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-6)).flatten()
    uids = [f"prompt-{b // (batch // groups)}" for b in range(batch)]
    answer_ids, answer_mask = answer_batch(tokenizer, ["42"] * batch, uids, "Answer: {answer}")
    return ACPOBatch(
        prompt_ids=torch.tensor([prompt] * batch),
        prompt_mask=torch.ones(batch, len(prompt), dtype=torch.long),
        response_ids=response_ids,
        response_mask=torch.ones(batch, width, dtype=torch.long),
        entropy=entropy,
        base_advantages=base,
        scores=scores,
        is_padding=torch.zeros(batch, dtype=torch.bool),
        uids=uids,
        answer_ids=answer_ids,
        answer_mask=answer_mask,
        ground_truths=["42"] * batch,
    )


def random_scores(inputs: AttributionBatch) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return -10.0 + torch.randn(inputs.boundaries.shape, generator=generator).cumsum(dim=1)


def step_seconds_from(metrics: Path) -> tuple[float, float | None]:
    """Mean timing_s/step and timing_s/acpo_dump over the steps of a run (the first step left out when possible)."""
    rows = [json.loads(line)["data"] for line in metrics.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "timing_s/step" in r]
    if not rows:
        raise SystemExit(f"{metrics}: no timing_s/step in any line")
    steady = rows[1:] or rows
    dump = [r["timing_s/acpo_dump"] for r in steady if "timing_s/acpo_dump" in r]
    return statistics.mean(r["timing_s/step"] for r in steady), (statistics.mean(dump) if dump else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--metrics", type=Path, help="a CPU run's metrics JSONL, for its mean step time")
    parser.add_argument("--step-seconds", type=float, help="a step time to compare with, when no --metrics")
    args = parser.parse_args()

    tokenizer = load_qwen25_tokenizer()
    start = time.perf_counter()
    texts = token_text_table(tokenizer)
    print(f"token text table (once per run, at trainer start): {time.perf_counter() - start:.3f} s")
    view = realistic_view(tokenizer, args.batch, args.width)
    cfg = ACPOConfig()
    result = compute_acpo_step(view, VocabTables.from_tokenizer(tokenizer), cfg, random_scores, {})
    steps_each = float(result.segmentation.num_steps.float().mean())
    print(f"batch: {args.batch} responses x {args.width} tokens, {steps_each:.1f} steps each")

    step_seconds, run_dump = (None, None)
    if args.metrics is not None:
        step_seconds, run_dump = step_seconds_from(args.metrics)
        print(
            f"run {args.metrics}: mean step {step_seconds:.2f} s"
            + (
                f", mean dump {run_dump * 1e3:.1f} ms ({100 * run_dump / step_seconds:.3f}% of a step)"
                if run_dump
                else ""
            )
        )
    elif args.step_seconds is not None:
        step_seconds = args.step_seconds

    with tempfile.TemporaryDirectory() as folder:
        for max_responses in (32, 0):
            timings = []
            for repeat in range(args.repeats + 1):
                start = time.perf_counter()
                records = build_step_records(
                    view, result, texts, global_step=repeat, stage=1, max_responses=max_responses
                )
                path = write_step_records(records, folder, repeat)
                if repeat:  # the first run warms up
                    timings.append(time.perf_counter() - start)
            median = statistics.median(timings)
            size = Path(path).stat().st_size
            line = f"max_responses={max_responses:<3} ({len(records)} records, {size / 1024:.0f} KiB): "
            line += f"{median * 1e3:.2f} ms"
            if step_seconds:
                line += f" = {100 * median / step_seconds:.3f}% of a {step_seconds:.2f} s step"
            print(line)


if __name__ == "__main__":
    main()
