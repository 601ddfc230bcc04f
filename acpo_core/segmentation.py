"""§2: split every response into reasoning steps where the policy was uncertain and the text allows it.

A token is an entropy peak when its entropy H_t is at least the ``1 - entropy_top_ratio`` quantile (over the response
or over the batch). A peak within ``align_window`` tokens of the start of its sentence proposes a step boundary at that
sentence start; a peak further in proposes the start of its word when that word is a transition marker; any other
peak is dropped. A candidate boundary scores the largest entropy of the peaks mapped to it, and candidates are kept
greedily by descending score while they stay ``min_step_tokens`` away from every kept boundary and from both ends of
the response, until the response has ``max_steps`` steps.

Token text is never decoded here per call: :class:`acpo_core.vocab_tables.VocabTables` turns every vocabulary entry
into a few bits once per
tokenizer, and :func:`segment_steps` gathers those bits for the padded batch and works with tensor operations over
[B, T]. The only Python loops run over a response's candidate boundaries (the greedy selection) and over the tokens of
the few candidate marker words (a scan vectorised across all of them at once).

Readings of the spec's prose that are this project's own (ours, for the README):

- *Words* are white-space separated; a special token also ends a word and is neither a word nor a sentence end.
  A word is a marker when, lower-cased and stripped of leading and trailing punctuation, it equals a marker
  (``"So,"`` and ``"(Wait"`` are markers, ``"Let's"`` and ``"s.o"`` are not).
- ``$...$`` math: each maximal run of ``$`` not preceded by a backslash inside its token is one delimiter, so display
  math ``$$...$$`` counts like ``$...$`` and an escaped ``\\$`` (money) is not a delimiter. Text is inside math when
  an odd number of delimiters precede it. A period inside a number needs no rule of its own: the token after the
  period of ``3.5`` never begins with white space.
- Ties in candidate score are broken by position (the earlier candidate first), so results never depend on padding
  or on the batch a response is in (``quantile_scope: response``). Entropies are compared in float32.
- A kept boundary counts as a marker boundary (``acpo/boundary_marker_frac``) when the highest peak mapped to it came
  through the marker rule (a tie goes to the sentence rule).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from acpo_core.checks import fail_rows, is_integer, mask_lengths, require_finite
from acpo_core.config import SegmentationConfig
from acpo_core.vocab_tables import (
    FLAG_CLOSES_WORD,
    FLAG_DOLLAR_RUNS_SHIFT,
    FLAG_ENDS_DOLLAR,
    FLAG_ENDS_NEWLINE,
    FLAG_ENDS_SENTENCE_PUNCT,
    FLAG_ENDS_SPACE,
    FLAG_HAS_WORD_TEXT,
    FLAG_STARTS_DOLLAR,
    FLAG_STARTS_SPACE,
    MARKER_DEAD,
    MARKER_START,
    VocabTables,
    normalise_markers,
)

__all__ = ["StepSegmentation", "VocabTables", "entropy_threshold", "normalise_markers", "segment_steps"]


@dataclass
class StepSegmentation:
    """The steps of a padded batch of B responses of width T (§2, "Output")."""

    step_index: torch.Tensor  # [B, T] long: the step of every valid token, -1 on padding
    boundaries: torch.Tensor  # [B, max_steps + 1] long: c_0 = 0 < c_1 < ... < c_K = T_b, then -1
    num_steps: torch.Tensor  # [B] long: K >= 1 (an empty response is one empty step, boundaries [0, 0])
    marker_boundary: torch.Tensor  # [B, max_steps] bool: boundary c_i (i >= 1) came from the transition-marker rule


def _check_inputs(
    response_ids: torch.Tensor, entropy: torch.Tensor, response_mask: torch.Tensor, vocab_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate the batch; return the valid-token mask [B, T] bool and the valid lengths [B] long."""
    if response_ids.dim() != 2:
        raise ValueError(f"response_ids must have shape [B, T], got {tuple(response_ids.shape)}")
    if entropy.shape != response_ids.shape or response_mask.shape != response_ids.shape:
        raise ValueError(
            f"shape mismatch: response_ids {tuple(response_ids.shape)}, entropy {tuple(entropy.shape)}, "
            f"response_mask {tuple(response_mask.shape)}"
        )
    if not is_integer(response_ids):
        raise ValueError(f"response_ids must hold integer token ids, got {response_ids.dtype}")
    if not entropy.dtype.is_floating_point:
        raise ValueError(f"entropy must be a floating-point tensor, got {entropy.dtype}")
    if response_mask.device != response_ids.device or entropy.device != response_ids.device:
        raise ValueError("response_ids, entropy and response_mask must be on the same device")
    lengths = mask_lengths(response_mask, "response_mask", "right")
    valid = response_mask != 0
    require_finite("entropy", entropy, valid, "on a valid token")
    fail_rows(
        valid & ((response_ids < 0) | (response_ids >= vocab_size)),
        f"token id outside the vocabulary tables [0, {vocab_size}) on a valid token",
    )
    return valid, lengths


