"""Shared fixtures: offline models and tokenizers (no model hub), built once per test session."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def qwen_tokenizer() -> Any:
    from recipe.acpo.offline_models import load_qwen25_tokenizer

    return load_qwen25_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny Qwen2 (hidden 64, 2 layers) with the real Qwen2.5 tokenizer, as a Hugging Face folder."""
    from recipe.acpo.offline_models import build_tiny_qwen2

    return build_tiny_qwen2(tmp_path_factory.mktemp("tiny_qwen2"))


@pytest.fixture(scope="session")
def arithmetic_parquets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(train, validation) parquets of one-operation arithmetic word problems in verl's RL schema (16 and 4 rows)."""
    from data_prep.arithmetic import DATA_SOURCE, build_rows, generate
    from data_prep.schema import write_rows

    folder = tmp_path_factory.mktemp("arithmetic")
    train_problems = generate(16, (1, 1), seed=0)
    val_problems = generate(4, (1, 1), seed=1, exclude={p.text for p in train_problems})
    train = write_rows(build_rows(train_problems, DATA_SOURCE, "train", 0), folder / "train.parquet")
    val = write_rows(build_rows(val_problems, DATA_SOURCE, "test", len(train_problems)), folder / "val.parquet")
    return train, val
