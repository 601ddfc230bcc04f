"""§6: difficulty-aware curriculum state -- per-prompt pass rates, difficulty tiers and which samples run hot.

A :class:`PassRateTracker` holds one pass-rate estimate p(q) per prompt id. It is seeded from the data's
``extra_info.pass_rate`` when data preparation provides it, and updated after every reward with each group's accuracy
as an exponential moving average. A prompt is hard when p(q) <= ``hard_pass_rate``; a prompt with no estimate yet is
unknown and sampled in the normal tier. In Stage 1 the first ``hot_response_count(G, hard_fraction)`` responses of a
hard prompt's group are sampled at ``hard_temperature`` (the recipe's agent loop applies the temperature; this module
only decides which responses: :meth:`PassRateTracker.hot_samples` per prompt before verl repeats it,
:meth:`PassRateTracker.hot_sample_mask` per response after).

Choices of this project (§6 leaves them open):

- The first observation of a prompt that was neither seeded nor seen sets p(q) to that group's accuracy: an EMA
  started from an arbitrary prior (0.5, say) would take several epochs to forget it, and every prompt is seen only once
  per epoch.
- Seeding never overwrites an existing estimate: the online estimate is more recent than the data's offline one, and a
  tracker restored from a checkpoint must survive the data loader seeding the same prompts again.
- The hot responses of a hard group are the first ceil(hard_fraction * G) in the order of the batch, so any positive
  ``hard_fraction`` samples at least one response hot and ``hard_fraction = 1`` samples the whole group hot.
- Tiers are decided when a batch is generated, from the estimates before that batch's rewards update them.

Prompt ids are compared as strings (``str(prompt_id)``), as JSON keys are, so a state round trip never changes a key.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from acpo_core.config import CurriculumConfig
from acpo_core.groups import group_labels

__all__ = ["PassRateTracker", "group_positions", "hot_response_count"]

_STATE_VERSION = 1
# ceil(0.28 * 25) would be 8 because 0.28 * 25 = 7.000000000000001 in floating point.
_CEIL_SLACK = 1e-9


def _as_ids(prompt_ids: Sequence[Hashable] | np.ndarray) -> np.ndarray:
    ids = np.asarray(prompt_ids, dtype=object)
    if ids.ndim != 1:
        raise ValueError(f"prompt ids must be one id per response, got an array of shape {ids.shape}")
    return ids.astype(str)


def _check_fraction(name: str, value: float, prompt_id: str | None = None) -> float:
    where = f" for prompt {prompt_id!r}" if prompt_id is not None else ""
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise ValueError(f"{name}{where} must be a number in [0, 1], got {value!r}")
    number = float(value)
    if not (math.isfinite(number) and 0.0 <= number <= 1.0):
        raise ValueError(f"{name}{where} must lie in [0, 1], got {value!r}")
    return number


def hot_response_count(group_size: int | np.ndarray, hard_fraction: float) -> int | np.ndarray:
    """§6: how many of a hard prompt's G responses are sampled hot, ceil(hard_fraction * G).

    Args:
        group_size: G, an int or an int array (one per response or per group).
        hard_fraction: in [0, 1].

    Returns:
        An int for an int ``group_size``, else an int64 array of its shape.
    """
    sizes = np.asarray(group_size, dtype=np.int64)
    if (sizes < 0).any():
        raise ValueError(f"group sizes must be >= 0, got {group_size!r}")
    fraction = _check_fraction("hard_fraction", hard_fraction)
    counts = np.clip(np.ceil(fraction * sizes - _CEIL_SLACK), 0, sizes).astype(np.int64)
    return int(counts) if counts.ndim == 0 else counts


def group_positions(group_ids: Sequence[Hashable] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each response's rank within its group, in batch order, and the size of its group. Vectorised.

    Args:
        group_ids: ``N`` group labels (verl's ``uid``, or the prompt id when each prompt forms one group).

    Returns:
        ``(positions, sizes)``, both int64 ``[N]``: ``positions[j]`` counts the earlier responses of j's group.
    """
    ids = _as_ids(group_ids)
    if ids.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    _, inverse = group_labels(ids)
    counts = np.bincount(inverse)
    order = np.argsort(inverse, kind="stable")
    group_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    positions = np.empty(ids.size, dtype=np.int64)
    positions[order] = np.arange(ids.size) - group_start[inverse[order]]
    return positions, counts[inverse].astype(np.int64)


