"""§3 scoring: the answer log-likelihoods L_0..L_K of every response under a Hugging Face causal LM.

Two ways, equal to 1e-4 in fp32:

- :func:`score_answer_loglik` (production, "packed"): one forward per micro-batch over packed rows ``[q, o, Y^(0..K)]``
  with ``logits_to_keep`` restricted to the columns that predict answer tokens. ``attention="flex"``: the rows are
  documents of one sequence with a flex-attention ``BlockMask`` (:mod:`acpo_core.document_packing`, no [S, S]
  tensor; the model runs under ``attn_implementation="flex_attention"`` for that forward). ``attention="sdpa"``: the
  rows are padded to the longest and take a dense [n, 1, S, S] boolean mask (:mod:`acpo_core.packing`; ``eager``
  models are kept and given the additive form). Micro-batches follow :mod:`acpo_core.micro_batches`.
- :func:`score_answer_loglik_naive` (the reference): K+1 plain forward passes ``[q, o_{<c_i}, Y]`` per response
  (:func:`acpo_core.attribution.naive_sequences`), with the model's own causal mask and position ids.

Log-probabilities are those of ``logits / temperature`` (what verl's old-log-prob pass computes), in float32. The
model's ``forward`` must accept ``position_ids`` and ``logits_to_keep``. Nothing here changes the model's
train/eval mode: callers disable dropout as for any log-prob pass. The attention implementation is switched for the
packed forward only (:func:`attention_implementation`) and restored afterwards.

Compilation (flex): transformers compiles ``flex_attention`` on first use; the packed forward runs with static
shapes, so it compiles once per distinct padded length (:func:`acpo_core.document_packing.padded_width`: under a
token budget, at most 8 widths up to it, the budget's eighths; without one, whole 128-token blocks, at most 8
lengths per doubling). ``benchmarks/bench_attribution_attention.py`` prints the count and the padding. Flex never
runs uncompiled (that would materialise [S, S] scores): :func:`check_flex_compilation`.

Failure (FSDP): with ``process_group``, the ranks agree before each forward whether any failed
(:mod:`acpo_core.fail_fast`), so one rank's error stops them all with its message.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from acpo_core.attribution import (
    AttributionBatch,
    AttributionLengths,
    ScoringJob,
    check_attribution_batch,
    check_vocabulary,
    naive_sequences,
)
from acpo_core.document_packing import BLOCK_SIZE, WIDTHS_PER_BUDGET, block_mask, pack_documents, packed_lengths
from acpo_core.fail_fast import run_in_lockstep
from acpo_core.micro_batches import plan_micro_batches
from acpo_core.packing import pack_rows

__all__ = [
    "ATTENTION_CHOICES",
    "attention_implementation",
    "check_flex_compilation",
    "check_scoring_inputs",
    "plan_scoring",
    "resolve_attention",
    "score_answer_loglik",
    "score_answer_loglik_naive",
]

# acpo.attribution.attention: auto = flex on an accelerator, sdpa on CPU (faster there, see the benchmark).
ATTENTION_CHOICES = ("auto", "flex", "sdpa")
# Implementations that take the dense packed mask as they are.
DENSE_MASK_ATTENTION = ("sdpa", "eager")
FLEX_ATTENTION = "flex_attention"
# Distinct padded lengths flex attention may be compiled for in one process (acpo_core.document_packing.padded_width:
# at most 8 under a token budget, plus the rows over it; without a budget at most 8 per doubling).
FLEX_RECOMPILE_LIMIT = 64
# What torch warns when flex_attention runs uncompiled (torch.nn.attention.flex_attention, torch 2.5 to 2.13).
UNCOMPILED_FLEX_WARNING = "flex_attention called without torch.compile()"


def resolve_attention(attention: str, device: torch.device | str) -> str:
    """``flex`` or ``sdpa`` for ``acpo.attribution.attention`` on ``device`` (``auto``: flex unless on CPU)."""
    if attention not in ATTENTION_CHOICES:
        raise ValueError(f"acpo.attribution.attention must be one of {ATTENTION_CHOICES}, got {attention!r}")
    if attention == "auto":
        return "sdpa" if torch.device(device).type == "cpu" else "flex"
    return attention


def _configs_of(model: Any) -> list[Any]:
    """Every distinct config of the model and of its sub-models and sub-configs (attention is set per config)."""
    seen: dict[int, Any] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is None or not hasattr(config, "_attn_implementation"):
            continue
        seen.setdefault(id(config), config)
        for key in getattr(config, "sub_configs", {}) or {}:
            sub = getattr(config, key, None)
            if sub is not None and hasattr(sub, "_attn_implementation"):
                seen.setdefault(id(sub), sub)
    return list(seen.values())


@contextmanager
def attention_implementation(model: Any, attention: str) -> Iterator[str]:
    """Run the body with the attention implementation the packed path ``attention`` needs; yield its name.

    ``flex``: ``flex_attention``. ``sdpa``: ``sdpa`` and ``eager`` are kept; anything else (``flash_attention_2``
    with verl's remove-padding patches, a kernel) is switched to ``sdpa``. A switch goes through
    ``set_attn_implementation`` and is undone on exit, including the sub-model configs it marks as changed.
    """
    current = getattr(model.config, "_attn_implementation", None)
    wanted = FLEX_ATTENTION if attention == "flex" else "sdpa"
    if current == wanted or (attention != "flex" and current in DENSE_MASK_ATTENTION):
        yield current
        return
    saved = [(c, c._attn_implementation_internal, hasattr(c, "_attn_was_changed")) for c in _configs_of(model)]
    try:
        model.set_attn_implementation(wanted)
        if model.config._attn_implementation != wanted:
            raise RuntimeError(
                f"{type(model).__name__} did not switch from attention {current!r} to {wanted!r}, which packed "
                "attribution needs: set acpo.attribution.attention to the other path or acpo.attribution.mode=naive"
            )
        yield wanted
    finally:
        for config, implementation, had_marker in saved:
            config._attn_implementation_internal = implementation
            if not had_marker and hasattr(config, "_attn_was_changed"):
                del config._attn_was_changed


def check_scoring_inputs(
    model: Any, batch: AttributionBatch, micro_batch_size: int, temperature: float, first_row: int = 0
) -> AttributionLengths:
    """Everything scoring checks before a forward pass; returns the batch's valid lengths.

    ``first_row``: the index of this batch's first row in a larger request (a rank's share), added to the message.
    Raises:
        ValueError: see :func:`acpo_core.attribution.check_attribution_batch`; also a token id outside the model's
        vocabulary, a bad micro-batch size or temperature.
    """
    try:
        if not isinstance(micro_batch_size, int) or isinstance(micro_batch_size, bool) or micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be a positive integer, got {micro_batch_size!r}")
        if not (isinstance(temperature, int | float) and temperature > 0 and temperature != float("inf")):
            raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
        lengths = check_attribution_batch(batch)
        check_vocabulary(batch, getattr(model.get_input_embeddings(), "num_embeddings", None))
    except ValueError as err:
        if first_row:
            raise ValueError(f"{err} (row numbers of this share; its row 0 is row {first_row} of the request)") from err
        raise
    return lengths


def _answer_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / temperature)[target] in float32. logits [M, V], targets [M] -> [M]."""
    scaled = logits.float() / temperature
    return scaled.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(scaled, dim=1)