def entropy_threshold(
    entropy: torch.Tensor, valid: torch.Tensor, entropy_top_ratio: float, quantile_scope: str
) -> torch.Tensor:
    """§2.1: the ``1 - entropy_top_ratio`` quantile of the valid entropies, per response or over the batch.

    Args:
        entropy: [B, T] float, finite on valid tokens.
        valid: [B, T] bool.
    Returns:
        [B] float32: the threshold of each row (``torch.quantile`` with linear interpolation, computed in float32);
        +inf for an empty row. A token is an entropy peak when ``H_t >= threshold``.
    """
    values = entropy.float().masked_fill(~valid, float("-inf"))
    if quantile_scope == "batch":
        values = values.reshape(1, -1)
        counts = valid.sum().reshape(1)
    elif quantile_scope == "response":
        counts = valid.sum(dim=1)
    else:
        raise ValueError(f"quantile_scope must be 'response' or 'batch', got {quantile_scope!r}")
    if values.numel() == 0:
        return torch.full(entropy.shape[:1], float("inf"), device=values.device)
    # torch.quantile's arithmetic, in float32: rank = q * (n - 1), linear interpolation between its neighbours.
    q = torch.tensor(1.0 - entropy_top_ratio, dtype=torch.float32, device=values.device)
    ranks = q * (counts - 1).clamp(min=0).to(torch.float32)
    below = ranks.long()
    above = ranks.ceil().long()
    # Only the top few order statistics are needed: take them with topk (descending) instead of a full sort.
    from_top_below = (counts - 1 - below).clamp(min=0)
    from_top_above = (counts - 1 - above).clamp(min=0)
    k = min(int(from_top_below.max()) + 1, values.shape[1])
    top = values.topk(k, dim=1).values
    low = top.gather(1, from_top_below[:, None]).squeeze(1)
    high = top.gather(1, from_top_above[:, None]).squeeze(1)
    threshold = torch.lerp(low, high, ranks - below.to(torch.float32))
    threshold = threshold.masked_fill(counts == 0, float("inf"))
    if quantile_scope == "batch":
        threshold = threshold.expand(entropy.shape[0])
    return threshold


def _last_flag_at_or_before(flags: torch.Tensor, flat_positions: torch.Tensor) -> torch.Tensor:
    """For each flat position (b * T + t), the flat position of the last set flag at or before it (any row)."""
    flagged = flags.reshape(-1).nonzero().squeeze(1)
    found = torch.searchsorted(flagged, flat_positions, right=True) - 1
    return flagged[found.clamp(min=0)]