class PassRateTracker:
    """§6: per-prompt pass-rate estimates, difficulty tiers and the hot-sampling decision.

    Args:
        ema: weight of the old estimate, p <- ema * p + (1 - ema) * group accuracy.
        hard_pass_rate: a prompt is hard when its estimate is <= this.
        hard_fraction: default share of a hard prompt's group sampled hot (:meth:`hot_sample_mask`).
    """

    def __init__(self, ema: float = 0.5, hard_pass_rate: float = 0.25, hard_fraction: float = 0.5) -> None:
        self.ema = _check_fraction("ema", ema)
        self.hard_pass_rate = _check_fraction("hard_pass_rate", hard_pass_rate)
        self.hard_fraction = _check_fraction("hard_fraction", hard_fraction)
        self._pass_rates: dict[str, float] = {}
        self._observations: dict[str, int] = {}

    @classmethod
    def from_config(cls, cfg: CurriculumConfig) -> PassRateTracker:
        """A tracker with the ``acpo.curriculum`` settings ``ema``, ``hard_pass_rate`` and ``hard_fraction``."""
        return cls(ema=cfg.ema, hard_pass_rate=cfg.hard_pass_rate, hard_fraction=cfg.hard_fraction)

    def __len__(self) -> int:
        return len(self._pass_rates)

    def __contains__(self, prompt_id: object) -> bool:
        return str(prompt_id) in self._pass_rates

    def seed(self, prompt_id: Hashable, pass_rate: float) -> bool:
        """Set p(q) from ``extra_info.pass_rate`` unless the prompt already has an estimate.

        Returns:
            Whether the seed was used (False when an estimate, seeded or observed, already existed).

        Raises:
            ValueError: ``pass_rate`` is not a number in [0, 1] (the message names the prompt id).
        """
        key = str(prompt_id)
        rate = _check_fraction("pass_rate", pass_rate, key)
        if key in self._pass_rates:
            return False
        self._pass_rates[key] = rate
        self._observations[key] = 0
        return True

    def seed_many(self, prompt_ids: Sequence[Hashable] | np.ndarray, pass_rates: Sequence[float | None]) -> int:
        """:meth:`seed` for each (prompt id, pass rate) pair, skipping ``None`` (no pass rate in the data).

        Returns:
            The number of seeds used.
        """
        ids = _as_ids(prompt_ids)
        if len(pass_rates) != ids.size:
            raise ValueError(f"{ids.size} prompt ids but {len(pass_rates)} pass rates")
        return sum(self.seed(key, rate) for key, rate in zip(ids.tolist(), pass_rates) if rate is not None)

    def update(
        self, prompt_ids: Sequence[Hashable] | np.ndarray, correct: Sequence[float] | np.ndarray | torch.Tensor
    ) -> dict[str, float]:
        """Fold one batch's outcomes into the estimates: p <- ema * p + (1 - ema) * accuracy, per prompt.

        All responses of a prompt in the batch form its group; its accuracy is their mean score. A prompt with no
        estimate yet takes the accuracy itself.

        Args:
            prompt_ids: ``N`` prompt id of each response.
            correct: ``N`` scores in [0, 1] (1 = correct).

        Returns:
            The batch accuracy of each prompt id in it.

        Raises:
            ValueError: mismatched lengths, or a score outside [0, 1] or NaN (naming the prompt id and position).
        """
        ids = _as_ids(prompt_ids)
        scores = (
            correct.detach().to("cpu", torch.float64).numpy()
            if isinstance(correct, torch.Tensor)
            else np.asarray(correct, dtype=np.float64)
        )
        if scores.shape != ids.shape:
            raise ValueError(f"{ids.size} prompt ids but scores of shape {scores.shape}")
        bad = ~(np.isfinite(scores) & (scores >= 0.0) & (scores <= 1.0))
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            prompt, value = str(ids[first]), float(scores[first])
            raise ValueError(
                f"score of prompt {prompt!r} (response {first}) must lie in [0, 1], got {value!r}; "
                f"{int(bad.sum())} bad score(s) in all"
            )
        if ids.size == 0:
            return {}
        unique, inverse = group_labels(ids)
        accuracy = np.bincount(inverse, weights=scores, minlength=unique.size) / np.bincount(inverse)
        for key, acc in zip(unique.tolist(), accuracy.tolist()):
            old = self._pass_rates.get(key)
            self._pass_rates[key] = acc if old is None else self.ema * old + (1.0 - self.ema) * acc
            self._observations[key] = self._observations.get(key, 0) + 1
        return dict(zip(unique.tolist(), accuracy.tolist()))

    def pass_rate(self, prompt_id: Hashable) -> float | None:
        """The current estimate p(q), or None for a prompt never seeded nor seen."""
        return self._pass_rates.get(str(prompt_id))

    def observations(self, prompt_id: Hashable) -> int:
        """How many batches have updated this prompt's estimate (0 for seeded-only and unknown prompts)."""
        return self._observations.get(str(prompt_id), 0)

    def is_hard(self, prompt_id: Hashable) -> bool:
        """§6: p(q) <= hard_pass_rate. Unknown prompts are not hard (normal tier)."""
        rate = self.pass_rate(prompt_id)
        return rate is not None and rate <= self.hard_pass_rate

    def tiers(self, prompt_ids: Sequence[Hashable] | np.ndarray) -> torch.Tensor:
        """``[N]`` bool: :meth:`is_hard` of each prompt id."""
        ids = _as_ids(prompt_ids)
        if ids.size == 0:
            return torch.zeros(0, dtype=torch.bool)
        unique, inverse = group_labels(ids)
        hard = np.array([self.is_hard(key) for key in unique.tolist()], dtype=bool)
        return torch.from_numpy(hard[inverse])

    def hot_samples(
        self, prompt_ids: Sequence[Hashable] | np.ndarray, group_size: int, hard_fraction: float | None = None
    ) -> torch.Tensor:
        """§6 (Stage 1): how many of each prompt's ``group_size`` (``rollout.n``) requests run hot.

        ``hot_response_count(group_size, hard_fraction)`` for a hard prompt, 0 otherwise; for the prompts of a batch
        before verl repeats them. The requests whose position in the group (verl's per-group request index) is below
        this count are the hot ones, the same responses :meth:`hot_sample_mask` marks after the repeat.

        Args:
            prompt_ids: ``P`` prompt ids, one per prompt.
            group_size: G, responses per prompt.
            hard_fraction: share of a hard group sampled hot; defaults to the tracker's.

        Returns:
            ``[P]`` int64.
        """
        count = hot_response_count(group_size, self.hard_fraction if hard_fraction is None else hard_fraction)
        return self.tiers(prompt_ids).to(torch.int64) * count

    def hot_sample_mask(
        self,
        prompt_ids: Sequence[Hashable] | np.ndarray,
        group_ids: Sequence[Hashable] | np.ndarray | None = None,
        hard_fraction: float | None = None,
    ) -> torch.Tensor:
        """§6 (Stage 1): which responses are sampled at ``hard_temperature``.

        A response is hot when its prompt is hard and it is among the first
        ``hot_response_count(G, hard_fraction)`` responses of its group in batch order. Call it on the whole batch
        (every group complete), before the batch is split over rollout workers.

        Args:
            prompt_ids: ``N`` prompt id of each response (decides the tier).
            group_ids: ``N`` group label of each response (verl's ``uid``); defaults to ``prompt_ids``.
            hard_fraction: share of a hard group sampled hot; defaults to the tracker's.

        Returns:
            ``[N]`` bool.
        """
        ids = _as_ids(prompt_ids)
        groups = ids if group_ids is None else _as_ids(group_ids)
        if groups.shape != ids.shape:
            raise ValueError(f"{ids.size} prompt ids but {groups.size} group ids")
        positions, sizes = group_positions(groups)
        hot = positions < hot_response_count(sizes, self.hard_fraction if hard_fraction is None else hard_fraction)
        return self.tiers(ids) & torch.from_numpy(hot)

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: the estimates and observation counts (settings come from the config)."""
        return {
            "version": _STATE_VERSION,
            "pass_rates": dict(self._pass_rates),
            "observations": dict(self._observations),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace every estimate with those of ``state`` (from :meth:`state_dict`, possibly through JSON).

        Raises:
            ValueError: an unknown version, a malformed state, or a pass rate outside [0, 1] (naming the prompt id).
        """
        if not isinstance(state, Mapping) or state.get("version") != _STATE_VERSION:
            version = state.get("version") if isinstance(state, Mapping) else None
            raise ValueError(
                f"pass-rate tracker state must be a mapping with version {_STATE_VERSION}, got {version!r}"
            )
        rates, observations = state.get("pass_rates"), state.get("observations", {})
        if not isinstance(rates, Mapping) or not isinstance(observations, Mapping):
            raise ValueError("pass-rate tracker state needs mappings 'pass_rates' and 'observations'")
        loaded = {str(key): _check_fraction("pass_rate", rate, str(key)) for key, rate in rates.items()}
        counts: dict[str, int] = {}
        for key, count in observations.items():
            if str(key) not in loaded or isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ValueError(f"observation count for prompt {str(key)!r} must be an int >= 0 of a known prompt")
            counts[str(key)] = count
        self._pass_rates = loaded
        self._observations = {key: counts.get(key, 0) for key in loaded}
