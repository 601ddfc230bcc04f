"""acpo_core.config: the ``acpo:`` block's defaults, validation and error messages."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from acpo_core.config import DEFAULT_MARKERS, ACPOConfig, ACPOConfigError


def test_defaults_are_the_spec_numbers() -> None:
    cfg = ACPOConfig.from_dict(None)
    assert cfg.stage == 1
    assert cfg.segmentation.entropy_top_ratio == 0.05
    assert cfg.segmentation.quantile_scope == "response"
    assert (cfg.segmentation.align_window, cfg.segmentation.min_step_tokens, cfg.segmentation.max_steps) == (4, 16, 24)
    assert "wait" in cfg.segmentation.markers and len(cfg.segmentation.markers) == 25
    assert cfg.attribution.answer_template == "Answer: {answer}"
    adv = cfg.advantage
    assert (adv.alpha, adv.beta, adv.gamma, adv.theta, adv.s_clip, adv.u_clip) == (0.5, 0.5, 0.5, 1.0, 3.0, 3.0)
    assert cfg.confidence.tau == 1.0
    cur = cfg.curriculum
    assert (cur.ema, cur.hard_pass_rate, cur.hard_fraction, cur.hard_temperature) == (0.5, 0.25, 0.5, 1.2)


def test_partial_override_keeps_other_defaults() -> None:
    cfg = ACPOConfig.from_dict({"stage": 2, "advantage": {"alpha": 0.0}, "segmentation": {"markers": ["wait"]}})
    assert cfg.stage == 2
    assert cfg.advantage.alpha == 0.0
    assert cfg.advantage.beta == 0.5
    assert cfg.segmentation.markers == ("wait",)


def test_builds_from_an_omegaconf_node_with_interpolation() -> None:
    node = OmegaConf.create({"root_alpha": 0.25, "acpo": {"advantage": {"alpha": "${root_alpha}"}}})
    cfg = ACPOConfig.from_dict(node.acpo)
    assert cfg.advantage.alpha == 0.25


def test_round_trips_through_to_dict() -> None:
    cfg = ACPOConfig.from_dict({"confidence": {"tau": 0.5}})
    assert ACPOConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["segmentation"]["markers"] == list(DEFAULT_MARKERS)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"advantage": {"alpha": -0.1}}, "acpo.advantage.alpha"),
        ({"advantage": {"beta": float("nan")}}, "acpo.advantage.beta"),
        ({"advantage": {"eps": 0.0}}, "acpo.advantage.eps"),
        ({"segmentation": {"entropy_top_ratio": 0.0}}, "acpo.segmentation.entropy_top_ratio"),
        ({"segmentation": {"entropy_top_ratio": 1.5}}, "acpo.segmentation.entropy_top_ratio"),
        ({"segmentation": {"min_step_tokens": 0}}, "acpo.segmentation.min_step_tokens"),
        ({"segmentation": {"max_steps": 2.5}}, "acpo.segmentation.max_steps"),
        ({"segmentation": {"quantile_scope": "global"}}, "acpo.segmentation.quantile_scope"),
        ({"segmentation": {"markers": "wait"}}, "acpo.segmentation.markers"),
        ({"attribution": {"answer_template": "The answer is"}}, "acpo.attribution.answer_template"),
        ({"attribution": {"answer_template": "\\boxed{{answer}}"}}, "acpo.attribution.answer_template"),
        ({"attribution": {"mode": "fast"}}, "acpo.attribution.mode"),
        (
            {"attribution": {"judge": "lookahead", "mode": "naive", "lookahead_max_new_tokens": 0}},
            "acpo.attribution.lookahead_max_new_tokens",
        ),
        ({"attribution": {"lookahead_micro_batch_size": 0}}, "acpo.attribution.lookahead_micro_batch_size"),
        ({"confidence": {"tau": -1.0}}, "acpo.confidence.tau"),
        ({"curriculum": {"hard_fraction": 1.5}}, "acpo.curriculum.hard_fraction"),
        ({"curriculum": {"hard_temperature": 0}}, "acpo.curriculum.hard_temperature"),
        ({"stage": 3}, "acpo.stage"),
        ({"advantage": {"alpah": 0.1}}, "acpo.advantage.alpah"),
        ({"segmentaton": {}}, "acpo.segmentaton"),
    ],
)
def test_bad_value_or_unknown_key_names_the_key(raw: dict, key: str) -> None:
    with pytest.raises(ACPOConfigError, match=key.replace(".", r"\.")):
        ACPOConfig.from_dict(raw)


def test_boxed_template_with_escaped_braces_is_accepted() -> None:
    cfg = ACPOConfig.from_dict({"attribution": {"answer_template": "\\boxed{{{answer}}}"}})
    assert cfg.attribution.answer_template.format(answer="42") == "\\boxed{42}"


def test_the_lookahead_judge_leaves_its_length_to_the_rollout() -> None:
    cfg = ACPOConfig.from_dict({"attribution": {"judge": "lookahead"}})
    assert (cfg.attribution.lookahead_max_new_tokens, cfg.attribution.lookahead_micro_batch_size) == (None, 64)