def _marker_words(
    flat_ids: torch.Tensor,
    flat_flags: torch.Tensor,
    word_starts: torch.Tensor,
    row_ends: torch.Tensor,
    tables: VocabTables,
) -> torch.Tensor:
    """Whether the word starting at each flat position is a transition marker.

    Runs the marker automaton over the words' tokens, one token of every unfinished word per iteration. A word ends
    at white space, at a special token or at the response's end (``row_ends``, exclusive flat positions); the scan of
    a word also stops once the automaton is dead, so it typically takes one to three iterations.
    """
    unique_starts, inverse = torch.unique(word_starts, return_inverse=True)
    ends = torch.zeros_like(unique_starts).scatter_(0, inverse, row_ends)
    num_states = tables.marker_transitions.shape[1]
    transitions = tables.marker_transitions.reshape(-1)
    token = flat_ids[unique_starts]
    state = transitions[tables.marker_row[token] * num_states + MARKER_START]
    open_words = ((flat_flags[unique_starts] & FLAG_CLOSES_WORD) == 0) & (state != MARKER_DEAD)
    active = open_words.nonzero().squeeze(1)
    position = unique_starts.clone()
    while active.numel() > 0:
        nxt = position[active] + 1
        inside = nxt < ends[active]
        nxt = torch.where(inside, nxt, position[active])
        token = flat_ids[nxt]
        token_flags = flat_flags[nxt]
        continues = inside & ((token_flags & (FLAG_HAS_WORD_TEXT | FLAG_STARTS_SPACE)) == FLAG_HAS_WORD_TEXT)
        stepped = transitions[tables.marker_row[token] * num_states + state[active]]
        new_state = torch.where(continues, stepped, state[active])
        state[active] = new_state
        position[active] = nxt
        still_open = continues & ((token_flags & FLAG_CLOSES_WORD) == 0) & (new_state != MARKER_DEAD)
        active = active[still_open]
    return tables.marker_accepting[state][inverse]


def _sortable_float_bits(values: torch.Tensor) -> torch.Tensor:
    """float32 -> int64 whose order is the floats' order (for exact composite sort keys)."""
    bits = values.to(torch.float32).view(torch.int32)
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64)


def _select_boundaries(
    positions: Sequence[int], is_marker: Sequence[bool], min_step_tokens: int, max_boundaries: int
) -> tuple[list[int], list[bool]]:
    """§2.4 for one response: greedy over its candidates in descending score order (all of them already at
    least ``min_step_tokens`` from 0 and from T). Returns the kept boundaries in order and their marker flags."""
    kept: list[int] = []
    kept_marker: list[bool] = []
    for position, marker in zip(positions, is_marker):
        if len(kept) >= max_boundaries:
            break
        i = bisect_left(kept, position)
        if i > 0 and position - kept[i - 1] < min_step_tokens:
            continue
        if i < len(kept) and kept[i] - position < min_step_tokens:
            continue
        kept.insert(i, position)
        kept_marker.insert(i, marker)
    return kept, kept_marker


