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
    §2 output).
    """

    prompt_ids: torch.Tensor  # [B, P] long
    prompt_mask: torch.Tensor  # [B, P] 0/1
    response_ids: torch.Tensor  # [B, T] long
    response_mask: torch.Tensor  # [B, T] 0/1
    boundaries: torch.Tensor  # [B, Kmax+1] long
    num_steps: torch.Tensor  # [B] long
    answer_ids: torch.Tensor  # [B, A] long
    answer_mask: torch.Tensor  # [B, A] 0/1

    def __len__(self) -> int:
        return int(self.prompt_ids.shape[0])

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def select(self, rows: torch.Tensor) -> AttributionBatch:
        """The rows ``rows`` ([n] long) of every tensor."""
        return AttributionBatch(**{name: tensor[rows] for name, tensor in self.as_dict().items()})

    def to(self, device: torch.device | str) -> AttributionBatch:
        return AttributionBatch(**{name: tensor.to(device) for name, tensor in self.as_dict().items()})


def answer_batch(
    tokenizer: Any, ground_truths: Sequence[str], uids: Sequence[str], template: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """§3: Y of every row, right-padded ([B, A] ids and 0/1 mask), tokenised once per prompt (uid).

    Raises:
        ValueError: a ground truth that renders to nothing (see :func:`render_answer_ids`), naming the prompt uid.
    """
    cache: dict[str, list[int]] = {}
    rows: list[list[int]] = []
    for uid, truth in zip(uids, ground_truths):
        if uid not in cache:
            try:
                cache[uid] = render_answer_ids(tokenizer, truth, template)
            except ValueError as err:
                raise ValueError(f"prompt uid={uid}: {err}") from err
        rows.append(cache[uid])
    width = max((len(r) for r in rows), default=1)
    answer_ids = torch.zeros(len(rows), width, dtype=torch.long)
    answer_mask = torch.zeros(len(rows), width, dtype=torch.long)
    for n, ids in enumerate(rows):
        answer_ids[n, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        answer_mask[n, : len(ids)] = 1
    return answer_ids, answer_mask


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
    for ids, mask in (("prompt_ids", "prompt_mask"), ("response_ids", "response_mask"), ("answer_ids", "answer_mask")):
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


def naive_sequences(batch: AttributionBatch, lengths: AttributionLengths) -> list[tuple[int, int, torch.Tensor, int]]:
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