def _hidden_size(model: Any) -> int:
    config = model.config
    return int(getattr(config, "hidden_size", None) or getattr(config.get_text_config(), "hidden_size", 1))


def plan_scoring(
    model: Any,
    batch: AttributionBatch,
    lengths: AttributionLengths,
    micro_batch_size: int,
    attention: str,
    token_budget: int | None = None,
    min_micro_batches: int = 1,
) -> list[torch.Tensor]:
    """The micro-batches (row indices) :func:`score_answer_loglik` runs (:func:`plan_micro_batches`)."""
    return plan_micro_batches(
        packed_lengths(lengths),
        micro_batch_size,
        token_budget,
        resolve_attention(attention, batch.prompt_ids.device),
        _hidden_size(model),
        BLOCK_SIZE,
        min_micro_batches,
    )


def _prepare_dense(
    batch: AttributionBatch, lengths: AttributionLengths, dtype: torch.dtype, implementation: str
) -> Any:
    """Rows padded to the longest with the dense [n, 1, S, S] mask (the additive form for ``eager``)."""
    packed = pack_rows(batch, lengths, pad_token_id=0)
    mask = packed.attention_mask
    if implementation == "eager":
        # eager attention adds the mask to the scores; sdpa takes the boolean mask directly.
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return packed, mask


