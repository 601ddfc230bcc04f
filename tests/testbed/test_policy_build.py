"""recipe.acpo.testbed's policy builder: deterministic for a seed, an ordinary Hugging Face folder, a working CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from recipe.acpo.testbed import PolicySpec, build_policy
from recipe.acpo.testbed.policy import REPORT_FILE, answer_of, score

# A few seconds' worth: the point is the determinism and the folder, not the accuracy.
SMALL = PolicySpec(
    hidden_size=32, num_layers=1, num_heads=2, sft_problems=200, sft_steps=4, batch_size=8, eval_problems=4
)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("testbed_policy")
    folders = {"a": root / "a", "b": root / "b", "other_seed": root / "c"}
    for name, folder in folders.items():
        build_policy(folder, seed=1 if name == "other_seed" else 0, policy=SMALL, log=lambda _: None)
    return folders


@pytest.mark.e2e  # starts verl, a fresh interpreter or a training run: slow on 2 cores
def test_two_builds_with_the_same_seed_have_identical_weights_and_tokenizers(builds: dict[str, Path]) -> None:
    a, b = _weights(builds["a"]), _weights(builds["b"])
    assert a.keys() == b.keys()
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert (builds["a"] / "tokenizer.json").read_bytes() == (builds["b"] / "tokenizer.json").read_bytes()
    other = _weights(builds["other_seed"])
    assert any(not torch.equal(a[name], other[name]) for name in a)


def test_the_folder_loads_with_auto_classes_and_its_chat_template_gives_the_generation_prompt(builds) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = builds["a"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tokenizer)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert model.config.eos_token_id == tokenizer.eos_token_id
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Step by step: Start at 3, add 4."}], add_generation_prompt=True, tokenize=False
    )
    assert text == "<|im_start|>user\nStep by step: Start at 3, add 4.<|im_end|>\n<|im_start|>assistant\n"
    solution = "First, 3 + 4 = 7.\nAnswer: 7"
    ids = tokenizer(solution, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == solution
    # The ids the policy was trained on: tokenizer.json as it is (not re-read as the model type's tokenizer class).
    assert ids == Tokenizer.from_file(str(folder / "tokenizer.json")).encode(solution).ids
    report = json.loads((folder / REPORT_FILE).read_text())
    assert report["eval_problems"] == 4 and 0.0 <= report["sampled_accuracy"] <= 1.0


def test_scoring_reads_the_last_answer_line_and_counts_unparsable_wrong_responses() -> None:
    from recipe.acpo.testbed.task import StepProblem

    problem = StepProblem(start=8, operations=(("add", 4), ("sub", 2)))
    assert answer_of("First, 8 + 4 = 12.\nAnswer: 3\nAnswer: 10") == 10
    responses = [problem.solution, "First, 8 + 4 = 10.\nThen, 10 - 2 = 8.\nAnswer: 8", "no idea"]
    accuracy, unparsable, first_wrong = score([problem] * 3, responses)
    assert accuracy == pytest.approx(1 / 3) and unparsable == 1 and first_wrong == {"0": 1, "none": 1}


def test_the_command_line_helps_and_writes_data(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "recipe.acpo.testbed"]
    assert "build" in subprocess.run([*run, "--help"], capture_output=True, text=True, check=True).stdout
    subprocess.run([*run, "data", str(tmp_path), "--num-train", "8", "--num-val", "2"], check=True)
    assert (tmp_path / "arithmetic_steps_train.parquet").is_file()
    assert (tmp_path / "arithmetic_steps_val.parquet").is_file()


def test_the_command_line_refuses_a_rate_outside_zero_one(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "recipe.acpo.testbed", "build", str(tmp_path / "policy"), "--slip-rate", "1.5"]
    result = subprocess.run(run, capture_output=True, text=True)
    assert result.returncode == 2 and "--slip-rate must lie in [0, 1], got 1.5" in result.stderr
    assert not (tmp_path / "policy").exists()


def test_the_command_line_refuses_an_unknown_hasty_relation(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "recipe.acpo.testbed", "build", str(tmp_path / "policy"), "--hasty-relation", "<"]
    result = subprocess.run(run, capture_output=True, text=True)
    assert result.returncode == 2 and "--hasty-relation: invalid choice: '<'" in result.stderr
    assert not (tmp_path / "policy").exists()
