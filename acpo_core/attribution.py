"""§3: step attribution, the policy as its own judge of how much each step moves it toward the answer.

For a response o split into K steps by boundaries c_0 = 0 < c_1 < ... < c_K = T (§2),

    L_i = sum over y in Y of log pi_old(y | q, o_{<c_i}, Y_{<y}),  i = 0..K,
    C_i = L_{i+1} - L_i,                                        i = 0..K-1,

where Y is the ground-truth answer rendered by ``acpo.attribution.answer_template``. The C_i telescope:
sum_i C_i = L_K - L_0.

Two ways to compute L, equal to 1e-4 in fp32 (both in :mod:`acpo_core.scoring`): the packed production path, one
sequence ``[q, o_1..o_T, Y^(0), ..., Y^(K)]`` per response (layout in :mod:`acpo_core.packing`), and the naive
reference, K+1 plain sequences ``[q, o_{<c_i}, Y]`` per response (:func:`naive_sequences`).

This module owns the inputs every scorer takes (:class:`AttributionBatch`, verl's layout: prompts left-padded,
responses and answers right-padded), their checks, their token counts and the contributions C_i.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from acpo_core.checks import fail_rows, is_integer, mask_lengths


def render_answer_ids(tokenizer: Any, ground_truth: str, template: str) -> list[int]:
    """§3: token ids of Y, the ground truth rendered by ``answer_template``, without special tokens.

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
class AttributionBatch:
    """§3 inputs for B responses: what every scorer takes.

    Prompts left-padded, responses and answers right-padded; ``boundaries`` [B, Kmax+1] with -1 after c_K (the
    §2 output); ``answer_scored`` marks the answer tokens whose log-probabilities are summed (default: all).
    """

    prompt_ids: torch.Tensor  # [B, P] long
    prompt_mask: torch.Tensor  # [B, P] 0/1
    response_ids: torch.Tensor  # [B, T] long
    response_mask: torch.Tensor  # [B, T] 0/1
    boundaries: torch.Tensor  # [B, Kmax+1] long
    num_steps: torch.Tensor  # [B] long
    answer_ids: torch.Tensor  # [B, A] long
    answer_mask: torch.Tensor  # [B, A] 0/1
    # [B, A] 0/1 within answer_mask: the answer tokens L_i sums over (§3.2 value-only scoring); None: all of them.
    answer_scored: torch.Tensor = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.answer_scored is None:
            object.__setattr__(self, "answer_scored", self.answer_mask.clone())

    def __len__(self) -> int:
        return int(self.prompt_ids.shape[0])

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def select(self, rows: torch.Tensor) -> AttributionBatch:
        """The rows ``rows`` ([n] long) of every tensor."""
        return AttributionBatch(**{name: tensor[rows] for name, tensor in self.as_dict().items()})

    def to(self, device: torch.device | str) -> AttributionBatch:
        return AttributionBatch(**{name: tensor.to(device) for name, tensor in self.as_dict().items()})


def answer_value_span(tokenizer: Any, answer: str, template: str) -> tuple[int, int]:
    """§3.2 (value-only scoring): the token span [start, end) of the answer value in Y = ``template`` rendered.

    The template's fixed text before ``{answer}`` is conditioned on, not scored: ``start`` is the length of the
    longest common prefix of Y's ids and the ids of that text alone (a token that merges the fixed text with the value,
    such as ``" 14"`` after ``"Answer:"``, is scored). ``end`` is where the ids of the text up to the value's end stop
    being a prefix of Y's ids (the value and the fixed text after it are then scored together), else their length.

    Args:
        tokenizer: a Hugging Face tokenizer.
        answer: the answer value (stripped).
        template: ``acpo.attribution.answer_template``.
    Returns:
        ``(start, end)`` with ``0 <= start < end <= len(Y)``: at least one token is scored.
    """
    head, _, _ = template.partition("{answer}")
    full = list(tokenizer(template.format(answer=answer), add_special_tokens=False)["input_ids"])
    fixed = list(tokenizer(head.format(), add_special_tokens=False)["input_ids"]) if head else []
    upto_value = list(tokenizer(head.format() + answer, add_special_tokens=False)["input_ids"])
    start = 0
    while start < min(len(full), len(fixed)) and full[start] == fixed[start]:
        start += 1
    start = min(start, len(full) - 1)
    end = len(upto_value) if full[: len(upto_value)] == upto_value else len(full)
    return start, max(end, start + 1)


