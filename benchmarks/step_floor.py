"""The compute floor of one testbed training step: each of verl's step timers as one batched computation in plain torch.

``bench_testbed_step.py --floor`` prints it beside verl's timers. On the same policy and machine, in the benchmark's
own process, with torch's threads on every core (as ``verl_cpu.threads`` gives the training worker), it samples one
step's responses and times the work each timer stands for:

- ``gen``: the CPU rollout server's decoding of the step's requests (``verl_cpu.generation.generate_batch``, seeded
  per request, temperature 1) as one batch, as if every request had reached the server at once;
- ``old_log_prob``: one forward over the right-padded prompt + response rows, the responses' token log-probs and
  entropies (verl's engine without remove-padding, the whole batch one micro-batch, as the testbed runs it);
- ``adv``: the look-ahead judge's work (§3.3) on the steps training would find (``acpo_core.segmentation`` with the
  testbed's ``acpo`` block and the old-log-prob pass's entropies): ``acpo_core.lookahead.greedy_generate`` over every
  distinct context [q, o_<c_i] (i < K), in the testbed's micro-batches, the continuations cut at the answer template's
  text, then one forward over each continued context with its answer Y appended (what the judge reads its
  log-likelihoods from);
- ``update_actor``: a forward, the backward of a policy-gradient loss and one AdamW step over the same rows (one
  mini-batch, one micro-batch);
- ``step``: their sum.

verl's timers exceed these by what runs around the computation (Ray calls, TransferQueue reads and writes, the
agent-loop's per-request work, the engine's data handling) and by waiting. The floor is measured on the policy as
built, while verl's steps train it, so their responses differ slightly in length.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_lookahead_generation import step_problems, step_prompts

from acpo_core.attribution import render_answer_ids
from acpo_core.config import ACPOConfig
from acpo_core.lookahead import cut_at_text, greedy_generate, stop_text_of
from acpo_core.segmentation import segment_steps
from acpo_core.vocab_tables import VocabTables
from verl_cpu.generation import SamplingSpec, generate_batch

FLOOR_TIMERS = ("gen", "old_log_prob", "adv", "update_actor", "step")
TESTBED_CONFIG = (
    Path(__file__).resolve().parents[1] / "recipe" / "acpo" / "config" / "testbed" / "arithmetic_steps.yaml"
)


def right_padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [N, longest], mask [N, longest])``: ``rows`` padded on the right, as verl's engine pads them."""
    tensors = [torch.as_tensor(list(row), dtype=torch.long) for row in rows]
    ids = torch.nn.utils.rnn.pad_sequence(tensors, batch_first=True, padding_value=pad_id)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(t) for t in tensors], batch_first=True)
    return ids, mask


def token_log_probs(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p(ids[:, t] | ids[:, <t]), entropy at t)``, both ``[N, T-1]``: what verl's log-prob pass computes."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    log_probs = torch.log_softmax(logits, dim=-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return log_probs.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1), entropy


def testbed_settings() -> tuple[ACPOConfig, int]:
    """The testbed's ``acpo`` block, parsed as training parses it, and its ``data.max_response_length``."""
    from omegaconf import OmegaConf

    raw = OmegaConf.load(TESTBED_CONFIG)
    return ACPOConfig.from_dict(raw.acpo), int(raw.data.max_response_length)


def step_contexts(
    prompts: Sequence[list[int]],
    responses: Sequence[list[int]],
    entropy: torch.Tensor,
    tokenizer: Any,
    config: ACPOConfig,
) -> tuple[list[torch.Tensor], list[int]]:
    """The distinct contexts [q, o_<c_i] (i < K) the look-ahead judge continues, and the row each comes from first.

    ``entropy`` [N, longest - 1] is :func:`token_log_probs`' over the prompt + response rows; response token j of row
    n was predicted at position ``len(prompt) + j - 1``.
    """
    ids, mask = right_padded(responses, 0)
    response_entropy = torch.zeros(ids.shape)
    for n, (prompt, response) in enumerate(zip(prompts, responses)):
        response_entropy[n, : len(response)] = entropy[n, len(prompt) - 1 : len(prompt) - 1 + len(response)]
    cfg = config.segmentation
    steps = segment_steps(ids, response_entropy, mask, VocabTables.from_tokenizer(tokenizer, cfg.markers), cfg)
    contexts: dict[tuple[int, ...], int] = {}
    for n, (prompt, response) in enumerate(zip(prompts, responses)):
        for cut in steps.boundaries[n, : int(steps.num_steps[n])].tolist():
            contexts.setdefault(tuple(prompt + response[:cut]), n)
    return [torch.tensor(key, dtype=torch.long) for key in contexts], list(contexts.values())


