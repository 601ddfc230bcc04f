"""Spec §3: step attribution, the policy as its own judge of how much each step moves it toward the answer.

For a response o split into K steps by boundaries c_0 = 0 < c_1 < ... < c_K = T (spec §2),

    L_i = sum over y in Y of log pi_old(y | q, o_{<c_i}, Y_{<y}),  i = 0..K,
    C_i = L_{i+1} - L_i,                                        i = 0..K-1,

where Y is the ground-truth answer rendered by ``acpo.attribution.answer_template``. The C_i telescope:
sum_i C_i = L_K - L_0.

Two ways to compute L, equal to 1e-4 in fp32:

- :func:`score_answer_loglik` (production, "packed"): one sequence per response, ``[q, o_1..o_T, Y^(0), ..., Y^(K)]``.
  Copy Y^(i) sees q and o_{<c_i} and itself causally, nothing else, and its position ids continue from |q| + c_i,
  so each copy is scored exactly as if it followed the truncated response. Cost: |q| + T + (K+1)|Y| tokens.
- :func:`score_answer_loglik_naive` (the reference): K+1 separate plain forward passes ``[q, o_{<c_i}, Y]`` per
  response, with the model's own causal mask and position ids. Cost: sum_i (|q| + c_i + |Y|) tokens.

Both take verl's layout: prompts left-padded, responses and answers right-padded. Log-probabilities are those of
``logits / temperature`` (what verl's old-log-prob pass computes), in float32. The model is any Hugging Face causal LM
whose ``forward`` accepts ``position_ids``, ``logits_to_keep`` and, for the packed path, a 4D attention mask (used
as-is by ``transformers.masking_utils`` when given in 4D): attention implementations ``sdpa`` and ``eager``. Nothing
here changes the model's train/eval mode: callers disable dropout as for any log-prob pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

SUPPORTED_ATTENTION = ("sdpa", "eager")


def render_answer_ids(tokenizer: Any, ground_truth: str, template: str) -> list[int]:
    """Spec §3: token ids of Y, the ground truth rendered by ``answer_template``, without special tokens.

    Args:
        tokenizer: a Hugging Face tokenizer.
        ground_truth: the reference answer of the prompt (leading and trailing white space is dropped).
        template: ``acpo.attribution.answer_template``, e.g. ``"Answer: {answer}"``.
    Returns:
        The ids of ``template.format(answer=ground_truth.strip())``, a non-empty list.
    Raises:
        ValueError: ``ground_truth`` is not a string or is empty after stripping, or renders to no tokens.
    """
    if not isinstance(ground_truth, str):
        raise ValueError(
            f"the ground-truth answer must be a string, got {ground_truth!r} ({type(ground_truth).__name__})"
        )
    answer = ground_truth.strip()
    if not answer:
        raise ValueError(f"the ground-truth answer {ground_truth!r} is empty: attribution needs a reference answer")
    text = template.format(answer=answer)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not ids:
        raise ValueError(f"the answer {ground_truth!r} rendered by {template!r} as {text!r} tokenises to no tokens")
    return ids


@dataclass(frozen=True)
class AttributionLengths:
    """Valid lengths of a checked batch of B rows (spec §3 notation)."""

    prompt: torch.Tensor  # [B] long: |q|
    response: torch.Tensor  # [B] long: T
    answer: torch.Tensor  # [B] long: |Y|
    num_steps: torch.Tensor  # [B] long: K


@dataclass(frozen=True)
class PackedAttributionInputs:
    """The packed sequences of spec §3 for N responses, and where to read the answer log-probs from.

    A row is ``[left padding, q, o_1..o_T, Y^(0), ..., Y^(K), right padding]``; every row's context ``[q, o]`` ends at
    the same column so that all copies of all rows lie in one contiguous tail.
    """

    input_ids: torch.Tensor  # [N, S] long; padding holds pad_token_id
    attention_mask: torch.Tensor  # [N, 1, S, S] bool, True where query S_q may attend to key S_k
    position_ids: torch.Tensor  # [N, S] long; 0 on padding
    predictor_columns: torch.Tensor  # [N, K1, A] long: column whose logits predict answer token j of copy i
    target_ids: torch.Tensor  # [N, A] long: Y, right-padded
    target_mask: torch.Tensor  # [N, K1, A] bool: (i <= K_n) and (j < |Y_n|)
    logit_columns: torch.Tensor  # [U] long, sorted: the union of the valid predictor columns (for logits_to_keep)
    num_real_tokens: int  # tokens that are not padding: sum_n |q| + T + (K+1)|Y|


@dataclass(frozen=True)
class AttributionTokenCounts:
    """Tokens each way of scoring processes, padding excluded (logged as ``acpo/attr_tokens_ratio``)."""

    plain_forward: int  # sum_b |q| + T: one ordinary forward over prompt and response
    packed: int  # sum_b |q| + T + (K+1)|Y|
    naive: int  # sum_b sum_{i=0..K} |q| + c_i + |Y|

    @property
    def packed_over_plain(self) -> float:
        return self.packed / max(self.plain_forward, 1)

    @property
    def naive_over_plain(self) -> float:
        return self.naive / max(self.plain_forward, 1)


def _rows(bad: torch.Tensor) -> str:
    rows = bad.nonzero().flatten().tolist()
    shown = ", ".join(str(r) for r in rows[:8]) + (f" (and {len(rows) - 8} more)" if len(rows) > 8 else "")
    return f"row{'s' if len(rows) > 1 else ''} {shown}"


def _fail_rows(bad: torch.Tensor, message: str) -> None:
    if bad.any():
        raise ValueError(f"{message}: {_rows(bad)}")


def _is_integer(t: torch.Tensor) -> bool:
    return not (t.dtype.is_floating_point or t.is_complex() or t.dtype == torch.bool)


def _mask_lengths(mask: torch.Tensor, name: str, padding_side: str) -> torch.Tensor:
    """The number of ones per row of a 0/1 mask [B, W] whose ones are a suffix (left) or prefix (right) of the row."""
    _fail_rows(((mask != 0) & (mask != 1)).any(dim=1), f"{name} must hold only 0 and 1")
    valid = mask != 0
    lengths = valid.sum(dim=1)
    columns = torch.arange(mask.shape[1], device=mask.device)
    if padding_side == "left":
        expected = columns[None, :] >= (mask.shape[1] - lengths)[:, None]
    else:
        expected = columns[None, :] < lengths[:, None]
    what = "suffix" if padding_side == "left" else "prefix"
    _fail_rows((valid != expected).any(dim=1), f"{name} is not a {what} of ones (must be {padding_side}-padded)")
    return lengths


def check_attribution_batch(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    boundaries: torch.Tensor,
    num_steps: torch.Tensor,
    answer_ids: torch.Tensor,
    answer_mask: torch.Tensor,
) -> AttributionLengths:
    """Validate a batch for spec §3 scoring and return its valid lengths.

    Args:
        prompt_ids, prompt_mask: [B, P], left-padded (ones form a suffix of each mask row); |q| >= 1.
        response_ids, response_mask: [B, T], right-padded (ones form a prefix).
        boundaries: [B, Kmax+1] integer, c_0 = 0 < c_1 < ... < c_K = T_b, then -1 (spec §2 output). An empty response
            is the single empty step [0, 0].
        num_steps: [B] integer K_b, 1 <= K_b <= Kmax.
        answer_ids, answer_mask: [B, A], right-padded, |Y| >= 1.
    Returns:
        :class:`AttributionLengths`.
    Raises:
        ValueError: mismatched shapes or devices, non-integer ids, a malformed mask, an empty prompt or answer,
        a step count out of range, boundaries outside the response, not starting at 0, not ending at T_b,
        not increasing, or not -1 after c_K; row-specific errors name the rows.
    """
    named = {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "response_ids": response_ids,
        "response_mask": response_mask,
        "boundaries": boundaries,
        "answer_ids": answer_ids,
        "answer_mask": answer_mask,
    }
    for name, tensor in named.items():
        if tensor.dim() != 2:
            raise ValueError(f"{name} must have shape [B, width], got {tuple(tensor.shape)}")
    if num_steps.dim() != 1:
        raise ValueError(f"num_steps must have shape [B], got {tuple(num_steps.shape)}")
    batch_size = prompt_ids.shape[0]
    shapes = ", ".join(f"{name} {tuple(t.shape)}" for name, t in [*named.items(), ("num_steps", num_steps)])
    if any(t.shape[0] != batch_size for t in [*named.values(), num_steps]):
        raise ValueError(f"batch sizes differ: {shapes}")
    for ids, mask in (("prompt_ids", "prompt_mask"), ("response_ids", "response_mask"), ("answer_ids", "answer_mask")):
        if named[ids].shape != named[mask].shape:
            raise ValueError(f"{ids} and {mask} must have the same shape: {shapes}")
    if boundaries.shape[1] < 2:
        raise ValueError(f"boundaries must have at least 2 columns (c_0 and c_1), got {tuple(boundaries.shape)}")
    for name in ("prompt_ids", "response_ids", "answer_ids", "boundaries"):
        if not _is_integer(named[name]):
            raise ValueError(f"{name} must be an integer tensor, got {named[name].dtype}")
    if not _is_integer(num_steps):
        raise ValueError(f"num_steps must be an integer tensor, got {num_steps.dtype}")
    device = prompt_ids.device
    if any(t.device != device for t in [*named.values(), num_steps]):
        raise ValueError(f"all inputs must be on one device: {', '.join(f'{n} {t.device}' for n, t in named.items())}")

    prompt_len = _mask_lengths(prompt_mask, "prompt_mask", "left")
    response_len = _mask_lengths(response_mask, "response_mask", "right")
    answer_len = _mask_lengths(answer_mask, "answer_mask", "right")
    _fail_rows(prompt_len == 0, "empty prompt (the first answer token needs a context to be predicted from)")
    _fail_rows(answer_len == 0, "empty answer")
    for name, ids, valid in (
        ("prompt_ids", prompt_ids, prompt_mask != 0),
        ("response_ids", response_ids, response_mask != 0),
        ("answer_ids", answer_ids, answer_mask != 0),
    ):
        _fail_rows((valid & (ids < 0)).any(dim=1), f"negative token id in {name}")

    steps = num_steps.long()
    max_steps = boundaries.shape[1] - 1
    _fail_rows((steps < 1) | (steps > max_steps), f"num_steps must lie in [1, {max_steps}]")
    cuts = boundaries.long()
    index = torch.arange(max_steps + 1, device=device)
    active = index[None, :] <= steps[:, None]
    _fail_rows((active & ((cuts < 0) | (cuts > response_len[:, None]))).any(dim=1), "boundaries outside the response")
    _fail_rows(cuts[:, 0] != 0, "boundaries must start with c_0 = 0")
    last = cuts.gather(1, steps[:, None]).squeeze(1)
    _fail_rows(last != response_len, "the last boundary c_K must equal the response length T")
    _fail_rows((~active & (cuts != -1)).any(dim=1), "boundaries after c_K must be -1")
    rising = cuts[:, 1:] > cuts[:, :-1]
    within = active[:, 1:]
    empty_response_single_step = (response_len == 0) & (steps == 1)
    _fail_rows(
        (within & ~rising).any(dim=1) & ~empty_response_single_step,
        "boundaries must increase strictly (every step holds at least one token)",
    )
    return AttributionLengths(prompt=prompt_len, response=response_len, answer=answer_len, num_steps=steps)


def _pack(
    prompt_ids: torch.Tensor,
    response_ids: torch.Tensor,
    boundaries: torch.Tensor,
    answer_ids: torch.Tensor,
    lengths: AttributionLengths,
    pad_token_id: int,
) -> PackedAttributionInputs:
    """Build the packed sequences of already-checked rows, trimmed to these rows' own maximal lengths."""
    device = prompt_ids.device
    prompt_len, response_len, answer_len, steps = lengths.prompt, lengths.response, lengths.answer, lengths.num_steps
    width_p = int(prompt_len.max())
    width_t = int(response_len.max())
    width_a = int(answer_len.max())
    num_copies = int(steps.max()) + 1
    prompt = prompt_ids[:, prompt_ids.shape[1] - width_p :].long()
    response = response_ids[:, :width_t].long()
    answer = answer_ids[:, :width_a].long()
    cuts = boundaries[:, :num_copies].long()

    context_len = prompt_len + response_len  # [N]
    tail_len = (steps + 1) * answer_len  # [N]
    context_end = int(context_len.max())  # X: every row's context ends here, its copies start here
    width = context_end + int(tail_len.max())
    column = torch.arange(width, device=device)[None, :]  # [1, S]

    # Context columns: context index t counts from the row's first prompt token.
    t = column - (context_end - context_len)[:, None]  # [N, S]
    is_context = (column < context_end) & (t >= 0)
    in_prompt = t < prompt_len[:, None]
    joined = torch.cat([prompt, response], dim=1)  # [N, P' + T']: left-padded prompt then right-padded response
    source = torch.where(in_prompt, width_p - prompt_len[:, None] + t, width_p + t - prompt_len[:, None])
    context_tokens = joined.gather(1, source.clamp(0, joined.shape[1] - 1))

    # Tail columns: copy i of Y at offset j.
    r = column - context_end
    is_copy = (r >= 0) & (r < tail_len[:, None])
    copy = torch.where(is_copy, r // answer_len[:, None], 0)
    offset = torch.where(is_copy, r % answer_len[:, None], 0)
    cut = cuts.gather(1, copy)  # c_i of each copy column
    copy_tokens = answer.gather(1, offset)

    input_ids = torch.full_like(t, pad_token_id)
    input_ids = torch.where(is_context, context_tokens, input_ids)
    input_ids = torch.where(is_copy, copy_tokens, input_ids)
    position_ids = torch.where(is_context, t, 0)
    position_ids = torch.where(is_copy, prompt_len[:, None] + cut + offset, position_ids)

    # A query sees the context tokens with index < its visible count (t + 1 for context, |q| + c_i for copy i), the
    # earlier tokens of its own copy, and itself (so that padding rows are never fully masked).
    visible = torch.where(is_context, t + 1, 0)
    visible = torch.where(is_copy, prompt_len[:, None] + cut, visible)
    key_context_index = torch.where(is_context, t, width)  # width: never below any visible count
    group = torch.where(is_copy, copy, -1)  # -1: context and padding
    sees_context = key_context_index[:, None, :] < visible[:, :, None]
    same_copy = is_copy[:, :, None] & (group[:, :, None] == group[:, None, :])
    sees_copy = same_copy & (offset[:, None, :] <= offset[:, :, None])
    itself = torch.eye(width, dtype=torch.bool, device=device)[None]
    attention_mask = (sees_context | sees_copy | itself)[:, None]

    # Answer token j of copy i is predicted by the last visible context token (j = 0) or by copy token j - 1.
    i = torch.arange(num_copies, device=device)[None, :, None]
    j = torch.arange(width_a, device=device)[None, None, :]
    first = (context_end - context_len + prompt_len)[:, None, None] + cuts[:, :, None] - 1
    later = context_end + i * answer_len[:, None, None] + j - 1
    target_mask = (i <= steps[:, None, None]) & (j < answer_len[:, None, None])
    predictor_columns = torch.where(j == 0, first, later).masked_fill(~target_mask, 0)
    logit_columns = torch.unique(predictor_columns[target_mask])
    return PackedAttributionInputs(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        predictor_columns=predictor_columns,
        target_ids=answer,
        target_mask=target_mask,
        logit_columns=logit_columns,
        num_real_tokens=int((context_len + tail_len).sum()),
    )


def build_packed_inputs(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    boundaries: torch.Tensor,
    num_steps: torch.Tensor,
    answer_ids: torch.Tensor,
    answer_mask: torch.Tensor,
    pad_token_id: int = 0,
) -> PackedAttributionInputs:
    """Spec §3 packed layout: one sequence ``[q, o_1..o_T, Y^(0), ..., Y^(K)]`` per response.

    Copy Y^(i) attends to q, o_{<c_i} and causally to itself only; its position ids are |q| + c_i + j. Rows are
    trimmed to the batch's own longest prompt, response, answer and step count.

    Args:
        prompt_ids, prompt_mask: [N, P], left-padded.
        response_ids, response_mask: [N, T], right-padded.
        boundaries: [N, Kmax+1], c_0 = 0 < ... < c_K = T_n, then -1.
        num_steps: [N] K_n.
        answer_ids, answer_mask: [N, A], right-padded.
        pad_token_id: token id written on padding (never attended to by a real token).
    Returns:
        :class:`PackedAttributionInputs` with input_ids [N, S], a boolean attention mask [N, 1, S, S] (True = may
        attend), position_ids [N, S], and the maps predictor_columns [N, K1, A], target_ids [N, A],
        target_mask [N, K1, A] (K1 = max K_n + 1) from which L is gathered.
    Raises:
        ValueError: see :func:`check_attribution_batch`.
    """
    lengths = check_attribution_batch(
        prompt_ids, prompt_mask, response_ids, response_mask, boundaries, num_steps, answer_ids, answer_mask
    )
    return _pack(prompt_ids, response_ids, boundaries, answer_ids, lengths, pad_token_id)


def packed_token_count(
    prompt_mask: torch.Tensor,
    response_mask: torch.Tensor,
    boundaries: torch.Tensor,
    num_steps: torch.Tensor,
    answer_mask: torch.Tensor,
) -> AttributionTokenCounts:
    """Spec §3 cost: tokens scored by one plain forward over prompt + response, by the packed path and by the naive one.

    Args:
        prompt_mask: [B, P] 0/1; response_mask: [B, T] 0/1; answer_mask: [B, A] 0/1.
        boundaries: [B, Kmax+1] (spec §2 output, -1 after c_K); num_steps: [B] K_b.
    Returns:
        :class:`AttributionTokenCounts`: padding excluded; ``packed_over_plain`` is ``acpo/attr_tokens_ratio``.
    """
    prompt_len = (prompt_mask != 0).sum(dim=1).long()
    response_len = (response_mask != 0).sum(dim=1).long()
    answer_len = (answer_mask != 0).sum(dim=1).long()
    steps = num_steps.long()
    copies = steps + 1
    active = torch.arange(boundaries.shape[1], device=boundaries.device)[None, :] <= steps[:, None]
    cut_sum = (boundaries.long() * active).sum(dim=1)
    return AttributionTokenCounts(
        plain_forward=int((prompt_len + response_len).sum()),
        packed=int((prompt_len + response_len + copies * answer_len).sum()),
        naive=int((copies * (prompt_len + answer_len) + cut_sum).sum()),
    )


def _attention_implementation(model: Any) -> str:
    implementation = getattr(model.config, "_attn_implementation", None)
    if implementation not in SUPPORTED_ATTENTION:
        raise ValueError(
            f"packed attribution needs a custom 4D attention mask, which attention implementation "
            f"{implementation!r} does not take: load the model with attn_implementation='sdpa' or 'eager'"
        )
    return implementation


def _check_scoring_args(model: Any, micro_batch_size: int, temperature: float, *ids: torch.Tensor) -> None:
    if not isinstance(micro_batch_size, int) or isinstance(micro_batch_size, bool) or micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be a positive integer, got {micro_batch_size!r}")
    if not (isinstance(temperature, int | float) and temperature > 0 and temperature != float("inf")):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    embeddings = model.get_input_embeddings()
    vocab = getattr(embeddings, "num_embeddings", None)
    if vocab is not None:
        for name, tensor in zip(("prompt_ids", "response_ids", "answer_ids"), ids):
            _fail_rows((tensor >= vocab).any(dim=1), f"{name} holds a token id >= the model's vocabulary ({vocab})")


def _answer_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / temperature)[target] in float32. logits [M, V], targets [M] -> [M]."""
    scaled = logits.float() / temperature
    return scaled.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(scaled, dim=1)


def _select_rows(lengths: AttributionLengths, rows: torch.Tensor) -> AttributionLengths:
    return AttributionLengths(
        prompt=lengths.prompt[rows],
        response=lengths.response[rows],
        answer=lengths.answer[rows],
        num_steps=lengths.num_steps[rows],
    )


@torch.no_grad()
def score_answer_loglik(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    boundaries: torch.Tensor,
    num_steps: torch.Tensor,
    answer_ids: torch.Tensor,
    answer_mask: torch.Tensor,
    micro_batch_size: int,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Spec §3, packed (production) path: L_i = sum_y log pi(y | q, o_{<c_i}, Y_{<y}) for every response and i = 0..K.

    Responses are sorted by packed length and scored ``micro_batch_size`` at a time, each micro-batch trimmed to its
    own longest row; one forward per micro-batch with the 4D mask of :func:`build_packed_inputs` and
    ``logits_to_keep`` restricted to the columns that predict answer tokens. No gradient.

    Args:
        model: a Hugging Face causal LM (attention ``sdpa`` or ``eager``), on the inputs' device.
        prompt_ids, prompt_mask: [B, P], left-padded.
        response_ids, response_mask: [B, T], right-padded.
        boundaries: [B, Kmax+1], c_0 = 0 < ... < c_K = T_b, then -1 (spec §2).
        num_steps: [B] K_b.
        answer_ids, answer_mask: [B, A], right-padded (:func:`render_answer_ids`).
        micro_batch_size: responses per forward pass.
        temperature: log-probs are those of ``logits / temperature`` (verl's old-log-prob convention).
    Returns:
        L: [B, Kmax+1] float32; 0 beyond K_b.
    Raises:
        ValueError: see :func:`check_attribution_batch`; also a token id outside the model's vocabulary, an attention
        implementation that takes no 4D mask, a bad micro-batch size or temperature.
    """
    lengths = check_attribution_batch(
        prompt_ids, prompt_mask, response_ids, response_mask, boundaries, num_steps, answer_ids, answer_mask
    )
    _check_scoring_args(model, micro_batch_size, temperature, prompt_ids, response_ids, answer_ids)
    implementation = _attention_implementation(model)
    device = prompt_ids.device
    batch_size = prompt_ids.shape[0]
    scores = torch.zeros(batch_size, boundaries.shape[1], dtype=torch.float32, device=device)
    # Similar lengths share a micro-batch, so trimming to the longest row wastes little.
    packed_len = lengths.prompt + lengths.response + (lengths.num_steps + 1) * lengths.answer
    order = torch.argsort(packed_len, descending=True, stable=True)
    for start in range(0, batch_size, micro_batch_size):
        rows = order[start : start + micro_batch_size]
        packed = _pack(
            prompt_ids[rows],
            response_ids[rows],
            boundaries[rows],
            answer_ids[rows],
            _select_rows(lengths, rows),
            pad_token_id=0,
        )
        if implementation == "eager":
            # eager attention adds the mask to the scores; sdpa takes the boolean mask directly.
            dtype = model.dtype
            mask = torch.zeros(packed.attention_mask.shape, dtype=dtype, device=device)
            mask = mask.masked_fill(~packed.attention_mask, torch.finfo(dtype).min)
        else:
            mask = packed.attention_mask
        logits = model(
            input_ids=packed.input_ids,
            attention_mask=mask,
            position_ids=packed.position_ids,
            logits_to_keep=packed.logit_columns,
            use_cache=False,
        ).logits  # [n, U, V]
        row, copy, offset = packed.target_mask.nonzero(as_tuple=True)
        kept = torch.searchsorted(packed.logit_columns, packed.predictor_columns[row, copy, offset])
        logprobs = _answer_logprobs(logits[row, kept], packed.target_ids[row, offset], temperature)
        micro_scores = torch.zeros(rows.numel(), packed.target_mask.shape[1], dtype=torch.float32, device=device)
        micro_scores.index_put_((row, copy), logprobs, accumulate=True)
        scores[rows, : micro_scores.shape[1]] = micro_scores
    return scores


