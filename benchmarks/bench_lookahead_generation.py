"""The look-ahead judge's generation (§3.3) on a testbed policy: ``acpo_core.lookahead.greedy_generate`` against
Hugging Face's ``generate``, side by side in one process.

    python benchmarks/bench_lookahead_generation.py --policy outputs/acpo_cpu_demo/models/testbed [--repeats 5]

It samples one training step's responses (16 problems x 8, temperature 1) and continues, greedily, every distinct
prefix that ends at a line start (the prompt alone, then each equation line: where the testbed's steps begin) as the
training step does. The two generators run alternately, ``--repeats`` times each, on the same prefixes and
micro-batches, so that a machine whose load drifts favours neither. Before timing, it checks that both produce the
same tokens. ``generate`` keeps every row of a micro-batch until the longest has ended; ``greedy_generate`` drops a
row from the batch and the KV cache at its end token.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from acpo_core.lookahead import greedy_generate, left_padded


@torch.no_grad()
def hf_greedy_generate(
    model: Any,
    contexts: Sequence[torch.Tensor],
    pad_id: int,
    end_ids: Collection[int],
    max_new_tokens: int,
    micro_batch_size: int,
) -> torch.Tensor:
    """The same continuations through Hugging Face's ``generate`` (what the look-ahead used before 2026-12-06)."""
    out = torch.full((len(contexts), max_new_tokens), pad_id, dtype=torch.long)
    for first in range(0, len(contexts), micro_batch_size):
        chunk = contexts[first : first + micro_batch_size]
        ids, mask = left_padded(chunk, pad_id)
        width = ids.shape[1]
        generated = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=sorted(end_ids),
            use_cache=True,
        )[:, width:]
        out[first : first + len(chunk), : generated.shape[1]] = generated
    return out


def line_start_prefixes(
    prompts: Sequence[list[int]], responses: Sequence[list[int]], newline_ids: Collection[int]
) -> list[torch.Tensor]:
    """Every distinct [q, o_<c] with c = 0 or just after a newline token inside the response (not at its end)."""
    seen: dict[tuple[int, ...], torch.Tensor] = {}
    for prompt, response in zip(prompts, responses):
        cuts = [0] + [n + 1 for n, token in enumerate(response[:-1]) if token in newline_ids]
        for cut in cuts:
            key = tuple(prompt + response[:cut])
            seen.setdefault(key, torch.tensor(key, dtype=torch.long))
    return list(seen.values())


def step_problems(problems: int, seed: int) -> list[Any]:
    """The ``problems`` testbed problems (``recipe.acpo.testbed.task.StepProblem``) of a step drawn with ``seed``."""
    from recipe.acpo.testbed.task import TaskSpec, generate

    return generate(problems, TaskSpec(), seed=seed + 2_000_003, pool="rl")


def step_prompts(tokenizer: Any, problems: int, samples: int, seed: int) -> list[list[int]]:
    """The chat-templated prompt ids of :func:`step_problems`, each ``samples`` times (a step's requests)."""
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p.prompt}], add_generation_prompt=True, tokenize=False
        )
        for p in step_problems(problems, seed)
    ]
    return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts for _ in range(samples)]


def sample_step(model: Any, tokenizer: Any, problems: int, samples: int, seed: int) -> tuple[list, list]:
    """(prompt ids, response ids) of ``problems`` x ``samples`` responses sampled at temperature 1."""
    torch.manual_seed(seed)
    prompt_ids = step_prompts(tokenizer, problems, samples, seed)
    tokenizer.padding_side = "left"
    encoded = tokenizer.pad({"input_ids": prompt_ids}, return_tensors="pt")
    out = model.generate(
        **encoded,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=80,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )[:, encoded["input_ids"].shape[1] :].tolist()
    eos = tokenizer.eos_token_id
    responses = [row[: row.index(eos) + 1] if eos in row else row for row in out]
    return prompt_ids, responses


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/bench_lookahead_generation.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--policy", type=Path, required=True, help="a testbed policy folder (testbed build)")
    parser.add_argument("--problems", type=int, default=16, help="problems in the step (16)")
    parser.add_argument("--samples", type=int, default=8, help="responses per problem (8)")
    parser.add_argument("--seed", type=int, default=0, help="problems and sampling seed (0)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each generator (5)")
    parser.add_argument("--micro-batch-size", type=int, default=64, help="prefixes generated together (64)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if not (args.policy / "config.json").is_file():
        parser.error(
            f"--policy {args.policy}: no config.json there (build one with python -m recipe.acpo.testbed build)"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recipe.acpo.step_dump import token_text_table

    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.policy)
    model = AutoModelForCausalLM.from_pretrained(args.policy, dtype=torch.float32, attn_implementation="sdpa").eval()
    prompts, responses = sample_step(model, tokenizer, args.problems, args.samples, args.seed)
    newlines = {token for token, text in enumerate(token_text_table(tokenizer)) if "\n" in text}
    contexts = line_start_prefixes(prompts, responses, newlines)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    settings = dict(
        pad_id=pad, end_ids={tokenizer.eos_token_id}, max_new_tokens=80, micro_batch_size=args.micro_batch_size
    )
    ours = greedy_generate(model, contexts, **settings)
    reference = hf_greedy_generate(model, contexts, **settings)
    same = torch.equal(ours, reference)
    lengths = ((ours != pad) & (ours != tokenizer.eos_token_id)).sum(-1).float() + 1
    print(
        f"{len(responses)} responses, {len(contexts)} distinct prefixes, continuations of {lengths.mean():.1f} tokens "
        f"(longest {int(lengths.max())}), micro-batches of {args.micro_batch_size}; same tokens: {same}"
    )
    if not same:
        rows = (ours != reference).any(-1).nonzero().squeeze(-1).tolist()
        print(f"rows that differ: {len(rows)} of {len(contexts)} (first {rows[:10]})")
    times: dict[str, list[float]] = {"generate": [], "greedy_generate": []}
    for repeat in range(args.repeats):
        order = ["generate", "greedy_generate"] if repeat % 2 == 0 else ["greedy_generate", "generate"]
        for name in order:
            run = hf_greedy_generate if name == "generate" else greedy_generate
            start = time.perf_counter()
            run(model, contexts, **settings)
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratios = [ours_s / hf_s for ours_s, hf_s in zip(times["greedy_generate"], times["generate"])]
    for name, values in times.items():
        print(f"{name:>16}: median {medians[name]:.3f} s ({', '.join(f'{v:.3f}' for v in values)})")
    print(f"greedy_generate / generate: median of the paired ratios {statistics.median(ratios):.2f}")
    return {**medians, "ratio": statistics.median(ratios), "prefixes": float(len(contexts)), "same": float(same)}


if __name__ == "__main__":
    main()
