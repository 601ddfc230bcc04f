"""Fixtures shared by the benchmarks' tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-layer testbed policy after two SFT steps (seconds to build): a real folder, not a trained policy."""
    from recipe.acpo.testbed import PolicySpec, build_policy

    tiny = PolicySpec(hidden_size=32, num_layers=1, num_heads=2, sft_problems=50, sft_steps=2, batch_size=8)
    folder = tmp_path_factory.mktemp("tiny_testbed") / "policy"
    build_policy(folder, seed=0, policy=dataclasses.replace(tiny, eval_problems=2), log=lambda _: None)
    return folder