def _dense_micro_batch(model: Any, batch: AttributionBatch, prepared: Any, temperature: float) -> torch.Tensor:
    """L [n, K1] of one micro-batch prepared by :func:`_prepare_dense`."""
    packed, mask = prepared
    logits = model(
        input_ids=packed.input_ids,
        attention_mask=mask,
        position_ids=packed.position_ids,
        logits_to_keep=packed.logit_columns,
        use_cache=False,
    ).logits  # [n, U, V]
    row, copy, offset = _scored_targets(packed.target_mask, batch.answer_scored)
    kept = torch.searchsorted(packed.logit_columns, packed.predictor_columns[row, copy, offset])
    logprobs = _answer_logprobs(logits[row, kept], packed.target_ids[row, offset], temperature)
    return _sum_per_copy(row, copy, logprobs, packed.target_mask.shape[:2])


def check_flex_compilation() -> None:
    """Refuse to run flex attention where it would not be compiled.

    Uncompiled, ``flex_attention`` materialises the [heads, S, S] scores (torch warns "flex_attention called
    without torch.compile()" and runs its reference implementation): at S = 12,288 and 28 heads that is 8 GB per
    layer in bf16, an out-of-memory far from its cause. transformers always wraps it in ``torch.compile``; it still
    runs uncompiled when TorchDynamo is disabled (``TORCH_COMPILE_DISABLE=1``, ``torch._dynamo.config.disable``) or
    unsupported here, or when the compiled function hits its recompile limit (then it falls back to eager).
    Raises:
        RuntimeError: TorchDynamo is disabled or unsupported here.
    """
    if torch._dynamo.config.disable or not torch._dynamo.is_dynamo_supported():
        raise RuntimeError(
            "acpo.attribution.attention=flex needs torch.compile (TorchDynamo is disabled or unsupported here: "
            "TORCH_COMPILE_DISABLE?); uncompiled flex attention materialises the full [S, S] scores: enable "
            "compilation or set acpo.attribution.attention=sdpa"
        )


@contextmanager
def _compiled_flex_only() -> Iterator[None]:
    """The body's flex attention runs compiled, with static shapes, or raises (:func:`check_flex_compilation`).

    Static shapes: one compiled kernel per padded width (inductor's dynamic-shape flex kernel does not build on CPU
    with torch 2.13), and room for every width a run can meet (:func:`acpo_core.document_packing.padded_width`).
    Past the recompile limit TorchDynamo would fall back to eager: ``fail_on_recompile_limit_hit`` makes that an
    error, and torch's warning of an uncompiled call (any other fallback) is turned into one.
    """
    check_flex_compilation()
    limits = {"automatic_dynamic_shapes": False, "recompile_limit": FLEX_RECOMPILE_LIMIT}
    with torch._dynamo.config.patch(**limits, fail_on_recompile_limit_hit=True), warnings.catch_warnings():
        warnings.filterwarnings("error", message=f".*{re.escape(UNCOMPILED_FLEX_WARNING)}", category=UserWarning)
        try:
            yield
        except torch._dynamo.exc.FailOnRecompileLimitHit as err:
            raise _uncompiled_flex_error(err) from err
        except UserWarning as err:
            if UNCOMPILED_FLEX_WARNING not in str(err):
                raise
            raise _uncompiled_flex_error(err) from err


