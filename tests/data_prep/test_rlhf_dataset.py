"""Round trip: files written by the data tools, read by verl's own RLHFDataset with the real Qwen2.5 tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from data_prep import arithmetic, benchmarks, dapo17k
from data_prep.schema import render_prompt

FIXTURES = Path(__file__).parents[1] / "fixtures" / "data"


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from recipe.acpo.offline_models import load_qwen25_tokenizer

    return load_qwen25_tokenizer()


@pytest.fixture()
def data_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> list[Path]:
    dapo17k.main(["--input", str(FIXTURES / "dapo_math_17k_pass_rate.jsonl"), "--output-dir", str(tmp_path)])
    benchmarks.main(
        ["--name", "math500", "--input", str(FIXTURES / "math500.jsonl"), "--output", str(tmp_path / "m.parquet")]
    )
    benchmarks.main(
        ["--name", "amc2023", "--input", str(FIXTURES / "amc2023.jsonl"), "--output", str(tmp_path / "a.parquet")]
    )
    arithmetic.main(["--output-dir", str(tmp_path), "--num-train", "3", "--num-val", "0"])
    capsys.readouterr()
    return [
        tmp_path / "dapo17k_train.parquet",
        tmp_path / "m.parquet",
        tmp_path / "a.parquet",
        tmp_path / "arithmetic_train.parquet",
    ]


@pytest.mark.e2e  # starts verl, a fresh interpreter or a training run: slow on 2 cores
def test_verl_rlhf_dataset_reads_the_tool_outputs_together_as_written(
    data_files: list[Path], tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_datasets_cache"))
    config = OmegaConf.create(
        {
            "prompt_key": "prompt",
            "max_prompt_length": 512,
            "filter_overlong_prompts": True,
            "filter_overlong_prompts_workers": None,  # in this process: a worker pool costs seconds per file
            "cache_dir": str(tmp_path / "verl_cache"),
        }
    )
    # All files in one dataset, as verl loads several validation benchmarks whose extra_info fields differ.
    dataset = RLHFDataset([str(path) for path in data_files], tokenizer, config)
    written = [row for path in data_files for row in pq.read_table(path).to_pylist()]
    assert len(dataset) == len(written)  # no prompt filtered out as too long or unreadable
    for position, row in enumerate(written):
        item = dataset[position]
        problem = row["extra_info"]["raw_problem"]
        assert item["raw_prompt"] == [{"content": render_prompt(problem), "role": "user"}]
        assert item["data_source"] == row["data_source"]
        assert item["reward_model"]["ground_truth"] == row["reward_model"]["ground_truth"]
        assert item["index"] == row["extra_info"]["index"]
        assert {name: item["extra_info"][name] for name in row["extra_info"]} == row["extra_info"]
        token_ids = tokenizer.apply_chat_template(item["raw_prompt"], add_generation_prompt=True, tokenize=True)
        token_ids = token_ids["input_ids"] if isinstance(token_ids, dict) else token_ids
        assert tokenizer.decode(token_ids) == (
            f"<|im_start|>user\n{render_prompt(problem)}<|im_end|>\n<|im_start|>assistant\n"
        )
        assert len(token_ids) <= config.max_prompt_length
    assert [dataset[n]["extra_info"]["pass_rate"] for n in range(3)] == [0.125, None, 1.0]
    math500 = [dataset[n]["extra_info"] for n in range(len(dataset)) if dataset[n]["data_source"] == "math500"]
    assert [info["level"] for info in math500] == [2, 1, 2, 5, 3]