def segment_steps(
    response_ids: torch.Tensor,
    entropy: torch.Tensor,
    response_mask: torch.Tensor,
    tables: VocabTables,
    cfg: SegmentationConfig,
) -> StepSegmentation:
    """§2: the reasoning steps of every response of a right-padded batch.

    Args:
        response_ids: [B, T] integer token ids (any value on padding).
        entropy: [B, T] float, the old policy's entropy per token (finite on valid tokens, any value on padding).
        response_mask: [B, T] 0/1 (bool, int or float), ones forming a prefix of each row (verl's layout).
        tables: :class:`VocabTables` of the tokenizer, built with the same markers as ``cfg.markers``.
        cfg: the ``acpo.segmentation`` section.
    Returns:
        :class:`StepSegmentation`; its tensors are on ``response_ids``' device.
    Raises:
        ValueError: mismatched shapes, a mask that is not 0/1 or not a prefix, NaN or infinite entropy or a token id
        outside ``[0, tables.vocab_size)`` on a valid token (naming the rows), or tables built for other markers.
    """
    if normalise_markers(cfg.markers) != tables.markers:
        raise ValueError(
            f"VocabTables were built for markers {list(tables.markers)}, but acpo.segmentation.markers is "
            f"{list(cfg.markers)}: rebuild the tables with VocabTables.from_tokenizer(tokenizer, cfg.markers)"
        )
    valid, lengths = _check_inputs(response_ids, entropy, response_mask, tables.vocab_size)
    device = response_ids.device
    tables = tables.to(device)
    batch_size, width = response_ids.shape
    max_steps = cfg.max_steps
    min_step_tokens = cfg.min_step_tokens

    ids = response_ids.long().masked_fill(~valid, 0)
    values = entropy.float()
    flags = tables.token_flags[ids]
    prev_flags, next_flags = flags[:, :-1], flags[:, 1:]

    # §2.2 sentence starts. Math-delimiter parity: a run of $ split across two tokens is still one delimiter.
    delimiters = (flags >> FLAG_DOLLAR_RUNS_SHIFT).to(torch.int32)
    split_run = ((prev_flags & FLAG_ENDS_DOLLAR) != 0) & ((next_flags & FLAG_STARTS_DOLLAR) != 0)
    delimiters[:, 1:] -= split_run.to(torch.int32)
    in_math_after = (delimiters.cumsum(dim=1, dtype=torch.int32) & 1) != 0
    sentence_start = torch.ones_like(valid)
    sentence_start[:, 1:] = ((prev_flags & FLAG_ENDS_NEWLINE) != 0) | (
        ((prev_flags & FLAG_ENDS_SENTENCE_PUNCT) != 0)
        & ((next_flags & FLAG_STARTS_SPACE) != 0)
        & ~in_math_after[:, :-1]
    )
    # Word starts: a token with word text at the response's start, beginning with white space, or after a token that
    # ends with white space or has no word text (white space only, a special token).
    has_word = (flags & FLAG_HAS_WORD_TEXT) != 0
    word_start = has_word.clone()
    word_start[:, 1:] &= (
        ((next_flags & FLAG_STARTS_SPACE) != 0) | ((prev_flags & FLAG_ENDS_SPACE) != 0) | ~has_word[:, :-1]
    )

    # §2.1 entropy peaks, §2.3 their candidate boundaries.
    threshold = entropy_threshold(values, valid, cfg.entropy_top_ratio, cfg.quantile_scope)
    peak = valid & (values >= threshold[:, None])
    flat_peaks = peak.reshape(-1).nonzero().squeeze(1)
    row = flat_peaks // width
    row_offset = row * width
    sentence = _last_flag_at_or_before(sentence_start, flat_peaks)
    aligned = flat_peaks - sentence <= cfg.align_window
    flat_flags = flags.reshape(-1)
    in_word = ~aligned & ((flat_flags[flat_peaks] & FLAG_HAS_WORD_TEXT) != 0)
    target = torch.where(aligned, sentence, torch.full_like(sentence, -1))
    if in_word.any():
        word = _last_flag_at_or_before(word_start, flat_peaks[in_word])
        row_ends = row_offset[in_word] + lengths[row[in_word]]
        marker = _marker_words(ids.reshape(-1), flat_flags, word, row_ends, tables)
        target[in_word] = torch.where(marker, word, target[in_word])
    local = target - row_offset
    eligible = (target >= 0) & (local >= min_step_tokens) & (local <= lengths[row] - min_step_tokens)
    target, scores, via_marker = target[eligible], values.reshape(-1)[flat_peaks[eligible]], ~aligned[eligible]

    candidates, inverse = torch.unique(target, return_inverse=True)
    best_sentence = torch.full(candidates.shape, float("-inf"), device=device)
    best_marker = torch.full(candidates.shape, float("-inf"), device=device)
    best_sentence.scatter_reduce_(0, inverse[~via_marker], scores[~via_marker], reduce="amax")
    best_marker.scatter_reduce_(0, inverse[via_marker], scores[via_marker], reduce="amax")
    score = torch.maximum(best_sentence, best_marker)
    # A boundary is a marker boundary when its best peak came through the marker rule.
    candidate_is_marker = best_marker > best_sentence

    # §2.4 order: descending score, ties to the earlier position; grouped by row (a stable sort by row).
    candidate_row = candidates // width
    candidate_local = candidates - candidate_row * width
    key = (_sortable_float_bits(score) << 32) | (0xFFFFFFFF - candidate_local)
    order = torch.argsort(key, descending=True, stable=True)
    order = order[torch.argsort(candidate_row[order], stable=True)]
    counts = torch.bincount(candidate_row, minlength=batch_size).tolist()
    ordered_positions = candidate_local[order].tolist()
    ordered_marker = candidate_is_marker[order].tolist()
    length_list = lengths.tolist()

    boundary_rows: list[list[int]] = []
    marker_rows: list[list[bool]] = []
    kept_flat: list[int] = []
    start = 0
    for b in range(batch_size):
        stop = start + counts[b]
        kept, kept_marker = _select_boundaries(
            ordered_positions[start:stop], ordered_marker[start:stop], min_step_tokens, max_steps - 1
        )
        start = stop
        kept_flat.extend(b * width + p for p in kept)
        boundary_rows.append([0, *kept, length_list[b]] + [-1] * (max_steps - 1 - len(kept)))
        marker_rows.append([False, *kept_marker] + [False] * (max_steps - 1 - len(kept)))

    marks = torch.zeros(batch_size * width, dtype=torch.int32, device=device)
    if kept_flat:
        marks[torch.tensor(kept_flat, dtype=torch.long, device=device)] = 1
    step_index = marks.reshape(batch_size, width).cumsum(dim=1, dtype=torch.long).masked_fill_(~valid, -1)
    boundaries = torch.tensor(boundary_rows, dtype=torch.long, device=device).reshape(batch_size, max_steps + 1)
    marker_boundary = torch.tensor(marker_rows, dtype=torch.bool, device=device).reshape(batch_size, max_steps)
    num_steps = (boundaries[:, 1:] >= 0).sum(dim=1)
    return StepSegmentation(
        step_index=step_index, boundaries=boundaries, num_steps=num_steps, marker_boundary=marker_boundary
    )


