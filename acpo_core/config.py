"""Typed configuration for ACPO, mirroring the top-level ``acpo:`` block of the recipe's YAML.

Every number of ``docs/algorithm.md`` is a default here, never a constant in code. ``ACPOConfig.from_dict`` accepts a
plain ``dict`` or an OmegaConf node and rejects unknown keys and out-of-range values with an error that names the
offending key (``acpo.advantage.alpha``), so a typo in a Hydra override fails before Ray starts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

DEFAULT_MARKERS: tuple[str, ...] = (
    "so",
    "thus",
    "therefore",
    "hence",
    "then",
    "next",
    "now",
    "first",
    "second",
    "third",
    "finally",
    "however",
    "but",
    "wait",
    "alternatively",
    "since",
    "because",
    "let",
    "note",
    "notice",
    "recall",
    "similarly",
    "also",
    "consider",
    "step",
)


class ACPOConfigError(ValueError):
    """A key of the ``acpo:`` block is unknown or its value is out of range."""


def _require(condition: bool, key: str, message: str, value: Any) -> None:
    if not condition:
        raise ACPOConfigError(f"acpo.{key} = {value!r}: {message}")


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_number(obj: Any, prefix: str, name: str, low: float | None = None, high: float | None = None) -> None:
    value = getattr(obj, name)
    key = f"{prefix}.{name}"
    _require(_is_finite_number(value), key, "must be a finite number", value)
    if low is not None:
        _require(value >= low, key, f"must be >= {low}", value)
    if high is not None:
        _require(value <= high, key, f"must be <= {high}", value)


def _check_int(obj: Any, prefix: str, name: str, low: int) -> None:
    value = getattr(obj, name)
    key = f"{prefix}.{name}"
    _require(isinstance(value, int) and not isinstance(value, bool), key, "must be an integer", value)
    _require(value >= low, key, f"must be >= {low}", value)


@dataclass(frozen=True)
class SegmentationConfig:
    """§2: where reasoning steps begin."""

    entropy_top_ratio: float = 0.05
    quantile_scope: Literal["response", "batch"] = "response"
    align_window: int = 4
    min_step_tokens: int = 16
    max_steps: int = 24
    markers: tuple[str, ...] = DEFAULT_MARKERS

    def validate(self, prefix: str = "segmentation") -> None:
        _check_number(self, prefix, "entropy_top_ratio")
        _require(
            0.0 < self.entropy_top_ratio <= 1.0,
            f"{prefix}.entropy_top_ratio",
            "must lie in (0, 1]",
            self.entropy_top_ratio,
        )
        _require(
            self.quantile_scope in ("response", "batch"),
            f"{prefix}.quantile_scope",
            "must be 'response' or 'batch'",
            self.quantile_scope,
        )
        _check_int(self, prefix, "align_window", 0)
        _check_int(self, prefix, "min_step_tokens", 1)
        _check_int(self, prefix, "max_steps", 1)
        _require(
            all(isinstance(m, str) and m.strip() and " " not in m.strip() for m in self.markers),
            f"{prefix}.markers",
            "must be a list of single non-empty words",
            self.markers,
        )


@dataclass(frozen=True)
class AttributionConfig:
    """§3: how step contributions are scored by the old policy."""

    mode: Literal["packed", "naive"] = "packed"
    answer_template: str = "Answer: {answer}"
    micro_batch_size: int = 8
    # Packed forward: flex (documents of one sequence, BlockMask), sdpa (dense [n, 1, S, S] mask), auto (flex on an
    # accelerator, sdpa on CPU).
    attention: Literal["auto", "flex", "sdpa"] = "auto"
    # Tokens per packed forward (acpo_core.micro_batches); null: the log-prob pass's log_prob_max_token_len_per_gpu
    # when its dynamic batch size is on, else micro_batch_size alone bounds a micro-batch.
    max_tokens_per_micro_batch: int | None = None
    # Credit variants (ours, docs/algorithm.md §3.2); the defaults are the §3 reading of the spec.
    # judge: "policy" scores L_i with the old policy (§3); "lookahead" (§3.3) scores L_i after the old policy's greedy
    # continuation of each prefix; "oracle" takes C from labelled
    # first wrong steps (-1 on the step holding the first wrong token, +1 elsewhere; the testbed's step checker), the
    # ceiling of any attribution.
    judge: Literal["policy", "lookahead", "oracle"] = "policy"
    # target: "ground_truth" scores Y for every response; "contrast" scores D_i = L_i(Y) - L_i(Y') for a wrong
    # response whose own answer Y' was extracted (format and position terms cancel).
    target: Literal["ground_truth", "contrast"] = "ground_truth"
    # score_tokens: "all" sums log p over every token of the rendered template; "value" conditions on the template's
    # fixed text and sums over the answer value's tokens only.
    score_tokens: Literal["all", "value"] = "all"
    # final_eos: "keep" scores L_K after the whole response, its end-of-sequence token included (c_K = T); "drop"
    # scores L_K after the response without a trailing special token, a context the policy does continue from.
    final_eos: Literal["keep", "drop"] = "keep"
    # judge lookahead: the longest continuation (null: the rollout's response_length) and the contexts generated
    # together on a worker.
    lookahead_max_new_tokens: int | None = None
    lookahead_micro_batch_size: int = 64

    def validate(self, prefix: str = "attribution") -> None:
        _require(self.mode in ("packed", "naive"), f"{prefix}.mode", "must be 'packed' or 'naive'", self.mode)
        for name, choices in (
            ("judge", ("policy", "lookahead", "oracle")),
            ("target", ("ground_truth", "contrast")),
            ("score_tokens", ("all", "value")),
            ("final_eos", ("keep", "drop")),
        ):
            value = getattr(self, name)
            _require(value in choices, f"{prefix}.{name}", f"must be one of {', '.join(choices)}", value)
        _require(
            isinstance(self.answer_template, str) and "{answer}" in self.answer_template,
            f"{prefix}.answer_template",
            "must contain the placeholder '{answer}'",
            self.answer_template,
        )
        sentinel = "\x00answer\x00"
        try:
            rendered = self.answer_template.format(answer=sentinel)
        except (IndexError, KeyError, ValueError) as err:
            raise ACPOConfigError(
                f"acpo.{prefix}.answer_template = {self.answer_template!r}: not a valid format string ({err}); "
                "write literal braces as '{{' and '}}'"
            ) from err
        # '{{answer}}' contains the text '{answer}' but renders it literally: the answer must really be inserted.
        _require(
            sentinel in rendered,
            f"{prefix}.answer_template",
            "must insert the answer through '{answer}' (literal braces are written '{{' and '}}')",
            self.answer_template,
        )
        _check_int(self, prefix, "micro_batch_size", 1)
        _require(
            self.attention in ("auto", "flex", "sdpa"),
            f"{prefix}.attention",
            "must be auto, flex or sdpa",
            self.attention,
        )
        if self.max_tokens_per_micro_batch is not None:
            _check_int(self, prefix, "max_tokens_per_micro_batch", 1)
        if self.lookahead_max_new_tokens is not None:
            _check_int(self, prefix, "lookahead_max_new_tokens", 1)
        _check_int(self, prefix, "lookahead_micro_batch_size", 1)


@dataclass(frozen=True)
class AdvantageConfig:
    """§4: the attributed advantage A_final = A_base + alpha * A_attr."""

    alpha: float = 0.5
    beta: float = 0.5
    gamma: float = 0.5
    theta: float = 1.0
    s_clip: float = 3.0
    u_clip: float = 3.0
    eps: float = 1e-6
    # Ours (docs/algorithm.md §4.1): "redistributed" (the default, measured by benchmarks/bench_credit.py) centres
    # A_attr over each response's tokens, so attribution moves credit between steps and each response's total stays
    # GRPO's; "added" is §4 as the spec reads it (A_attr adds net credit to a response).
    attr_total: Literal["added", "redistributed"] = "redistributed"

    def validate(self, prefix: str = "advantage") -> None:
        for name in ("alpha", "beta", "gamma", "theta"):
            _check_number(self, prefix, name, low=0.0)
        _require(
            self.attr_total in ("added", "redistributed"),
            f"{prefix}.attr_total",
            "must be 'added' or 'redistributed'",
            self.attr_total,
        )
        for name in ("s_clip", "u_clip", "eps"):
            _check_number(self, prefix, name)
            _require(getattr(self, name) > 0, f"{prefix}.{name}", "must be > 0", getattr(self, name))


@dataclass(frozen=True)
class ConfidenceConfig:
    """§5: Stage-2 token weights omega_t = |S| * softmax(-H_t / tau) within a step."""

    tau: float = 1.0

    def validate(self, prefix: str = "confidence") -> None:
        _check_number(self, prefix, "tau")
        _require(self.tau > 0, f"{prefix}.tau", "must be > 0", self.tau)


@dataclass(frozen=True)
class CurriculumConfig:
    """§6: pass-rate tracking and hotter sampling for hard prompts in Stage 1."""

    enable: bool = True
    ema: float = 0.5
    hard_pass_rate: float = 0.25
    hard_fraction: float = 0.5
    hard_temperature: float = 1.2

    def validate(self, prefix: str = "curriculum") -> None:
        _require(isinstance(self.enable, bool), f"{prefix}.enable", "must be true or false", self.enable)
        _check_number(self, prefix, "ema", low=0.0, high=1.0)
        _check_number(self, prefix, "hard_pass_rate", low=0.0, high=1.0)
        _check_number(self, prefix, "hard_fraction", low=0.0, high=1.0)
        _check_number(self, prefix, "hard_temperature")
        _require(self.hard_temperature > 0, f"{prefix}.hard_temperature", "must be > 0", self.hard_temperature)


@dataclass(frozen=True)
class DumpConfig:
    """Per-step dump of segmented responses and their step credit (read by ``recipe.acpo.report``).

    ``dir`` null: ``<trainer.default_local_dir>/acpo_dump``. Every ``every_n_steps``-th training step writes
    ``step_<global_step:06d>.jsonl`` with at most ``max_responses`` responses (0: all of the batch).
    """

    enable: bool = False
    dir: str | None = None
    every_n_steps: int = 1
    max_responses: int = 32

    def validate(self, prefix: str = "dump") -> None:
        _require(isinstance(self.enable, bool), f"{prefix}.enable", "must be true or false", self.enable)
        _require(
            self.dir is None or (isinstance(self.dir, str) and self.dir.strip() != ""),
            f"{prefix}.dir",
            "must be null or a non-empty path",
            self.dir,
        )
        _check_int(self, prefix, "every_n_steps", 1)
        _check_int(self, prefix, "max_responses", 0)


@dataclass(frozen=True)
class ACPOConfig:
    """The whole ``acpo:`` block. ``stage`` selects Stage-1 (uniform) or Stage-2 (confidence) token weights."""

    stage: int = 1
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    attribution: AttributionConfig = field(default_factory=AttributionConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    confidence: ConfidenceConfig = field(default_factory=ConfidenceConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    dump: DumpConfig = field(default_factory=DumpConfig)

    def validate(self) -> None:
        _require(self.stage in (1, 2) and not isinstance(self.stage, bool), "stage", "must be 1 or 2", self.stage)
        for section in _SECTIONS:
            getattr(self, section).validate(section)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | Any | None = None) -> ACPOConfig:
        """Build and validate from a plain mapping or an OmegaConf node (the ``acpo:`` block itself).

        Missing keys take the spec's defaults; unknown keys and out-of-range values raise ``ACPOConfigError``.
        """
        data = _to_plain_dict(raw)
        _reject_unknown(data, cls, prefix="")
        kwargs: dict[str, Any] = {}
        if "stage" in data:
            kwargs["stage"] = data["stage"]
        for section, section_cls in _SECTIONS.items():
            if section not in data or data[section] is None:
                continue
            section_data = data[section]
            if not isinstance(section_data, Mapping):
                raise ACPOConfigError(f"acpo.{section} must be a mapping, got {section_data!r}")
            _reject_unknown(section_data, section_cls, prefix=f"{section}.")
            section_kwargs = dict(section_data)
            if "markers" in section_kwargs:
                markers = section_kwargs["markers"]
                if isinstance(markers, str) or not isinstance(markers, list | tuple):
                    raise ACPOConfigError(f"acpo.{section}.markers must be a list of words, got {markers!r}")
                section_kwargs["markers"] = tuple(markers)
            kwargs[section] = section_cls(**section_kwargs)
        config = cls(**kwargs)
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        """The block as plain data (markers as a list), e.g. for logging or a YAML dump."""
        data = dataclasses.asdict(self)
        data["segmentation"]["markers"] = list(data["segmentation"]["markers"])
        return data


_SECTIONS: dict[str, type] = {
    "segmentation": SegmentationConfig,
    "attribution": AttributionConfig,
    "advantage": AdvantageConfig,
    "confidence": ConfidenceConfig,
    "curriculum": CurriculumConfig,
    "dump": DumpConfig,
}


def _to_plain_dict(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if type(raw).__module__.startswith("omegaconf"):
        # A DictConfig is a Mapping whose nested lists stay ListConfig: convert the whole tree first.
        from omegaconf import OmegaConf

        return OmegaConf.to_container(raw, resolve=True)  # type: ignore[return-value]
    if not isinstance(raw, Mapping):
        # An OmegaConf DictConfig; imported lazily so acpo_core works without omegaconf installed.
        try:
            from omegaconf import DictConfig, OmegaConf
        except ImportError as err:  # pragma: no cover - omegaconf ships with hydra, a runtime requirement
            raise ACPOConfigError(f"acpo config must be a mapping, got {type(raw).__name__}") from err
        if not isinstance(raw, DictConfig):
            raise ACPOConfigError(f"acpo config must be a mapping, got {type(raw).__name__}")
        return OmegaConf.to_container(raw, resolve=True)  # type: ignore[return-value]
    return {str(k): v for k, v in raw.items()}


def _reject_unknown(data: Mapping[str, Any], cls: type, prefix: str) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ACPOConfigError(
            f"unknown key(s) {', '.join('acpo.' + prefix + k for k in unknown)}; "
            f"known keys under acpo{'.' + prefix.rstrip('.') if prefix else ''}: {', '.join(sorted(known))}"
        )
