"""How far hot samples (§6) are from the policy verl trains, and what verl's rollout correction does to them.

Stage 1 samples part of a hard prompt's group at ``hard_temperature`` (1.2) while verl recomputes the old log-probs
at the rollout temperature (1.0). The PPO loss then treats samples of pi_1.2 as if they came from pi_1.0. This script
samples one group layout of the curriculum (half of each group at 1.0, half at 1.2) from a real pretrained model,
takes the sampler's own log-probs (vLLM's ``processed_logprobs``; the CPU rollout's, which are the same) and verl's
recomputation at 1.0, and prints, for the cold and the hot samples side by side:

- the per-token KL(pi_sample || pi_1.0) (k1 and k3 estimators over the sampled tokens);
- the token-level importance weight w = pi_1.0 / pi_sample: mean, spread, share above 2 (truncated by verl's
  ``rollout_is: token`` at ``rollout_is_threshold: 2.0``) and below 0.5, the mean truncated weight, and the
  effective sample size (sum w)^2 / (N sum w^2);
- the same for the sequence-level weight (the product over the response, ``rollout_is: sequence``).

Usage: ``python benchmarks/bench_hot_sampling_mismatch.py [--model DIR] [--prompts 8] [--group 8]``; without
``--model`` it builds SmolLM2-135M-Instruct offline (``recipe.acpo.offline_models``, about two minutes).
"""

from __future__ import annotations

import argparse
import math
import random
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from verl_cpu.generation import SamplingSpec, generate_batch

TEMPLATE = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n{problem}\n\n"
    'Remember to put your answer on its own line after "Answer:".'
)


def word_problems(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    names = ["Ava", "Ben", "Chloe", "Dan", "Eve", "Finn", "Gia", "Hugo"]
    items = ["apples", "marbles", "stickers", "books", "coins", "pencils"]
    problems = []
    for _ in range(count):
        a, b, c = rng.randint(3, 40), rng.randint(2, 9), rng.randint(1, 20)
        problems.append(
            f"{rng.choice(names)} has {a} {(item := rng.choice(items))}, buys {b} bags with {c} {item} in each, "
            f"then gives away {rng.randint(1, a)} {item}. How many {item} are left?"
        )
    return problems


@torch.inference_mode()
def recompute_log_probs(
    model: torch.nn.Module, prompt: list[int], response: list[int], temperature: float
) -> torch.Tensor:
    """verl's old-log-prob pass for one response: log_softmax(logits / T) of the sampled tokens, [len(response)]."""
    ids = torch.tensor([prompt + response])
    logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float() / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1)


def weight_stats(log_ratio: torch.Tensor, threshold: float) -> dict[str, float]:
    weights = log_ratio.clamp(-20, 20).exp()
    return {
        "mean_w": float(weights.mean()),
        "std_w": float(weights.std()),
        "frac_above_thr": float((weights > threshold).float().mean()),
        "frac_below_0.5": float((weights < 0.5).float().mean()),
        "mean_trunc_w": float(weights.clamp(max=threshold).mean()),
        "ess": float(weights.sum() ** 2 / (weights.numel() * (weights**2).sum())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="Hugging Face folder (default: build SmolLM2-135M)")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8, help="responses per prompt; half cold, half hot")
    parser.add_argument("--max-tokens", type=int, default=192)
    parser.add_argument("--base-temperature", type=float, default=1.0)
    parser.add_argument("--hot-temperature", type=float, default=1.2)
    parser.add_argument("--threshold", type=float, default=2.0, help="rollout_is_threshold (TIS upper bound)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model_dir = args.model
    if model_dir is None:
        from recipe.acpo.offline_models import build_smollm2

        model_dir = build_smollm2(Path(tempfile.mkdtemp(prefix="smollm2_")))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    prompts, specs, hot = [], [], []
    for problem in word_problems(args.prompts, args.seed):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": TEMPLATE.format(problem=problem)}], add_generation_prompt=True, tokenize=True
        )
        ids = list(ids["input_ids"]) if isinstance(ids, dict) or hasattr(ids, "keys") else list(ids)
        for position in range(args.group):
            is_hot = position < args.group // 2
            temperature = args.hot_temperature if is_hot else args.base_temperature
            prompts.append(ids)
            specs.append(SamplingSpec(max_tokens=args.max_tokens, temperature=temperature))
            hot.append(is_hot)

    start = time.perf_counter()
    results = generate_batch(
        model,
        prompts,
        specs,
        eos_token_ids=[tokenizer.eos_token_id],
        pad_token_id=tokenizer.pad_token_id,
        generator=torch.Generator().manual_seed(args.seed),
    )
    generation_s = time.perf_counter() - start

    token_log_ratio: dict[bool, list[torch.Tensor]] = {False: [], True: []}
    seq_log_ratio: dict[bool, list[float]] = {False: [], True: []}
    lengths: dict[bool, list[int]] = {False: [], True: []}
    for prompt, result, is_hot in zip(prompts, results, hot):
        trained = recompute_log_probs(model, prompt, result.token_ids, args.base_temperature)
        sampled = torch.tensor(result.log_probs)
        ratio = trained - sampled  # log pi_1.0 - log pi_sample, per token
        token_log_ratio[is_hot].append(ratio)
        seq_log_ratio[is_hot].append(float(ratio.sum()))
        lengths[is_hot].append(len(result.token_ids))

    print(
        f"model {model_dir.name}: {args.prompts} prompts x {args.group} responses (half at T={args.hot_temperature}),"
    )
    print(f"max {args.max_tokens} tokens, generated in {generation_s:.1f} s; TIS threshold {args.threshold}")
    header = f"{'':34s}{'cold T=' + str(args.base_temperature):>16s}{'hot T=' + str(args.hot_temperature):>16s}"
    print(header)
    rows: dict[str, list[float]] = {}
    for is_hot in (False, True):
        log_ratio = torch.cat(token_log_ratio[is_hot])
        seq = torch.tensor(seq_log_ratio[is_hot])
        stats = {
            "responses": len(seq_log_ratio[is_hot]),
            "tokens per response (mean)": sum(lengths[is_hot]) / len(lengths[is_hot]),
            "KL per token, k1": float((-log_ratio).mean()),
            "KL per token, k3": float((log_ratio.exp() - 1 - log_ratio).mean()),
        }
        stats.update({f"token w: {k}": v for k, v in weight_stats(log_ratio, args.threshold).items()})
        stats["seq log w: mean"] = float(seq.mean())
        stats["seq log w: std"] = float(seq.std())
        stats.update({f"seq w: {k}": v for k, v in weight_stats(seq, args.threshold).items()})
        for name, value in stats.items():
            rows.setdefault(name, []).append(value)
    for name, (cold_value, hot_value) in rows.items():
        print(f"{name:34s}{cold_value:16.4g}{hot_value:16.4g}")
    hot_ratio = torch.cat(token_log_ratio[True])
    print(
        f"hot/cold mean truncated token weight: "
        f"{rows['token w: mean_trunc_w'][1] / rows['token w: mean_trunc_w'][0]:.3f}; "
        f"hot tokens with |log w| > log 2: {float((hot_ratio.abs() > math.log(2)).float().mean()):.3f}"
    )


if __name__ == "__main__":
    main()
