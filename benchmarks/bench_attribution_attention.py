"""§3 packed attribution: the dense-sdpa path against the flex-attention path, analytic at 7B and measured on CPU.

Part 1 (analytic, no model): the shapes of examples/run_acpo_qwen7b.sh on Qwen2.5-Math-7B (28 layers, 28 query and
4 key/value heads of 128, hidden 3584): prompt 1024, response 3072, K + 1 = 25 answer copies of |Y| = 8 tokens, so
every packed row holds 4296 tokens. For micro-batches of n rows it prints

- the attention mask's memory: dense, the [n, 1, S, S] boolean mask plus the [n, S, S] temporaries ``pack_rows``
  builds it from (4 of them); flex, the five per-token int64 vectors and the block tables;
- the attention FLOPs per forward (4 * pairs * heads * head_dim * layers): dense computes every (query, key) pair of
  every padded row (a mask rules out flash attention, and sdpa's kernels do not skip masked blocks); flex computes
  the pairs of the blocks its BlockMask lists (built here from the real per-token vectors, no model needed);
- the micro-batches a token budget of 12288 (the scripts' ``log_prob_max_token_len_per_gpu``) gives each path;
- flex compilations: over a realistic spread of row lengths (prompt 64-1024, response 128-3072 log-uniform, K + 1 =
  2-25 copies of |Y| = 8; 8 ranks x ``--steps-7b`` steps of 16 responses each, micro-batches of at most 8 rows under
  the 12288 budget), the distinct padded widths (one compilation each per rank) and the mean padding fraction
  (padding / padded width), with the budget's widths (:func:`padded_width` with the budget) and without (the
  few-lengths-per-doubling rule flex used before).

Part 2 (measured, this CPU): a random Qwen2 (hidden 256, 4 layers, built offline) scores B responses (prompt 128,
response 1024, K = 16, |Y| = 8 by default) through both paths, each in its own process: wall time (flex: first call,
with compilation, and a second call), peak resident memory, the number of flex compilations, and the largest
difference from the naive reference. Figures measured on a shared machine vary; rerun to compare.

Run: ``python benchmarks/bench_attribution_attention.py [--batch 8] [--response-len 1024] [--skip-measure]``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from acpo_core.attribution import AttributionBatch, check_attribution_batch
from acpo_core.document_packing import BLOCK_SIZE, block_mask, pack_documents, packed_lengths, padded_width
from acpo_core.micro_batches import plan_micro_batches

QWEN7B = {"layers": 28, "heads": 28, "kv_heads": 4, "head_dim": 128, "hidden": 3584}


def synthetic_batch(rows: int, prompt: int, response: int, steps: int, answer: int, vocab: int) -> AttributionBatch:
    """``rows`` responses of the given lengths with random ids and K evenly jittered steps."""
    rng = random.Random(0)
    generator = torch.Generator().manual_seed(0)
    boundaries = torch.full((rows, steps + 1), -1, dtype=torch.long)
    for b in range(rows):
        boundaries[b] = torch.tensor([0, *sorted(rng.sample(range(1, response), steps - 1)), response])
    return AttributionBatch(
        prompt_ids=torch.randint(0, vocab, (rows, prompt), generator=generator),
        prompt_mask=torch.ones(rows, prompt, dtype=torch.long),
        response_ids=torch.randint(0, vocab, (rows, response), generator=generator),
        response_mask=torch.ones(rows, response, dtype=torch.long),
        boundaries=boundaries,
        num_steps=torch.full((rows,), steps, dtype=torch.long),
        answer_ids=torch.randint(0, vocab, (rows, answer), generator=generator),
        answer_mask=torch.ones(rows, answer, dtype=torch.long),
    )


def flex_computed_pairs(batch: AttributionBatch) -> tuple[int, int]:
    """(pairs in the blocks the BlockMask computes, bytes of its per-token vectors and block tables)."""
    packed = pack_documents(batch, check_attribution_batch(batch))
    mask = block_mask(packed)
    blocks = int(mask.kv_num_blocks.sum() + mask.full_kv_num_blocks.sum())
    vectors = 5 * packed.document.numel() * packed.document.element_size()
    tables = sum(t.numel() * t.element_size() for t in (mask.kv_indices, mask.full_kv_indices))
    return blocks * BLOCK_SIZE * BLOCK_SIZE, vectors + 2 * tables


def analytic(args: argparse.Namespace) -> None:
    model = QWEN7B
    per_pair = 4 * model["heads"] * model["head_dim"] * model["layers"]  # QK^T and AV, multiply-adds x 2
    batch = synthetic_batch(args.rows_7b, 1024, 3072, 24, 8, vocab=1000)
    row_len = int(packed_lengths(check_attribution_batch(batch))[0])
    print(
        f"Part 1, analytic: Qwen2.5-Math-7B, prompt 1024, response 3072, K + 1 = 25 copies of |Y| = 8: "
        f"{row_len} tokens per packed row"
    )
    print(f"{'rows':>5} {'dense mask GB':>14} {'flex mask MB':>13} {'dense attn TFLOP':>17} {'flex attn TFLOP':>16}")
    for rows in (1, 2, 4, 8):
        part = batch.select(torch.arange(rows))
        dense_pairs = rows * row_len * row_len
        dense_bytes = 5 * dense_pairs  # the bool mask and four same-size temporaries while building it
        flex_pairs, flex_bytes = flex_computed_pairs(part)
        print(
            f"{rows:>5} {dense_bytes / 1e9:>14.2f} {flex_bytes / 1e6:>13.2f} {dense_pairs * per_pair / 1e12:>17.2f} "
            f"{flex_pairs * per_pair / 1e12:>16.2f}"
        )
    print(
        "  dense, besides: transformers repeats K/V for grouped-query attention when a mask is given (7x the K/V "
        f"of a layer: {2 * 8 * row_len * model['heads'] * model['head_dim'] * 2 / 1e9:.2f} GB for 8 rows in bf16), "
        "and sdpa's math fallback would hold [n, 28, S, S] scores "
        f"({8 * model['heads'] * row_len * row_len * 2 / 1e9:.1f} GB for 8 rows in bf16, per layer)."
    )
    lengths = torch.full((8,), row_len)
    for attention in ("sdpa", "flex"):
        plan = plan_micro_batches(lengths, 8, 12288, attention, model["hidden"], BLOCK_SIZE)
        print(
            f"  token budget 12288, {attention}: {len(plan)} micro-batches of {[len(p) for p in plan]} rows "
            f"(fixed count before: 1 micro-batch of 8 rows, {8 * row_len} tokens)"
        )
    one, two = padded_width(row_len, token_budget=12288), padded_width(2 * row_len, token_budget=12288)
    print(
        f"  flex compiles once per padded length: a {row_len}-token row pads to {one}, two rows to {two} (budget "
        "widths: multiples of 1536)"
    )
    spread = width_spread(args.steps_7b)
    print(f"  flex over a realistic spread of lengths ({args.steps_7b} steps x 8 ranks x 16 responses, budget 12288):")
    for rule, (count, padding) in spread.items():
        print(
            f"    {rule:>13}: {count:>2} distinct widths (all ranks pooled: at most this many compilations per rank), "
            f"mean padding {padding:.1%}"
        )


def width_spread(steps: int, ranks: int = 8, rows: int = 16, budget: int = 12288) -> dict[str, tuple[int, float]]:
    """{rule: (distinct padded widths, mean padding fraction)} over realistic micro-batches (module docstring)."""
    rng = random.Random(0)
    sums = []
    for _ in range(steps * ranks):
        lengths = [
            rng.randint(64, 1024) + int(math.exp(rng.uniform(math.log(128), math.log(3072)))) + rng.randint(2, 25) * 8
            for _ in range(rows)
        ]
        for group in plan_micro_batches(torch.tensor(lengths), 8, budget, "flex", QWEN7B["hidden"], BLOCK_SIZE):
            sums.append(sum(lengths[i] for i in group.tolist()))
    result = {}
    for rule, token_budget in (("budget widths", budget), ("per doubling", None)):
        widths = [padded_width(n, BLOCK_SIZE, token_budget) for n in sums]
        padding = sum((w - n) / w for w, n in zip(widths, sums, strict=True)) / len(sums)
        result[rule] = (len(set(widths)), padding)
    return result


def measure_one(args: argparse.Namespace) -> None:
    """Child process: score the batch one way and print a JSON line (time, peak RSS, compilations, difference)."""
    from transformers import AutoModelForCausalLM

    from acpo_core.scoring import score_answer_loglik, score_answer_loglik_naive

    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    batch = synthetic_batch(args.batch, args.prompt_len, args.response_len, args.steps, 8, model.config.vocab_size)
    result: dict[str, float] = {}
    if args.measure == "naive":
        start = time.perf_counter()
        scores = score_answer_loglik_naive(model, batch, micro_batch_size=args.micro_batch_size)
        result["seconds"] = time.perf_counter() - start
    else:
        from torch._dynamo.utils import counters

        times = []
        for _ in range(2):
            start = time.perf_counter()
            scores = score_answer_loglik(model, batch, micro_batch_size=args.micro_batch_size, attention=args.measure)
            times.append(time.perf_counter() - start)
        result.update(first_seconds=times[0], seconds=times[1], compilations=int(counters["stats"]["unique_graphs"]))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    torch.save(scores, Path(args.model_dir) / f"scores_{args.measure}.pt")
    print(json.dumps(result))


def measured(args: argparse.Namespace) -> None:
    from recipe.acpo.offline_models import build_tiny_qwen2

    with tempfile.TemporaryDirectory(prefix="acpo_bench_attention_") as tmp:
        model_dir = build_tiny_qwen2(Path(tmp), seed=0, hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2)
        row_len = args.prompt_len + args.response_len + (args.steps + 1) * 8
        print(
            f"\nPart 2, measured on this CPU (torch threads {torch.get_num_threads()}, a shared machine): random "
            f"Qwen2 hidden 256, 4 layers, fp32; B = {args.batch}, prompt {args.prompt_len}, response "
            f"{args.response_len}, K = {args.steps}, |Y| = 8 ({row_len} tokens per row), micro_batch_size "
            f"{args.micro_batch_size}"
        )
        results = {}
        for way in ("sdpa", "flex", "naive"):
            child = [sys.executable, __file__, "--measure", way, "--model-dir", str(model_dir)]
            child += [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in ("batch", "prompt_len", "response_len")]
            child += [f"--steps={args.steps}", f"--micro-batch-size={args.micro_batch_size}"]
            done = subprocess.run(child, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(f"  {way}: failed\n{done.stderr[-2000:]}")
                return
            results[way] = json.loads(done.stdout.strip().splitlines()[-1])
        naive = torch.load(model_dir / "scores_naive.pt")
        for way in ("sdpa", "flex"):
            r = results[way]
            difference = (torch.load(model_dir / f"scores_{way}.pt") - naive).abs().max().item()
            compiled = f", first call {r['first_seconds']:.2f} s, {r['compilations']} compiled graph(s)"
            print(
                f"  {way:>5}: {r['seconds']:.2f} s{compiled if way == 'flex' else ''}, peak RSS "
                f"{r['peak_rss_mb']:.0f} MB, max |L - L_naive| = {difference:.1e}"
            )
        print(f"  naive: {results['naive']['seconds']:.2f} s, peak RSS {results['naive']['peak_rss_mb']:.0f} MB")
        faster = "flex" if results["flex"]["seconds"] < results["sdpa"]["seconds"] else "sdpa"
        compile_s = results["flex"]["first_seconds"] - results["flex"]["seconds"]
        print(
            f"  faster here once compiled: {faster}; flex's compilation cost {compile_s:.0f} s for this one padded "
            "length (acpo.attribution.attention=auto takes sdpa on CPU, where runs are short)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows-7b", type=int, default=8, help="rows of the analytic 7B micro-batch (default 8)")
    parser.add_argument("--steps-7b", type=int, default=50, help="steps of the analytic width spread (default 50)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--response-len", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--skip-measure", action="store_true", help="print the analytic part only")
    parser.add_argument("--measure", choices=("sdpa", "flex", "naive"), help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure_one(args)
        return
    analytic(args)
    if not args.skip_measure:
        measured(args)


if __name__ == "__main__":
    main()
