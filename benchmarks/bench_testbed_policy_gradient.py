"""Does the testbed policy learn under a plain policy gradient, without verl? A control for bench_learning.py.

When verl's GRPO and ACPO both fail to raise held-out accuracy on the CPU testbed, the question is whether the
pipeline is at fault (rollout, weight sync, loss, reward) or the task and policy are. This script answers it without
verl's pipeline, with torch and transformers: it samples the testbed policy, rewards the answers (the testbed's own
answer parser), and takes GRPO steps (§1's group-normalised outcome advantage, by verl's pure function
``compute_grpo_outcome_advantage``, the project's one GRPO; token-mean loss, AdamW, gradient clipping at 1.0, one
optimiser step per batch, as verl's actor with one mini-batch). Three directions, each from the same
policy with the same prompts and seed:

- ``grpo``: A = A_base (ascends the expected reward);
- ``negated``: A = -A_base (descends it: how fast a real signal moves accuracy);
- ``noise``: A = 1 for every response (the score-function gradient of one's own samples, zero in expectation: the
  drift the optimiser alone causes).

If ``grpo`` does no better than ``noise`` while ``negated`` falls fast, the gradient has the right sign and the
policy moves, but a step of this size and batch cannot find a better policy: the task, not the pipeline.

    python benchmarks/bench_testbed_policy_gradient.py --policy outputs/acpo_cpu_demo/models/testbed --lr 2e-4
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recipe.acpo.testbed.demonstrations import hasty_line_share, is_hasty_line
from recipe.acpo.testbed.policy import answer_of, sample_responses
from recipe.acpo.testbed.task import StepProblem, TaskSpec, generate

DIRECTIONS = ("grpo", "negated", "noise")
# The held-out pool and seed of the policy build's own evaluation (recipe.acpo.testbed.policy.build_policy).
HELD_OUT_SEED = 1_000_003


def held_out_breakdown(responses: Sequence[str], problems: Sequence[StepProblem]) -> dict[str, float]:
    """Accuracy of ``responses`` (``len(problems) * k``, problem-major per sample round) and where it comes from.

    Besides the accuracy: the share of equation lines that are hasty, the share of responses with at least one hasty
    line, and the accuracy of the responses with and without one (NaN where there are none). If the policy's cost
    were its hasty lines alone, responses without one would be nearly always right.
    """
    expected = [problems[i % len(problems)].answer for i in range(len(responses))]
    right = [answer_of(r) == answer for r, answer in zip(responses, expected)]
    hasty = [any(map(is_hasty_line, r.splitlines())) for r in responses]

    def accuracy_where(flag: bool) -> float:
        picked = [ok for ok, h in zip(right, hasty) if h == flag]
        return sum(picked) / len(picked) if picked else float("nan")

    return {
        "accuracy": sum(right) / len(right),
        "hasty_line_share": hasty_line_share(list(responses)),
        "responses_with_hasty_line": sum(hasty) / len(hasty),
        "accuracy_with_hasty_line": accuracy_where(True),
        "accuracy_without_hasty_line": accuracy_where(False),
    }


def held_out_evaluation(model: Any, tokenizer: Any, problems: Sequence[StepProblem], samples: int) -> dict[str, float]:
    """``held_out_breakdown`` of ``samples`` responses to each problem at temperature 1."""
    model.eval()
    responses: list[str] = []
    for _ in range(samples):
        responses += sample_responses(model, tokenizer, [p.prompt for p in problems], 1.0, batch=len(problems))
    return held_out_breakdown(responses, problems)


def sample_batch(
    model: Any, tokenizer: Any, problems: Sequence[StepProblem], n: int, max_new_tokens: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """``n`` responses per problem at temperature 1: (sequences, attention mask, response mask, rewards, prompt width).

    Shapes: sequences and attention mask ``[B, P + R]``, response mask ``[B, R]`` (up to and including the first
    end-of-sequence token), rewards ``[B]`` with ``B = n * len(problems)``, grouped by problem.
    """
    tokenizer.padding_side = "left"
    chats = [[{"role": "user", "content": p.prompt}] for p in problems for _ in range(n)]
    texts = [tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) for chat in chats]
    encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    model.eval()
    with torch.no_grad():
        sequences = model.generate(
            **encoded,
            max_new_tokens=max_new_tokens,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    width = encoded["input_ids"].shape[1]
    responses = sequences[:, width:]
    is_eos = responses == tokenizer.eos_token_id
    response_mask = (is_eos.cumsum(1) - is_eos.long()) == 0
    texts_out = tokenizer.batch_decode(responses, skip_special_tokens=True)
    rewards = torch.tensor([float(answer_of(t) == problems[i // n].answer) for i, t in enumerate(texts_out)])
    attention_mask = torch.cat([encoded["attention_mask"], response_mask.long()], dim=1)
    return sequences, attention_mask, response_mask, rewards, width


def policy_gradient_step(
    model: Any,
    optimizer: torch.optim.Optimizer,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    advantages: torch.Tensor,
    width: int,
) -> float:
    """One token-mean policy-gradient step (ratio 1: on-policy, one mini-batch); returns the gradient norm."""
    model.train()
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
    logits = model(input_ids=sequences, attention_mask=attention_mask, position_ids=position_ids).logits
    logprobs = torch.log_softmax(logits[:, width - 1 : -1].float(), dim=-1)
    token_logprobs = logprobs.gather(-1, sequences[:, width:].unsqueeze(-1)).squeeze(-1)
    mask = response_mask.float()
    loss = -(advantages[:, None] * token_logprobs * mask).sum() / mask.sum()
    optimizer.zero_grad()
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return float(grad_norm)


def build_optimizer(model: Any, name: str, lr: float) -> torch.optim.Optimizer:
    """verl's actor optimiser by name (``actor_rollout_ref.actor.optim.optimizer``) with its default weight decay."""
    if name == "SGD":
        return torch.optim.SGD(model.parameters(), lr=lr, weight_decay=0.01)
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)


