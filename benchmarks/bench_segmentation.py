"""Throughput of §2 segmentation (``acpo_core.segmentation.segment_steps``) on a realistic batch.

B = 64 responses of width T = 4096 (valid lengths between 3/4 T and T), token ids of a long generated math solution
tokenized with the real Qwen2.5 tokenizer, entropy mostly low with sparse peaks (as a policy's is). Prints tokens per
second over the B x T positions and over the valid tokens, the median of several timed runs after a warm-up, for both
quantile scopes and a stress setting. Target (issue 2): at least 2 million tokens/s on the 2-core development machine.

Run: ``python benchmarks/bench_segmentation.py [--batch 64] [--width 4096] [--repeats 15]``
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from acpo_core.config import SegmentationConfig
from acpo_core.segmentation import VocabTables, segment_steps
from recipe.acpo.offline_models import load_qwen25_tokenizer


def math_solution_text(rng: random.Random, paragraphs: int) -> str:
    """A long chain-of-thought-like math text: sentences, markers, numbers with decimals, $...$ math, newlines."""
    openers = ["So", "Thus", "Therefore", "Now", "Next", "First", "Then", "However", "Wait", "Alternatively", "Let"]
    templates = [
        "{o}, we compute ${a} \\times {b} = {ab}$, which gives {c}.{d} after rounding.",
        "{o} the total is {a} + {b} = {s}. We check it again: ${a}.{d} + {b} = {s}.{d}$.",
        "Consider the equation $x^2 - {s}x + {ab} = 0$, so $x = {a}$ or $x = {b}$.",
        "{o} note that $\\frac{{{a}}}{{{b}}} \\approx {c}.{d}$; hence the ratio is less than {s}.",
        "Step {d}: since the area is {ab} and the width is {a}, the length is {b}.",
        "{o}, let me recheck this. If $n = {a}$ then $n^2 = {aa}$, but we need {s}.",
        "Because {a} is odd, $({a} + 1)/2 = {h}.{hh}$ is not an integer, so we try {b} instead.",
    ]
    lines = []
    for _ in range(paragraphs):
        sentences = []
        for _ in range(rng.randint(2, 6)):
            a, b = rng.randint(2, 99), rng.randint(2, 99)
            sentences.append(
                rng.choice(templates).format(
                    o=rng.choice(openers),
                    a=a,
                    b=b,
                    ab=a * b,
                    s=a + b,
                    aa=a * a,
                    c=rng.randint(0, 9),
                    d=rng.randint(0, 9),
                    h=(a + 1) // 2,
                    hh=5 if a % 2 == 0 else 0,
                )
            )
        lines.append(" ".join(sentences))
    return "\n\n".join(lines) + "\n\nAnswer: 42"


def realistic_entropy(generator: torch.Generator, shape: tuple[int, int]) -> torch.Tensor:
    """Mostly near-zero entropy (confident tokens) with about 4% sparse peaks between 1 and 4 nats."""
    low = torch.rand(shape, generator=generator).pow(4) * 0.3
    peaks = torch.rand(shape, generator=generator) < 0.04
    return torch.where(peaks, 1.0 + 3.0 * torch.rand(shape, generator=generator), low)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    batch, width = args.batch, args.width

    tokenizer = load_qwen25_tokenizer()
    start = time.perf_counter()
    tables = VocabTables.from_tokenizer(tokenizer)
    build_s = time.perf_counter() - start

    rng = random.Random(0)
    stream = tokenizer.encode(math_solution_text(rng, paragraphs=400))
    assert len(stream) > 2 * width, "the generated text is too short for the requested width"
    generator = torch.Generator().manual_seed(0)
    ids = torch.full((batch, width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(batch, width, dtype=torch.long)
    for b in range(batch):
        length = rng.randint(3 * width // 4, width)
        offset = rng.randint(0, len(stream) - length)
        ids[b, :length] = torch.tensor(stream[offset : offset + length])
        mask[b, :length] = 1
    entropy = realistic_entropy(generator, (batch, width))
    valid_tokens = int(mask.sum())

    print(f"segment_steps, B={batch}, T={width}, {valid_tokens} valid tokens, torch threads={torch.get_num_threads()}")
    print(f"VocabTables.from_tokenizer (once per tokenizer): {build_s:.2f} s for {tables.vocab_size} ids")
    configs = {
        "defaults (quantile_scope=response)": SegmentationConfig(),
        "quantile_scope=batch": SegmentationConfig(quantile_scope="batch"),
        # Stress: four times the peaks and boundaries so far apart that the greedy visits almost every candidate.
        "stress: entropy_top_ratio=0.2, min_step_tokens=256": SegmentationConfig(
            entropy_top_ratio=0.2, min_step_tokens=256
        ),
    }
    for name, cfg in configs.items():
        result = segment_steps(ids, entropy, mask, tables, cfg)  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            segment_steps(ids, entropy, mask, tables, cfg)
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        steps = result.num_steps.float()
        print(
            f"{name}:\n    median {median * 1e3:7.1f} ms (min {min(times) * 1e3:.1f}) | "
            f"{batch * width / median / 1e6:5.2f} M positions/s | {valid_tokens / median / 1e6:5.2f} M valid tokens/s"
            f" | steps/response mean {steps.mean():.1f} (min {int(steps.min())}, max {int(steps.max())}), "
            f"marker boundaries {result.marker_boundary.sum() / max(1, int((steps - 1).sum())):.0%}"
        )


if __name__ == "__main__":
    main()
