"""§3.3 (ours, offline): a look-ahead judge, L_i scored after the policy has finished its own reasoning greedily.

The spec scores L_i = log pi(Y | q, o_{<c_i}, template): the policy must forecast the final answer from a partial
response in one step. A policy that cannot (the CPU testbed's: docs/algorithm.md §3.2) gives C_i = L_{i+1} - L_i
that follows position, not correctness. The look-ahead judge lets the same policy do what it does well instead:
from each prefix [q, o_{<c_i}] it continues greedily, g_i = greedy(pi, [q, o_{<c_i}]), cut where it starts writing
the answer template's fixed text (or at its end token), and then scores

    L_i^look = log pi(Y | q, o_{<c_i}, g_i, template),

so L_i^look is high when the prefix still leads the policy to Y and low once a step has sent it elsewhere; C_i and
everything after them (§4) are unchanged. L_K^look is the spec's L_K (the response is complete: no continuation).

It costs one greedy generation per distinct prefix. In training (``acpo.attribution.judge=lookahead``) the actor
workers generate (``recipe.acpo.acpo_worker``: :func:`greedy_generate` on the FSDP model, in lockstep across ranks)
and then score either packed (:func:`score_lookahead`: every continued context a one-step response,
:func:`lookahead_batch`) or with verl's ``compute_log_prob`` on :func:`lookahead_sequences` (``mode: naive``); the
credit benchmark (``benchmarks/bench_credit.py --lookahead``) runs :func:`greedy_continuations` and
:func:`acpo_core.scoring.score_answer_loglik_naive` on a local model.
"""

from __future__ import annotations

import bisect
import inspect
import itertools
from collections.abc import Callable, Collection, Sequence
from functools import partial
from typing import Any

import torch

from acpo_core.attribution import (
    AttributionBatch,
    AttributionLengths,
    ScoringJob,
    check_attribution_batch,
    naive_sequences,
)
from acpo_core.fail_fast import agree_on_failure

__all__ = [
    "ContinueFn",
    "RememberedContinuations",
    "continuation_metrics",
    "cut_at_text",
    "greedy_continuations",
    "greedy_generate",
    "left_padded",
    "lookahead_batch",
    "lookahead_sequences",
    "score_lookahead",
    "stop_text_of",
]

# Contexts [q, o_{<c_i}] (1-D long tensors) -> the policy's continuation of each (token ids, cut).
ContinueFn = Callable[[Sequence[torch.Tensor]], list[list[int]]]


def stop_text_of(answer_template: str) -> str:
    """The fixed text a continuation is cut at: the answer template's text before ``{answer}``, stripped
    (``"Answer: {answer}"`` -> ``"Answer:"``; empty when the template starts with the answer)."""
    return answer_template.split("{answer}")[0].strip()


def cut_at_text(
    tokens: Sequence[int], token_texts: Sequence[str], stop_text: str, end_ids: Collection[int]
) -> list[int]:
    """The tokens before the first end token and before the token where ``stop_text`` begins in their text.

    Args:
        tokens: generated token ids.
        token_texts: the display text of every vocabulary id (``recipe.acpo.step_dump.token_text_table``).
        stop_text: e.g. ``"Answer:"``, the answer template's fixed text; empty: cut at the end token only.
        end_ids: end-of-sequence ids.
    """
    kept: list[int] = []
    for token in tokens:
        if token in end_ids:
            break
        kept.append(token)
    if not stop_text:
        return kept
    stop = "".join(token_texts[token] for token in kept).find(stop_text)
    if stop < 0:
        return kept
    # Keep the tokens that end before stop_text begins; the one it begins in (it may also hold the newline before
    # it) goes with it.
    ends = list(itertools.accumulate(len(token_texts[token]) for token in kept))
    return kept[: bisect.bisect_right(ends, stop)]


