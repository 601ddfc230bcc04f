"""verl's TransferQueue batch as acpo_core's :class:`acpo_core.step.ACPOBatch`: jagged fields to padded tensors.

verl 0.9.1 stores per-sample fields jagged (no padding); acpo_core works on prompts left-padded [B, P] and responses
right-padded [B, T]. The padding helpers here are the recipe's only copy (the curriculum uses them too).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict
from verl.utils import tensordict_utils as tu

from acpo_core.attribution import render_answer_batch
from acpo_core.config import AttributionConfig
from acpo_core.step import ACPOBatch
from recipe.acpo.reward.extract import extract_answer

__all__ = ["ACPO_TQ_FIELDS", "left_padded", "nested_lengths", "read_acpo_batch", "right_padded"]

# What the ACPO advantage step reads back from the TransferQueue.
ACPO_TQ_FIELDS = ("uid", "prompts", "responses", "response_mask", "entropy", "advantages", "rm_scores", "reward_model")


def nested_lengths(nested: torch.Tensor) -> torch.Tensor:
    return nested.offsets().diff().long()


def right_padded(nested: torch.Tensor, padding: float = 0.0) -> torch.Tensor:
    """A jagged [B, *] TransferQueue field as a right-padded dense [B, max_len] one (a dense one is returned as is)."""
    if not nested.is_nested:
        return nested
    lengths = nested_lengths(nested)
    width = int(lengths.max()) if lengths.numel() else 0
    return nested.to_padded_tensor(padding=padding, output_size=(lengths.numel(), width))


def left_padded(nested: torch.Tensor, padding: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A jagged [B, *] tensor as a left-padded dense [B, max_len] one (verl's prompt layout) and its 0/1 mask."""
    right = right_padded(nested, padding)
    lengths = nested_lengths(nested)
    width = right.shape[1]
    column = torch.arange(width)[None, :]
    shift = (width - lengths)[:, None]
    valid = column >= shift
    left = torch.where(valid, right.gather(1, (column - shift).clamp(min=0)), torch.full_like(right, padding))
    return left, valid.long()


def _ground_truth_text(reward_model: Any, uid: str) -> str:
    if not isinstance(reward_model, Mapping) or "ground_truth" not in reward_model:
        raise ValueError(f"prompt uid={uid}: reward_model has no ground_truth ({reward_model!r}); ACPO needs it (§3)")
    truth = reward_model["ground_truth"]
    # Integer or float answers (e.g. AMC's 27.0) are common in math data; anything else is malformed.
    if isinstance(truth, int | float | np.integer | np.floating) and not isinstance(truth, bool):
        truth = str(truth)
    if not isinstance(truth, str) or not truth.strip():
        raise ValueError(f"prompt uid={uid}: ground_truth {truth!r} is not a non-empty string")
    return truth


def read_acpo_batch(
    data: TensorDict, tags: Sequence[Mapping[str, Any]], tokenizer: Any, attribution: AttributionConfig
) -> ACPOBatch:
    """The :class:`acpo_core.step.ACPOBatch` of ``tq.kv_batch_get(select_fields=ACPO_TQ_FIELDS)`` and the batch tags.

    Prompts are left-padded, responses right-padded (verl's layout) with the tokenizer's pad id; A_base is verl's
    advantage of the row's first token; the outcome score is the sum of ``rm_scores``; the answers Y are rendered by
    ``attribution.answer_template`` (§3) once per prompt, with the tokens L_i sums marked by
    ``attribution.score_tokens``. With ``attribution.target=contrast`` each response's own answer Y' (§7's extraction
    from the decoded response) is rendered the same way. Padding rows (tag ``is_padding``) get an empty answer.

    Raises:
        ValueError: a response mask with holes (multi-turn), a missing or empty ground truth (naming the uid).
    """
    uids = [str(u) for u in tu.get(data, "uid")]
    batch_size = len(uids)
    if len(tags) != batch_size:
        raise ValueError(f"{len(tags)} tags for {batch_size} rows")
    is_padding = torch.tensor([bool(tag.get("is_padding", False)) for tag in tags], dtype=torch.bool)
    response_mask = right_padded(data["response_mask"], 0).long()
    lengths = response_mask.sum(dim=1)
    prefix = torch.arange(response_mask.shape[1])[None, :] < lengths[:, None]
    not_prefix = (response_mask.bool() != prefix).any(dim=1) & ~is_padding
    if not_prefix.any():
        bad = [uids[i] for i in not_prefix.nonzero().flatten().tolist()[:5]]
        raise ValueError(
            f"ACPO segments single-turn responses; the response mask of uid(s) {bad} has holes (multi-turn or "
            "tool tokens), which steps and attribution do not define"
        )
    advantages = right_padded(data["advantages"], 0.0).float()
    first = torch.zeros(batch_size, 1, dtype=torch.long)
    base = torch.where(lengths > 0, advantages.gather(1, first).squeeze(1), torch.zeros(batch_size))
    reward_models = tu.get(data, "reward_model")
    real = (~is_padding).nonzero().flatten().tolist()
    ground_truths: list[str | None] = [None] * batch_size
    for i in real:
        ground_truths[i] = _ground_truth_text(reward_models[i], uids[i])
    template, score_tokens = attribution.answer_template, attribution.score_tokens
    answers = render_answer_batch(tokenizer, ground_truths, uids, template, score_tokens)
    response_ids = right_padded(data["responses"], 0).long()
    own_answers = None
    if attribution.target == "contrast":
        own_texts: list[str | None] = [None] * batch_size
        for i in real:
            text = tokenizer.decode(response_ids[i, : int(lengths[i])].tolist(), skip_special_tokens=True)
            own = extract_answer(text)
            own_texts[i] = own if own and own.strip() else None
        own_answers = render_answer_batch(tokenizer, own_texts, uids, template, score_tokens)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    prompt_ids, prompt_mask = left_padded(data["prompts"], pad_token_id)
    return ACPOBatch(
        prompt_ids=prompt_ids.long(),
        prompt_mask=prompt_mask,
        response_ids=right_padded(data["responses"], pad_token_id).long(),
        response_mask=response_mask,
        entropy=right_padded(data["entropy"], 0.0).float(),
        base_advantages=base,
        scores=right_padded(data["rm_scores"], 0.0).float().sum(dim=1),
        is_padding=is_padding,
        uids=uids,
        answer_ids=answers.ids,
        answer_mask=answers.mask,
        ground_truths=ground_truths,
        answer_scored=answers.scored,
        own_answers=own_answers,
    )