@torch.no_grad()
def score_answer_loglik_naive(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    boundaries: torch.Tensor,
    num_steps: torch.Tensor,
    answer_ids: torch.Tensor,
    answer_mask: torch.Tensor,
    micro_batch_size: int,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Spec §3, the reference: K_b + 1 separate plain forward passes ``[q, o_{<c_i}, Y]`` per response.

    The sequences are right-padded in micro-batches of ``micro_batch_size`` and run with the model's own causal mask
    (a 2D padding mask) and default position ids. Same arguments, returns and errors as :func:`score_answer_loglik`
    (attention implementation: any). No gradient.

    Returns:
        L: [B, Kmax+1] float32; 0 beyond K_b.
    """
    lengths = check_attribution_batch(
        prompt_ids, prompt_mask, response_ids, response_mask, boundaries, num_steps, answer_ids, answer_mask
    )
    _check_scoring_args(model, micro_batch_size, temperature, prompt_ids, response_ids, answer_ids)
    device = prompt_ids.device
    batch_size, prompt_width = prompt_ids.shape
    scores = torch.zeros(batch_size, boundaries.shape[1], dtype=torch.float32, device=device)
    # (row, i, sequence [q, o_<c_i, Y], length of its context [q, o_<c_i]) for every response and every i = 0..K.
    jobs: list[tuple[int, int, torch.Tensor, int]] = []
    for b in range(batch_size):
        prompt = prompt_ids[b, prompt_width - int(lengths.prompt[b]) :]
        answer = answer_ids[b, : int(lengths.answer[b])]
        for i in range(int(lengths.num_steps[b]) + 1):
            context = torch.cat([prompt, response_ids[b, : int(boundaries[b, i])]])
            jobs.append((b, i, torch.cat([context, answer]).long(), context.numel()))
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
            for n, (_, _, sequence, context_len) in enumerate(chunk)
            for j in range(sequence.numel() - context_len)
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


def step_contributions(scores: torch.Tensor, num_steps: torch.Tensor) -> torch.Tensor:
    """Spec §3: C_i = L_{i+1} - L_i for the steps i = 0..K_b - 1 of every response; sum_i C_i = L_K - L_0.

    Args:
        scores: L [B, Kmax+1] float (from :func:`score_answer_loglik`).
        num_steps: [B] integer K_b, 1 <= K_b <= Kmax.
    Returns:
        C: [B, Kmax] (dtype of ``scores``); 0 beyond K_b.
    Raises:
        ValueError: mismatched shapes, a step count out of range, or a non-finite L_i with i <= K_b (naming rows).
    """
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must have shape [B, Kmax+1] with Kmax >= 1, got {tuple(scores.shape)}")
    if num_steps.shape != scores.shape[:1]:
        raise ValueError(f"num_steps must have shape [B] = {tuple(scores.shape[:1])}, got {tuple(num_steps.shape)}")
    if not _is_integer(num_steps):
        raise ValueError(f"num_steps must be an integer tensor, got {num_steps.dtype}")
    max_steps = scores.shape[1] - 1
    steps = num_steps.long()
    _fail_rows((steps < 1) | (steps > max_steps), f"num_steps must lie in [1, {max_steps}]")
    active = torch.arange(max_steps + 1, device=scores.device)[None, :] <= steps[:, None]
    _fail_rows((active & ~torch.isfinite(scores)).any(dim=1), "L is NaN or infinite")
    in_step = active[:, 1:]
    return torch.where(in_step, scores[:, 1:] - scores[:, :-1], torch.zeros((), dtype=scores.dtype))