@torch.no_grad()
def greedy_generate(
    model: Any,
    contexts: Sequence[torch.Tensor],
    pad_id: int,
    end_ids: Collection[int],
    max_new_tokens: int,
    micro_batch_size: int = 256,
    min_micro_batches: int = 0,
    lockstep: bool = False,
    device: torch.device | str | int | None = None,
) -> torch.Tensor:
    """The model's greedy continuation of each context, uncut: [N, max_new_tokens] long, ``pad_id`` after the end.

    Contexts are left-padded in micro-batches of ``micro_batch_size``; each is prefilled once and then decoded one
    token per forward pass with the KV cache (:func:`_greedy_micro_batch`). A row leaves the batch and the cache at its
    end token: the judge continues from every step of a response, so its continuations end at very different lengths,
    and a pass then costs what the unfinished rows need. Hugging Face's ``generate`` keeps every row to the longest; on
    a testbed step this takes 0.69x its time at 64 contexts a micro-batch and 0.51x at 256
    (``benchmarks/bench_lookahead_generation.py``). Greedy means the argmax of the model's logits: no processor of
    the model's ``generation_config`` (a repetition penalty, say) applies.

    Under FSDP every rank must run the same number of forward passes (each gathers the parameters). With ``lockstep``
    the ranks agree after every pass whether any of them is still decoding (one all-reduce, as ``generate``'s
    ``synced_gpus`` does), and a rank with nothing left runs a one-token pass whose output is dropped;
    ``min_micro_batches`` adds empty micro-batches up to the count the ranks agreed on. The same all-reduce says
    whether a rank has failed outside a forward's collectives (building its micro-batch, reading its logits, dropping
    rows from its cache): every rank then raises :class:`acpo_core.fail_fast.RankFailure` with that rank's error
    (:func:`acpo_core.fail_fast.agree_on_failure`), instead of waiting in the next forward's gather for a rank that
    has left.

    Args:
        model: a Hugging Face decoder-only text LM, in eval mode, whose forward takes ``input_ids, attention_mask,
            position_ids, past_key_values, use_cache`` and whose KV cache can drop rows (``batch_select_indices``:
            attention layers; a linear-attention or state-space layer cannot).
        contexts: N 1-D long tensors, each [q, o_{<c_i}].
        pad_id, end_ids: padding and end-of-sequence ids.
        max_new_tokens: the longest continuation.
        device: where the inputs go (default: the first parameter's, which is the CPU under FSDP's offloading).
    """
    device = next(model.parameters()).device if device is None else device
    ends = torch.tensor(sorted(end_ids), dtype=torch.long, device=device)
    out = torch.full((len(contexts), max_new_tokens), pad_id, dtype=torch.long)
    starts = list(range(0, len(contexts), micro_batch_size))
    for n in range(max(len(starts), min_micro_batches)):
        chunk = contexts[starts[n] : starts[n] + micro_batch_size] if n < len(starts) else []
        generated = _greedy_micro_batch(model, chunk, pad_id, ends, max_new_tokens, lockstep)
        if chunk:
            out[starts[n] : starts[n] + len(chunk)] = generated
    return out


def _greedy_micro_batch(
    model: Any,
    contexts: Sequence[torch.Tensor],
    pad_id: int,
    ends: torch.Tensor,
    max_new_tokens: int,
    lockstep: bool,
) -> torch.Tensor:
    """:func:`greedy_generate` of one micro-batch (possibly empty under ``lockstep``): [len(contexts),
    max_new_tokens] long on the CPU."""
    device = ends.device
    out = torch.full((len(contexts), max_new_tokens), pad_id, dtype=torch.long)
    active = torch.arange(len(contexts))  # the row of ``out`` of each row still decoding
    cache = None
    error: Exception | None = None  # this rank's failure, agreed on before the next pass (lockstep only)
    try:
        if contexts:
            inputs, mask = (t.to(device) for t in left_padded(contexts, pad_id))
            # Positions count real tokens only, so a left-padded row sees what it would see alone.
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
        # Only the last position's logits are needed; the whole prefill's would be [B, width, vocab].
        last_only = {"logits_to_keep": 1} if _takes_logits_to_keep(model) else {}
    except Exception as err:  # must reach the other ranks: they are about to gather parameters with this one
        if not lockstep:
            raise
        error = err
    step = 0
    while True:
        decoding = error is None and active.numel() > 0 and step < max_new_tokens
        if lockstep:
            flags = torch.tensor([int(decoding), int(error is not None)], dtype=torch.long, device=device)
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
            if bool(flags[1]):
                # Raises on every rank, naming the failed ones and their errors.
                agree_on_failure(error, torch.distributed.group.WORLD, device, "the look-ahead judge's generation")
            if not bool(flags[0]):
                break
        elif not decoding:
            break
        if not decoding:
            # Another rank is still decoding: gather the parameters with it, drop the output.
            try:
                model(input_ids=torch.full((1, 1), pad_id, dtype=torch.long, device=device), use_cache=False)
            except Exception as err:  # after the forward's collectives, as below
                error = err
            continue
        try:
            output = model(
                input_ids=inputs,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                **last_only,
            )
            cache = output.past_key_values
            tokens = output.logits[:, -1].argmax(dim=-1)
            out[active, step] = tokens.cpu()
            step += 1
            going = ~torch.isin(tokens, ends)
            if not bool(going.all()):
                kept = going.nonzero().squeeze(-1)
                if not hasattr(cache, "batch_select_indices"):
                    raise TypeError(
                        f"greedy_generate drops ended rows from the KV cache, which {type(cache).__name__} cannot: "
                        "the look-ahead judge needs a decoder whose cache has batch_select_indices"
                    )
                cache.batch_select_indices(kept)
                active, tokens, mask, positions = active[kept.cpu()], tokens[kept], mask[kept], positions[kept]
            inputs = tokens.unsqueeze(-1)
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
            positions = positions[:, -1:] + 1
        except Exception as err:  # after the forward's collectives: the other ranks meet this one at the next flag
            if not lockstep:
                raise
            error = err
    return out