def median_seconds(run: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_step_floor(
    policy: Path, problems: int = 16, samples: int = 8, seed: int = 0, repeats: int = 3
) -> dict[str, float]:
    """Median seconds of each of :data:`FLOOR_TIMERS` over ``repeats`` timed runs (after one untimed warm-up), and
    the step's shapes: ``responses``, ``response_tokens_mean``, ``prefixes`` (contexts the judge continued)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recipe.acpo.step_dump import token_text_table

    config, max_response_tokens = testbed_settings()
    tokenizer = AutoTokenizer.from_pretrained(policy)
    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32, attn_implementation="sdpa").eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = {tokenizer.eos_token_id}
    prompts = step_prompts(tokenizer, problems, samples, seed)
    specs = [SamplingSpec(max_tokens=max_response_tokens, temperature=1.0)] * len(prompts)

    def rollout() -> list[list[int]]:
        generators = [torch.Generator().manual_seed(seed * 1_000_003 + n) for n in range(len(prompts))]
        results = generate_batch(model, prompts, specs, eos, pad, generators)
        return [result.token_ids for result in results]

    responses = rollout()
    rows = [prompt + response for prompt, response in zip(prompts, responses)]
    ids, mask = right_padded(rows, pad)
    with torch.no_grad():
        _, entropy = token_log_probs(model, ids, mask)

    attribution = config.attribution
    contexts, source_rows = step_contexts(prompts, responses, entropy, tokenizer, config)
    texts = token_text_table(tokenizer)
    stop_text = stop_text_of(attribution.answer_template)
    # Each context's answer Y (the template rendered), tokenised before timing: the scorer gets it with the batch.
    answers = [str(problem.answer) for problem in step_problems(problems, seed)]
    lines = [render_answer_ids(tokenizer, answers[row // samples], attribution.answer_template) for row in source_rows]
    lookahead_tokens = attribution.lookahead_max_new_tokens or max_response_tokens

    def judge() -> None:
        with torch.no_grad():
            generated = greedy_generate(
                model, contexts, pad, eos, lookahead_tokens, attribution.lookahead_micro_batch_size
            )
            scored = [
                context.tolist() + cut_at_text(row, texts, stop_text, eos) + line
                for context, row, line in zip(contexts, generated.tolist(), lines)
            ]
            token_log_probs(model, *right_padded(scored, pad))

    def old_log_prob() -> None:
        with torch.no_grad():
            token_log_probs(model, ids, mask)

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    advantages = torch.randn(len(rows), 1)
    # The loss weighs the response tokens only: position t predicts token t + 1.
    weights = torch.zeros(ids.shape[0], ids.shape[1] - 1)
    for n, (prompt, response) in enumerate(zip(prompts, responses)):
        weights[n, len(prompt) - 1 : len(prompt) - 1 + len(response)] = 1.0

    def update() -> None:
        model.train()
        log_probs, _ = token_log_probs(model, ids, mask)
        loss = -(advantages * log_probs * weights).sum() / weights.sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.eval()

    phases = {"gen": rollout, "old_log_prob": old_log_prob, "adv": judge, "update_actor": update}
    floor = {}
    for name, run in phases.items():
        run()
        floor[name] = median_seconds(run, repeats)
    floor["step"] = sum(floor.values())
    floor["responses"] = float(len(responses))
    floor["response_tokens_mean"] = sum(map(len, responses)) / len(responses)
    floor["prefixes"] = float(len(contexts))
    return floor