def _uncompiled_flex_error(cause: BaseException) -> RuntimeError:
    return RuntimeError(
        f"flex attention would run uncompiled ({type(cause).__name__}: {str(cause).splitlines()[0]}), materialising "
        f"the full [S, S] scores; under a token budget (acpo.attribution.max_tokens_per_micro_batch, or the log-prob "
        f"pass's) a run meets at most {WIDTHS_PER_BUDGET} padded widths: set one, or acpo.attribution.attention=sdpa"
    )


def _flex_micro_batch(model: Any, batch: AttributionBatch, prepared: Any, temperature: float) -> torch.Tensor:
    """L [n, K1] of one micro-batch prepared by :func:`_prepare_flex`: documents of one sequence, a BlockMask."""
    packed, mask = prepared
    with _compiled_flex_only():
        logits = model(
            input_ids=packed.input_ids,
            attention_mask=mask,
            position_ids=packed.position_ids,
            logits_to_keep=packed.logit_columns,
            use_cache=False,
        ).logits[0]  # [U, V]
    row, copy, offset = _scored_targets(packed.target_mask, batch.answer_scored)
    kept = torch.searchsorted(packed.logit_columns, packed.predictor_columns[row, copy, offset])
    logprobs = _answer_logprobs(logits[kept], packed.target_ids[row, offset], temperature)
    return _sum_per_copy(row, copy, logprobs, packed.target_mask.shape[:2])


def _prepare_flex(batch: AttributionBatch, lengths: AttributionLengths, token_budget: int | None) -> Any:
    """The packed sequence (padded to one of few widths, :func:`padded_width`) and its BlockMask."""
    packed = pack_documents(batch, lengths, pad_token_id=0, token_budget=token_budget)
    return packed, block_mask(packed)