def segmentation_from_boundaries(boundaries: torch.Tensor, response_mask: torch.Tensor) -> StepSegmentation:
    """Given steps as a :class:`StepSegmentation`: boundaries laid down elsewhere (labelled traces), not by §2's rules.

    Args:
        boundaries: [B, Kmax+1] long, c_0 = 0 < c_1 < ... < c_K = T_b, then -1 (T_b the valid length of row b).
        response_mask: [B, T] 0/1, right-padded.
    Returns:
        :class:`StepSegmentation` (no boundary comes from the marker rule).
    Raises:
        ValueError: boundaries that do not start at 0, end at T_b, or rise strictly (naming rows).
    """
    lengths = (response_mask != 0).sum(dim=1)
    cuts = boundaries.long()
    num_steps = (cuts[:, 1:] >= 0).sum(dim=1)
    active = torch.arange(cuts.shape[1], device=cuts.device)[None, :] <= num_steps[:, None]
    fail_rows(num_steps < 1, "boundaries need c_0 and c_1")
    fail_rows(cuts[:, 0] != 0, "boundaries must start with c_0 = 0")
    fail_rows(cuts.gather(1, num_steps[:, None]).squeeze(1) != lengths, "the last boundary c_K must equal T")
    fail_rows((active[:, 1:] & (cuts[:, 1:] <= cuts[:, :-1])).any(dim=1), "boundaries must increase strictly")
    positions = torch.arange(response_mask.shape[1], device=cuts.device).expand(cuts.shape[0], -1).contiguous()
    inner = torch.where(active, cuts, torch.iinfo(torch.long).max)[:, 1:].contiguous()
    step_index = torch.searchsorted(inner, positions, right=True)
    step_index = torch.where(response_mask != 0, step_index, torch.full_like(step_index, -1))
    marker = torch.zeros(cuts.shape[0], cuts.shape[1] - 1, dtype=torch.bool, device=cuts.device)
    return StepSegmentation(step_index=step_index, boundaries=cuts, num_steps=num_steps, marker_boundary=marker)