def left_padded(contexts: Sequence[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), both [N, longest] long on the CPU: each 1-D context right-aligned after ``pad_id``."""
    width = max(int(c.numel()) for c in contexts)
    ids = torch.full((len(contexts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(contexts), width), dtype=torch.long)
    for row, context in enumerate(contexts):
        ids[row, width - context.numel() :] = context
        mask[row, width - context.numel() :] = 1
    return ids, mask


def _takes_logits_to_keep(model: Any) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (transformers' causal LMs since 4.50). FSDP1 wraps the
    Hugging Face model as ``module``; a PEFT (LoRA) model passes its keyword arguments on to its base model."""
    inner = getattr(model, "module", model)
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def greedy_continuations(
    model: Any,
    contexts: Sequence[torch.Tensor],
    pad_id: int,
    end_ids: Collection[int],
    token_texts: Sequence[str],
    stop_text: str,
    max_new_tokens: int = 64,
    micro_batch_size: int = 256,
) -> list[list[int]]:
    """:func:`greedy_generate` on one process, each row cut by :func:`cut_at_text` (a :data:`ContinueFn`).

    Args:
        token_texts, stop_text: see :func:`cut_at_text`; the rest: see :func:`greedy_generate`.
    """
    generated = greedy_generate(model, contexts, pad_id, end_ids, max_new_tokens, micro_batch_size)
    return [cut_at_text(row, token_texts, stop_text, end_ids) for row in generated.tolist()]


class RememberedContinuations:
    """A :data:`ContinueFn` that generates each distinct context once: later calls with a context already seen (the
    contrast target scores Y and Y' after the same prefixes; benchmark variants share them) reuse its continuation.

    ``continuations`` holds every one generated so far, keyed by its context's bytes.
    """

    def __init__(self, continue_fn: ContinueFn) -> None:
        self.continue_fn = continue_fn
        self.continuations: dict[bytes, list[int]] = {}

    def __call__(self, contexts: Sequence[torch.Tensor]) -> list[list[int]]:
        keys = [context.cpu().numpy().tobytes() for context in contexts]
        new = {key: context for key, context in zip(keys, contexts) if key not in self.continuations}
        if new:
            self.continuations.update(zip(new, self.continue_fn(list(new.values()))))
        return [self.continuations[key] for key in keys]


def lookahead_sequences(
    batch: AttributionBatch, lengths: AttributionLengths, continue_fn: ContinueFn
) -> list[ScoringJob]:
    """The sequences ``[q, o_{<c_i}, g_i, Y]`` of every response and i = 0..K_b, with g_K empty.

    Same layout as :func:`acpo_core.attribution.naive_sequences` (``(b, i, sequence, context length)``), so
    :func:`acpo_core.scoring.score_answer_loglik_naive` scores them (``sequences=``). ``continue_fn`` is called once,
    on the contexts of every i < K_b.
    """
    jobs = naive_sequences(batch, lengths)
    open_jobs = [n for n, (b, i, _, _) in enumerate(jobs) if i < int(lengths.num_steps[b])]
    continuations = continue_fn([jobs[n][2][: jobs[n][3]] for n in open_jobs])
    if len(continuations) != len(open_jobs):
        raise RuntimeError(f"continue_fn returned {len(continuations)} continuations for {len(open_jobs)} contexts")
    out = list(jobs)
    for n, continuation in zip(open_jobs, continuations):
        b, i, sequence, context_len = jobs[n]
        extra = torch.tensor(continuation, dtype=sequence.dtype)
        out[n] = (b, i, torch.cat([sequence[:context_len], extra, sequence[context_len:]]), context_len + extra.numel())
    return out


def lookahead_batch(
    batch: AttributionBatch, lengths: AttributionLengths, continue_fn: ContinueFn
) -> tuple[AttributionBatch, torch.Tensor, torch.Tensor]:
    """§3.3 in the layout every scorer takes: each distinct look-ahead context as a one-step response.

    Job (b, i) of :func:`lookahead_sequences` becomes a row with prompt q_b, response ``[o_{b,<c_i}, g_{b,i}]`` (one
    step, boundaries [0, T'], possibly the empty step [0, 0]) and b's answer row; its L_1 (= its L_0 when the response
    is empty) is L_{b,i}^look. Identical rows (the prompt-only context i = 0 of a group's responses, repeated
    responses) are kept once, so the packed scorer (§3.1) scores the judge in one pass of J <= sum_b (K_b + 1) rows.

    Returns:
        (the J-row batch, ``row_of_job`` [sum_b (K_b + 1)] long: the row that scores each job, ``owners``
        [sum_b (K_b + 1), 2] long: the job's (b, i)), jobs in :func:`lookahead_sequences` order.
    """
    jobs = lookahead_sequences(batch, lengths, continue_fn)
    rows: dict[tuple[bytes, ...], int] = {}
    prompts: list[torch.Tensor] = []
    responses: list[torch.Tensor] = []
    answer_of_row: list[int] = []
    row_of_job: list[int] = []
    for b, _, sequence, context_len in jobs:
        context = sequence[:context_len]
        answer = batch.answer_ids[b] * batch.answer_mask[b]
        key = tuple(t.cpu().numpy().tobytes() for t in (context, answer, batch.answer_scored[b]))
        if key not in rows:
            rows[key] = len(prompts)
            prompts.append(context[: int(lengths.prompt[b])])
            responses.append(context[int(lengths.prompt[b]) :])
            answer_of_row.append(b)
        row_of_job.append(rows[key])
    pad = partial(torch.nn.utils.rnn.pad_sequence, batch_first=True, padding_value=0)
    response_len = torch.tensor([r.numel() for r in responses], dtype=torch.long)
    answers = torch.tensor(answer_of_row, dtype=torch.long, device=batch.answer_ids.device)
    device = batch.prompt_ids.device
    looked = AttributionBatch(
        prompt_ids=pad(prompts, padding_side="left").to(device),
        prompt_mask=pad([torch.ones_like(p) for p in prompts], padding_side="left").to(device),
        response_ids=pad(responses).reshape(len(responses), -1).to(device),
        response_mask=pad([torch.ones_like(r) for r in responses]).reshape(len(responses), -1).to(device),
        boundaries=torch.stack([torch.zeros_like(response_len), response_len], dim=1).to(device),
        num_steps=torch.ones(len(responses), dtype=torch.long, device=device),
        answer_ids=batch.answer_ids[answers],
        answer_mask=batch.answer_mask[answers],
        answer_scored=batch.answer_scored[answers],
    )
    owners = torch.tensor([(b, i) for b, i, _, _ in jobs], dtype=torch.long).reshape(-1, 2)
    return looked, torch.tensor(row_of_job, dtype=torch.long), owners


def score_lookahead(
    batch: AttributionBatch, continue_fn: ContinueFn, score_fn: Callable[[AttributionBatch], torch.Tensor]
) -> torch.Tensor:
    """§3.3: L^look [B, Kmax+1] (float32; 0 beyond K_b) of ``batch``, with any §3 scorer ``score_fn`` (packed on the
    workers, :func:`acpo_core.scoring.score_answer_loglik` locally) run once on :func:`lookahead_batch`."""
    looked, row_of_job, owners = lookahead_batch(batch, check_attribution_batch(batch), continue_fn)
    row_scores = score_fn(looked)[:, 1].float().cpu()
    scores = torch.zeros(batch.boundaries.shape, dtype=torch.float32)
    scores[owners[:, 0], owners[:, 1]] = row_scores[row_of_job]
    return scores.to(batch.prompt_ids.device)


def continuation_metrics(continuations: Collection[list[int]], max_new_tokens: int) -> dict[str, float]:
    """What the look-ahead judge generated in a step: ``acpo/lookahead/prefixes`` (contexts continued),
    ``acpo/lookahead/tokens_mean`` (tokens kept per continuation) and ``acpo/lookahead/truncated_frac`` (the share
    that reached ``max_new_tokens`` without an end token or the template: raise ``lookahead_max_new_tokens``)."""
    if not continuations:
        return {"acpo/lookahead/prefixes": 0.0}
    lengths = torch.tensor([len(c) for c in continuations], dtype=torch.float32)
    return {
        "acpo/lookahead/prefixes": float(len(lengths)),
        "acpo/lookahead/tokens_mean": float(lengths.mean()),
        "acpo/lookahead/truncated_frac": float((lengths >= max_new_tokens).float().mean()),
    }