def _scored_targets(
    target_mask: torch.Tensor, answer_scored: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row, copy, answer offset) of every answer token L_i sums: valid in ``target_mask`` [n, K1, A] and marked in
    ``answer_scored`` [n, A] (§3.2 value-only scoring leaves the template's fixed text out)."""
    row, copy, offset = target_mask.nonzero(as_tuple=True)
    keep = answer_scored.to(target_mask.device)[row, offset] != 0
    return row[keep], copy[keep], offset[keep]


def _sum_per_copy(row: torch.Tensor, copy: torch.Tensor, logprobs: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    scores = torch.zeros(shape, dtype=torch.float32, device=logprobs.device)
    return scores.index_put_((row, copy), logprobs, accumulate=True)


@torch.no_grad()
def score_answer_loglik(
    model: Any,
    batch: AttributionBatch,
    micro_batch_size: int,
    temperature: float = 1.0,
    attention: str = "sdpa",
    token_budget: int | None = None,
    min_micro_batches: int = 1,
    process_group: Any = None,
) -> torch.Tensor:
    """§3, packed (production) path: L_i = sum_y log pi(y | q, o_{<c_i}, Y_{<y}) for every response and i = 0..K.

    Args:
        model: a Hugging Face causal LM on the inputs' device.
        batch: :class:`acpo_core.attribution.AttributionBatch` of B responses.
        micro_batch_size: at most this many responses per forward pass.
        temperature: log-probs are those of ``logits / temperature`` (verl's old-log-prob convention).
        attention: ``flex``, ``sdpa`` or ``auto`` (:func:`resolve_attention`).
        token_budget: at most this many tokens per forward (:mod:`acpo_core.micro_batches`); None: no limit.
        min_micro_batches: run at least this many forwards (equal counts on FSDP ranks).
        process_group: the ranks that score together (FSDP; ``torch.distributed.group.WORLD`` for all): they agree
            before every forward and after the last whether any rank failed, and all raise
            :class:`acpo_core.fail_fast.RankFailure` naming it (:func:`acpo_core.fail_fast.run_in_lockstep`); the
            inputs' device is the flag's. None (default): this process alone, errors are raised as they are.
    Returns:
        L: [B, Kmax+1] float32; 0 beyond K_b.
    Raises:
        ValueError: see :func:`acpo_core.attribution.check_attribution_batch`; also a token id outside the model's
        vocabulary, a bad micro-batch size, temperature or attention choice.
        RuntimeError: flex attention would run uncompiled (:func:`check_flex_compilation`).
    """
    lengths = check_scoring_inputs(model, batch, micro_batch_size, temperature)
    path = resolve_attention(attention, batch.prompt_ids.device)
    plan = plan_scoring(model, batch, lengths, micro_batch_size, path, token_budget, min_micro_batches)
    device = batch.prompt_ids.device
    scores = torch.zeros(len(batch), batch.boundaries.shape[1], dtype=torch.float32, device=device)
    if path == "flex":
        check_flex_compilation()
    with attention_implementation(model, path) as implementation:

        def prepare(rows: torch.Tensor) -> Any:
            part, part_lengths = batch.select(rows), lengths.select(rows)
            if path == "flex":
                return _prepare_flex(part, part_lengths, token_budget)
            return _prepare_dense(part, part_lengths, model.dtype, implementation)

        def run(rows: torch.Tensor, prepared: Any) -> None:
            forward = _flex_micro_batch if path == "flex" else _dense_micro_batch
            micro_scores = forward(model, batch.select(rows), prepared, temperature)
            scores[rows, : micro_scores.shape[1]] = micro_scores

        run_in_lockstep(plan, prepare, run, group=process_group, device=device, what="attribution scoring")
    return scores


@torch.no_grad()
def score_answer_loglik_naive(
    model: Any,
    batch: AttributionBatch,
    micro_batch_size: int,
    temperature: float = 1.0,
    sequences: Callable[[AttributionBatch, AttributionLengths], list[ScoringJob]] = naive_sequences,
) -> torch.Tensor:
    """§3, the reference: K_b + 1 separate plain forward passes ``[q, o_{<c_i}, Y]`` per response.

    The sequences (``sequences``: :func:`acpo_core.attribution.naive_sequences`, or the look-ahead judge's,
    :func:`acpo_core.lookahead.lookahead_sequences`) are right-padded in micro-batches of ``micro_batch_size`` and run
    with the model's own causal mask (a 2D padding mask) and default position ids. Same arguments, returns and errors
    as :func:`score_answer_loglik` (attention implementation: any). No gradient.

    Returns:
        L: [B, Kmax+1] float32; 0 beyond K_b.
    """
    lengths = check_scoring_inputs(model, batch, micro_batch_size, temperature)
    device = batch.prompt_ids.device
    scores = torch.zeros(len(batch), batch.boundaries.shape[1], dtype=torch.float32, device=device)
    jobs = sequences(batch, lengths)
    for start in range(0, len(jobs), micro_batch_size):
        chunk = jobs[start : start + micro_batch_size]
        width = max(sequence.numel() for _, _, sequence, _ in chunk)
        input_ids = torch.zeros(len(chunk), width, dtype=torch.long, device=device)
        attention_mask = torch.zeros(len(chunk), width, dtype=torch.long, device=device)
        for n, (_, _, sequence, _) in enumerate(chunk):
            input_ids[n, : sequence.numel()] = sequence
            attention_mask[n, : sequence.numel()] = 1
        # The logits at column p predict the token at p + 1: answer tokens are predicted from context_len - 1 on.
        wanted = [
            (n, context_len - 1 + j, int(sequence[context_len + j]))
            for n, (b, _, sequence, context_len) in enumerate(chunk)
            for j in range(sequence.numel() - context_len)
            if batch.answer_scored[b, j]
        ]
        columns = torch.tensor(sorted({column for _, column, _ in wanted}), dtype=torch.long, device=device)
        logits = model(
            input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=columns, use_cache=False
        ).logits
        row = torch.tensor([n for n, _, _ in wanted], device=device)
        kept = torch.searchsorted(columns, torch.tensor([c for _, c, _ in wanted], device=device))
        targets = torch.tensor([y for _, _, y in wanted], device=device)
        logprobs = _answer_logprobs(logits[row, kept], targets, temperature)
        for n, (b, i, _, _) in enumerate(chunk):
            scores[b, i] = logprobs[row == n].sum()
    return scores