@dataclass(frozen=True)
class AnswerBatch:
    """Y of every row, right-padded: ids and validity [B, A], and which tokens L_i sums over (§3, §3.2).

    A row with no answer (a padding row, or a response without an extracted answer for the contrast target) has an
    all-zero mask.
    """

    ids: torch.Tensor  # [B, A] long
    mask: torch.Tensor  # [B, A] long 0/1: the tokens of Y
    scored: torch.Tensor  # [B, A] long 0/1, within mask: the tokens whose log-probabilities L_i sums

    def select(self, rows: torch.Tensor) -> AnswerBatch:
        return AnswerBatch(ids=self.ids[rows], mask=self.mask[rows], scored=self.scored[rows])

    @property
    def present(self) -> torch.Tensor:
        """[B] bool: rows that have an answer."""
        return self.mask.sum(dim=1) > 0


def render_answer_batch(
    tokenizer: Any,
    answers: Sequence[str | None],
    keys: Sequence[str],
    template: str,
    score_tokens: str = "all",
) -> AnswerBatch:
    """§3: Y of every row rendered by ``template`` and tokenised once per distinct (key, answer).

    Args:
        tokenizer: a Hugging Face tokenizer.
        answers: the answer of each row; None leaves the row empty (no answer).
        keys: what names a row in an error, e.g. the prompt uid.
        template: ``acpo.attribution.answer_template``.
        score_tokens: ``all`` scores every token of Y; ``value`` only the value's tokens (:func:`answer_value_span`).
    Raises:
        ValueError: an answer that renders to nothing (see :func:`render_answer_ids`), naming the row's key.
    """
    if score_tokens not in ("all", "value"):
        raise ValueError(f"score_tokens must be 'all' or 'value', got {score_tokens!r}")
    cache: dict[tuple[str, str], tuple[list[int], int, int]] = {}
    rows: list[tuple[list[int], int, int]] = []
    for key, answer in zip(keys, answers):
        if answer is None:
            rows.append(([], 0, 0))
            continue
        if (key, answer) not in cache:
            try:
                ids = render_answer_ids(tokenizer, answer, template)
            except ValueError as err:
                raise ValueError(f"prompt uid={key}: {err}") from err
            span = answer_value_span(tokenizer, answer.strip(), template) if score_tokens == "value" else (0, len(ids))
            cache[(key, answer)] = (ids, *span)
        rows.append(cache[(key, answer)])
    width = max((len(ids) for ids, _, _ in rows), default=1) or 1
    answer_ids = torch.zeros(len(rows), width, dtype=torch.long)
    answer_mask = torch.zeros(len(rows), width, dtype=torch.long)
    scored = torch.zeros(len(rows), width, dtype=torch.long)
    for n, (ids, start, end) in enumerate(rows):
        answer_ids[n, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        answer_mask[n, : len(ids)] = 1
        scored[n, start:end] = 1
    return AnswerBatch(ids=answer_ids, mask=answer_mask, scored=scored)


def answer_batch(
    tokenizer: Any, ground_truths: Sequence[str], uids: Sequence[str], template: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """§3: Y of every row, right-padded ([B, A] ids and 0/1 mask), tokenised once per prompt (uid).

    Raises:
        ValueError: a ground truth that renders to nothing (see :func:`render_answer_ids`), naming the prompt uid.
    """
    answers = render_answer_batch(tokenizer, ground_truths, uids, template)
    return answers.ids, answers.mask


@dataclass(frozen=True)
class AttributionLengths:
    """Valid lengths of a checked batch of B rows (§3 notation)."""

    prompt: torch.Tensor  # [B] long: |q|
    response: torch.Tensor  # [B] long: T
    answer: torch.Tensor  # [B] long: |Y|
    num_steps: torch.Tensor  # [B] long: K

    def select(self, rows: torch.Tensor) -> AttributionLengths:
        return AttributionLengths(
            prompt=self.prompt[rows],
            response=self.response[rows],
            answer=self.answer[rows],
            num_steps=self.num_steps[rows],
        )


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


def check_attribution_batch(batch: AttributionBatch) -> AttributionLengths:
    """Validate a batch for §3 scoring and return its valid lengths.

    Fields of ``batch`` (:class:`AttributionBatch`):
        prompt_ids, prompt_mask: [B, P], left-padded (ones form a suffix of each mask row); |q| >= 1.
        response_ids, response_mask: [B, T], right-padded (ones form a prefix).
        boundaries: [B, Kmax+1] integer, c_0 = 0 < c_1 < ... < c_K = T_b, then -1 (§2 output). An empty response
            is the single empty step [0, 0].
        num_steps: [B] integer K_b, 1 <= K_b <= Kmax.
        answer_ids, answer_mask: [B, A], right-padded, |Y| >= 1.
        answer_scored: [B, A] 0/1 within answer_mask, at least one token a row.
    Returns:
        :class:`AttributionLengths`.
    Raises:
        ValueError: mismatched shapes or devices, non-integer ids, a malformed mask, an empty prompt or answer,
        a step count out of range, boundaries outside the response, not starting at 0, not ending at T_b,
        not increasing, or not -1 after c_K; row-specific errors name the rows.
    """
    named = batch.as_dict()
    num_steps = named.pop("num_steps")
    prompt_ids, prompt_mask, response_ids = batch.prompt_ids, batch.prompt_mask, batch.response_ids
    response_mask, boundaries, answer_ids, answer_mask = (
        batch.response_mask,
        batch.boundaries,
        batch.answer_ids,
        batch.answer_mask,
    )
    for name, tensor in named.items():
        if tensor.dim() != 2:
            raise ValueError(f"{name} must have shape [B, width], got {tuple(tensor.shape)}")
    if num_steps.dim() != 1:
        raise ValueError(f"num_steps must have shape [B], got {tuple(num_steps.shape)}")
    batch_size = prompt_ids.shape[0]
    shapes = ", ".join(f"{name} {tuple(t.shape)}" for name, t in [*named.items(), ("num_steps", num_steps)])
    if any(t.shape[0] != batch_size for t in [*named.values(), num_steps]):
        raise ValueError(f"batch sizes differ: {shapes}")
    for ids, mask in (
        ("prompt_ids", "prompt_mask"),
        ("response_ids", "response_mask"),
        ("answer_ids", "answer_mask"),
        ("answer_scored", "answer_mask"),
    ):
        if named[ids].shape != named[mask].shape:
            raise ValueError(f"{ids} and {mask} must have the same shape: {shapes}")
    if boundaries.shape[1] < 2:
        raise ValueError(f"boundaries must have at least 2 columns (c_0 and c_1), got {tuple(boundaries.shape)}")
    for name in ("prompt_ids", "response_ids", "answer_ids", "boundaries"):
        if not is_integer(named[name]):
            raise ValueError(f"{name} must be an integer tensor, got {named[name].dtype}")
    if not is_integer(num_steps):
        raise ValueError(f"num_steps must be an integer tensor, got {num_steps.dtype}")
    device = prompt_ids.device
    if any(t.device != device for t in [*named.values(), num_steps]):
        raise ValueError(f"all inputs must be on one device: {', '.join(f'{n} {t.device}' for n, t in named.items())}")

    prompt_len = mask_lengths(prompt_mask, "prompt_mask", "left")
    response_len = mask_lengths(response_mask, "response_mask", "right")
    answer_len = mask_lengths(answer_mask, "answer_mask", "right")
    fail_rows(prompt_len == 0, "empty prompt (the first answer token needs a context to be predicted from)")
    fail_rows(answer_len == 0, "empty answer")
    scored = batch.answer_scored
    fail_rows(((scored != 0) & (scored != 1)).any(dim=1), "answer_scored must hold only 0 and 1")
    fail_rows(((scored != 0) & (answer_mask == 0)).any(dim=1), "answer_scored marks a token outside the answer")
    fail_rows((scored != 0).sum(dim=1) == 0, "answer_scored marks no answer token")
    for name, ids, valid in (
        ("prompt_ids", prompt_ids, prompt_mask != 0),
        ("response_ids", response_ids, response_mask != 0),
        ("answer_ids", answer_ids, answer_mask != 0),
    ):
        fail_rows((valid & (ids < 0)).any(dim=1), f"negative token id in {name}")

    steps = num_steps.long()
    max_steps = boundaries.shape[1] - 1
    fail_rows((steps < 1) | (steps > max_steps), f"num_steps must lie in [1, {max_steps}]")
    cuts = boundaries.long()
    index = torch.arange(max_steps + 1, device=device)
    active = index[None, :] <= steps[:, None]
    fail_rows((active & ((cuts < 0) | (cuts > response_len[:, None]))).any(dim=1), "boundaries outside the response")
    fail_rows(cuts[:, 0] != 0, "boundaries must start with c_0 = 0")
    last = cuts.gather(1, steps[:, None]).squeeze(1)
    fail_rows(last != response_len, "the last boundary c_K must equal the response length T")
    fail_rows((~active & (cuts != -1)).any(dim=1), "boundaries after c_K must be -1")
    rising = cuts[:, 1:] > cuts[:, :-1]
    within = active[:, 1:]
    empty_response_single_step = (response_len == 0) & (steps == 1)
    fail_rows(
        (within & ~rising).any(dim=1) & ~empty_response_single_step,
        "boundaries must increase strictly (every step holds at least one token)",
    )
    return AttributionLengths(prompt=prompt_len, response=response_len, answer=answer_len, num_steps=steps)


@dataclass(frozen=True)
class ModelLimits:
    """What the scoring model can take: checked on the driver before any work is dispatched."""

    vocab_size: int | None = None  # rows of the input embedding: token ids must be below it
    max_positions: int | None = None  # max_position_embeddings: position ids must be below it


def check_vocabulary(batch: AttributionBatch, vocab_size: int | None) -> None:
    """Raise naming the rows whose prompt, response or answer holds a token id >= ``vocab_size`` (None: no check)."""
    if vocab_size is None:
        return
    for name in ("prompt_ids", "response_ids", "answer_ids"):
        tensor = getattr(batch, name)
        fail_rows(
            (tensor >= vocab_size).any(dim=1), f"{name} holds a token id >= the model's vocabulary ({vocab_size})"
        )


def position_overflow(lengths: AttributionLengths, max_positions: int | None) -> torch.Tensor:
    """[B] bool: responses whose answer copies would run past the model's trained positions.

    Copy Y^(i) takes positions |q| + c_i .. |q| + c_i + |Y| - 1, the last copy (c_K = T) up to |q| + T + |Y| - 1,
    which must stay below ``max_positions`` (Qwen2.5-Math-7B: 4096, which a 1024-token prompt and a 3072-token
    response reach). Such responses are left out of attribution: their L is 0, so C_i = 0 and every step keeps the
    outcome advantage A_base (§4 with s_i = 0); ``acpo/attr_position_skipped_frac`` counts them.
    """
    if max_positions is None:
        return torch.zeros_like(lengths.prompt, dtype=torch.bool)
    return lengths.prompt + lengths.response + lengths.answer > max_positions


def packed_token_count(batch: AttributionBatch) -> AttributionTokenCounts:
    """§3 cost: tokens scored by one plain forward over prompt + response, by the packed path and by the naive one.

    Uses the masks, ``boundaries`` and ``num_steps`` of ``batch``.
    Returns:
        :class:`AttributionTokenCounts`: padding excluded; ``packed_over_plain`` is ``acpo/attr_tokens_ratio``.
    """
    prompt_mask, response_mask, answer_mask = batch.prompt_mask, batch.response_mask, batch.answer_mask
    boundaries, num_steps = batch.boundaries, batch.num_steps
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


# (row b, step index i, sequence, context length): one forward's worth of §3 scoring.
ScoringJob = tuple[int, int, torch.Tensor, int]


def naive_sequences(batch: AttributionBatch, lengths: AttributionLengths) -> list[ScoringJob]:
    """§3 reference construction: the K_b + 1 sequences ``[q, o_{<c_i}, Y]`` of every checked response.

    Returns:
        ``(row b, step index i, sequence [|q| + c_i + |Y|] long, context length |q| + c_i)`` for every b and
        i = 0..K_b, in row-major order.
    """
    prompt_width = batch.prompt_ids.shape[1]
    sequences: list[tuple[int, int, torch.Tensor, int]] = []
    for b in range(len(batch)):
        prompt = batch.prompt_ids[b, prompt_width - int(lengths.prompt[b]) :].long()
        answer = batch.answer_ids[b, : int(lengths.answer[b])].long()
        for i in range(int(lengths.num_steps[b]) + 1):
            context = torch.cat([prompt, batch.response_ids[b, : int(batch.boundaries[b, i])].long()])
            sequences.append((b, i, torch.cat([context, answer]), context.numel()))
    return sequences


def step_contributions(scores: torch.Tensor, num_steps: torch.Tensor) -> torch.Tensor:
    """§3: C_i = L_{i+1} - L_i for the steps i = 0..K_b - 1 of every response; sum_i C_i = L_K - L_0.

    Args:
        scores: L [B, Kmax+1] float (from :mod:`acpo_core.scoring`).
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
    if not is_integer(num_steps):
        raise ValueError(f"num_steps must be an integer tensor, got {num_steps.dtype}")
    max_steps = scores.shape[1] - 1
    steps = num_steps.long()
    fail_rows((steps < 1) | (steps > max_steps), f"num_steps must lie in [1, {max_steps}]")
    active = torch.arange(max_steps + 1, device=scores.device)[None, :] <= steps[:, None]
    fail_rows((active & ~torch.isfinite(scores)).any(dim=1), "L is NaN or infinite")
    in_step = active[:, 1:]
    return torch.where(in_step, scores[:, 1:] - scores[:, :-1], torch.zeros((), dtype=scores.dtype))


def contrast_scores(truth_loglik: torch.Tensor, own_loglik: torch.Tensor, use_own: torch.Tensor) -> torch.Tensor:
    """§3.2 (contrast target): D_i = L_i(Y) - L_i(Y') on the rows ``use_own``, L_i(Y) elsewhere.

    Y' is the response's own extracted answer. In a wrong response, whatever a prefix does to the likelihood of *any*
    answer (the answer format, the position in the response) moves L(Y) and L(Y') alike and cancels in D, so
    C_i = D_{i+1} - D_i is the step's shift of belief from its own answer towards the right one.

    Args:
        truth_loglik: L(Y) [B, Kmax+1].
        own_loglik: L(Y') [B, Kmax+1] (ignored where ``use_own`` is False).
        use_own: [B] bool.
    Returns:
        [B, Kmax+1], the dtype of ``truth_loglik``.
    """
    if truth_loglik.shape != own_loglik.shape or use_own.shape != truth_loglik.shape[:1]:
        raise ValueError(
            f"L(Y) {tuple(truth_loglik.shape)}, L(Y') {tuple(own_loglik.shape)} and use_own {tuple(use_own.shape)} "
            "must be [B, Kmax+1], [B, Kmax+1] and [B]"
        )
    return torch.where(use_own.unsqueeze(1), truth_loglik - own_loglik.to(truth_loglik.dtype), truth_loglik)


def oracle_contributions(
    step_index: torch.Tensor, num_steps: torch.Tensor, first_wrong_token: torch.Tensor, kmax: int
) -> torch.Tensor:
    """§3.2 (oracle judge): C_i = -1 on the step holding the first wrong token, +1 on every other step.

    The labels come from outside the policy (the testbed's step checker), so this is the ceiling any attribution can
    reach on the same §4: what §4 does with credit that finds the slip every time.

    Args:
        step_index: [B, T] step of each token, -1 on padding (§2).
        num_steps: [B] integer K >= 1.
        first_wrong_token: [B] long, the index of the first token of the first wrong step; -1: none (a right response,
            or a wrong one whose slip the checker cannot place), every step then gets +1.
        kmax: step slots.
    Returns:
        C [B, Kmax] float32, 0 beyond K.
    Raises:
        ValueError: a first wrong token outside the response (naming rows).
    """
    valid = torch.arange(kmax, device=num_steps.device)[None, :] < num_steps[:, None]
    labelled = first_wrong_token >= 0
    in_response = first_wrong_token < (step_index >= 0).sum(dim=1)
    fail_rows(labelled & ~in_response, "first_wrong_token lies beyond the response")
    slip_step = step_index.gather(1, first_wrong_token.clamp(min=0).unsqueeze(1)).squeeze(1)
    is_slip = labelled.unsqueeze(1) & (torch.arange(kmax, device=num_steps.device)[None, :] == slip_step[:, None])
    contributions = torch.where(is_slip, -1.0, 1.0)
    return torch.where(valid, contributions, torch.zeros_like(contributions))


def drop_final_special(
    batch: AttributionBatch, is_special: torch.Tensor, vocab_size: int
) -> tuple[AttributionBatch, torch.Tensor]:
    """§3.2 (``final_eos: drop``): score L_K after the response without its trailing special (end-of-sequence) token.

    c_K = T puts the end-of-sequence token in the context of the last answer copy, a context the policy never goes
    on from. A response whose last valid token is special loses it from the scored response (its mask) and c_K becomes
    T - 1. Responses whose last step is that token alone (c_{K-1} = T - 1 with K > 1) keep it: dropping it would
    leave the step empty; the response of a single end-of-sequence token becomes the empty response [0, 0].

    Args:
        batch: a checked batch (:func:`check_attribution_batch`).
        is_special: [V] bool per token id of the tokenizer (:class:`acpo_core.vocab_tables.VocabTables`).
        vocab_size: ids at or beyond it have no tokenizer entry and are not special.
    Returns:
        The batch to score and [B] bool, the rows whose last token was dropped.
    """
    length = (batch.response_mask != 0).sum(dim=1)
    last = batch.response_ids.gather(1, (length - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    special = (last < vocab_size) & is_special.to(last.device)[last.clamp(min=0, max=vocab_size - 1)]
    steps = batch.num_steps.long()
    before_last = batch.boundaries.gather(1, (steps - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    dropped = (length > 0) & special & ((steps == 1) | (before_last < length - 1))
    positions = torch.arange(batch.response_mask.shape[1], device=length.device)[None, :]
    response_mask = torch.where(
        dropped.unsqueeze(1) & (positions == (length - 1).unsqueeze(1)),
        torch.zeros_like(batch.response_mask),
        batch.response_mask,
    )
    boundaries = batch.boundaries.clone()
    last_cut = boundaries.gather(1, steps.unsqueeze(1)) - dropped.long().unsqueeze(1)
    boundaries.scatter_(1, steps.unsqueeze(1), last_cut)
    return dataclasses.replace(batch, response_mask=response_mask, boundaries=boundaries), dropped