def run_direction(direction: str, args: argparse.Namespace, train: list[StepProblem], val: list[StepProblem]) -> dict:
    """Train a fresh copy of the policy in one direction; held-out accuracy every ``--eval-every`` steps."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.policy)
    model = AutoModelForCausalLM.from_pretrained(args.policy, dtype=torch.float32)
    optimizer = build_optimizer(model, args.optimizer, args.lr)
    evaluations = [(0, held_out_evaluation(model, tokenizer, val, args.eval_samples))]
    train_rewards = []
    began = time.monotonic()
    for step in range(1, args.steps + 1):
        problems = train[(step - 1) * args.batch_size : step * args.batch_size]
        sequences, attention_mask, response_mask, rewards, width = sample_batch(
            model, tokenizer, problems, args.rollout_n, args.max_response_length
        )
        group_ids = np.arange(len(problems)).repeat(args.rollout_n)
        # §1's A_base: each response is one outcome score (a one-token reward row), grouped by its prompt.
        advantages = compute_grpo_outcome_advantage(rewards[:, None], torch.ones(len(rewards), 1), group_ids)[0][:, 0]
        if direction == "negated":
            advantages = -advantages
        elif direction == "noise":
            advantages = torch.ones_like(advantages)
        policy_gradient_step(model, optimizer, sequences, attention_mask, response_mask, advantages, width)
        train_rewards.append(float(rewards.mean()))
        if step % args.eval_every == 0 or step == args.steps:
            evaluations.append((step, held_out_evaluation(model, tokenizer, val, args.eval_samples)))
            held_out = evaluations[-1][1]
            print(
                f"  {direction:8s} step {step:3d}: held-out {100 * held_out['accuracy']:5.1f}% "
                f"(with a hasty line {100 * held_out['accuracy_with_hasty_line']:.1f}%, "
                f"without {100 * held_out['accuracy_without_hasty_line']:.1f}%; "
                f"{100 * held_out['hasty_line_share']:.0f}% of lines hasty), "
                f"batch reward {100 * train_rewards[-1]:5.1f}% ({time.monotonic() - began:.0f}s)",
                flush=True,
            )
    return {
        "direction": direction,
        "points": [(step, evaluation["accuracy"]) for step, evaluation in evaluations],
        "evaluations": evaluations,
        "train_rewards": train_rewards,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/bench_testbed_policy_gradient.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--policy", type=Path, required=True, help="a built testbed policy folder")
    parser.add_argument("--directions", nargs="+", choices=DIRECTIONS, default=list(DIRECTIONS))
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--optimizer", choices=("AdamW", "SGD"), default="AdamW")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per step")
    parser.add_argument("--rollout-n", type=int, default=8, help="responses per prompt")
    parser.add_argument("--max-response-length", type=int, default=80)
    parser.add_argument("--eval-problems", type=int, default=256, help="held-out problems (the build's pool)")
    parser.add_argument("--eval-samples", type=int, default=2, help="samples per held-out problem")
    parser.add_argument("--eval-every", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the curves here as JSON")
    args = parser.parse_args(argv)
    if not (args.policy / "config.json").is_file():
        parser.error(f"--policy {args.policy}: no config.json (build one: python -m recipe.acpo.testbed build DIR)")

    torch.set_num_threads(args.threads)
    task = TaskSpec()
    val = generate(args.eval_problems, task, seed=HELD_OUT_SEED, pool="rl")
    train = generate(args.steps * args.batch_size, task, seed=args.seed + 7, pool="rl")
    results = []
    for direction in args.directions:
        print(f"{direction}: lr {args.lr}, {args.steps} steps of {args.batch_size}x{args.rollout_n}", flush=True)
        results.append(run_direction(direction, args, train, val))
    print("\nheld-out accuracy at temperature 1 (%), by step")
    steps = [step for step, _ in results[0]["points"]]
    print(f"{'step':>16s}" + "".join(f"{s:>8d}" for s in steps))
    for result in results:
        print(f"{result['direction']:>16s}" + "".join(f"{100 * acc:8.1f}" for _, acc in result["points"]))
    print("\nwhere it comes from: accuracy without / with a hasty line (%), and the share of lines that are hasty")
    for result in results:
        for key, label in (
            ("accuracy_without_hasty_line", "careful"),
            ("accuracy_with_hasty_line", "hasty"),
            ("hasty_line_share", "% hasty"),
        ):
            name = f"{result['direction']} {label}"
            print(f"{name:>16s}" + "".join(f"{100 * e[key]:8.1f}" for _, e in result["evaluations"]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        budget = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "out"}
        args.out.write_text(json.dumps({"budget": budget, "results": results}, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
