"""The per-step dump (recipe.acpo.step_dump): records built from a real ACPO step, written and read back."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from acpo_core.attribution import AttributionBatch, answer_batch
from acpo_core.config import ACPOConfig, ACPOConfigError, DumpConfig
from acpo_core.segmentation import VocabTables
from acpo_core.step import ACPOBatch, ACPOStepResult, compute_acpo_step
from recipe.acpo.step_dump import (
    StepDumper,
    build_step_records,
    dump_directory,
    prompt_key,
    select_dump_rows,
    token_text_table,
    write_step_records,
)

TEXTS = [
    "We add 3 and 4 to get 7. Then we double 7 to get 14. So the answer is 14.",
    "We add 3 and 4 to get 8. Then we double 8 to get 16. So the answer is 16.",
    "First 3 + 4 = 7. Next 7 * 2 = 14. Finally the answer is 14.",
    "First 3 + 4 = 9. Next 9 * 2 = 18. Finally the answer is 18.",
    "The answer is 14.",
]
UIDS = ["p1", "p1", "p2", "p2", "pad"]
SCORES = [1.0, 0.0, 1.0, 0.0, 0.0]
FIELDS = {
    "global_step",
    "uid",
    "data_source",
    "stage",
    "prompt",
    "response",
    "tokens",
    "entropy",
    "boundaries",
    "marker_boundary",
    "score",
    "correct",
    "ground_truth",
    "a_base",
    "steps",
    "token_advantages",
}
STEP_FIELDS = {"start", "end", "C", "s", "u", "w", "regime", "a_attr"}


def _view(tokenizer: Any) -> ACPOBatch:
    """A dense batch of 4 real responses and one padding row, peaks planted at sentence starts."""
    prompt = tokenizer("Double the sum of 3 and 4.", add_special_tokens=False)["input_ids"]
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in TEXTS]
    width = max(len(r) for r in rows)
    batch = len(rows)
    response_ids = torch.full((batch, width), tokenizer.pad_token_id, dtype=torch.long)
    response_mask = torch.zeros(batch, width, dtype=torch.long)
    entropy = torch.zeros(batch, width)
    for b, ids in enumerate(rows):
        response_ids[b, : len(ids)] = torch.tensor(ids)
        response_mask[b, : len(ids)] = 1 if b < 4 else 0
        pieces = tokenizer.convert_ids_to_tokens(ids)
        entropy[b, : len(ids)] = 0.2 + 0.01 * torch.arange(len(ids)).float()
        for t, piece in enumerate(pieces):
            if piece in ("ĠThen", "ĠSo", "ĠNext", "ĠFinally"):
                entropy[b, t] = 4.0
    truths = ["14"] * 4
    real_answer_ids, real_answer_mask = answer_batch(tokenizer, truths, list(UIDS[:4]), "Answer: {answer}")
    answer_ids = torch.zeros(batch, real_answer_ids.shape[1], dtype=torch.long)
    answer_mask = torch.zeros_like(answer_ids)
    answer_ids[:4], answer_mask[:4] = real_answer_ids, real_answer_mask
    return ACPOBatch(
        prompt_ids=torch.tensor([prompt] * batch),
        prompt_mask=torch.ones(batch, len(prompt), dtype=torch.long),
        response_ids=response_ids,
        response_mask=response_mask,
        entropy=entropy,
        base_advantages=torch.tensor([0.7, -0.7, 0.7, -0.7, 0.0]),
        scores=torch.tensor(SCORES),
        is_padding=torch.tensor([False, False, False, False, True]),
        uids=list(UIDS),
        answer_ids=answer_ids,
        answer_mask=answer_mask,
        ground_truths=[*truths, None],
    )


def _scorer(inputs: AttributionBatch) -> torch.Tensor:
    # L_i rises by i on even rows and falls on odd ones: helpful steps in correct rows, harmful in wrong ones.
    columns = torch.arange(inputs.boundaries.shape[1]).float()
    sign = torch.tensor([1.0 if n % 2 == 0 else -1.0 for n in range(inputs.boundaries.shape[0])])
    return -10.0 + sign[:, None] * columns[None, :] * (1 + 0.1 * columns[None, :])


@pytest.fixture(scope="module")
def step(qwen_tokenizer: Any) -> tuple[ACPOBatch, ACPOStepResult]:
    cfg = ACPOConfig.from_dict({"segmentation": {"min_step_tokens": 3}})
    tables = VocabTables.from_tokenizer(qwen_tokenizer)
    view = _view(qwen_tokenizer)
    return view, compute_acpo_step(view, tables, cfg, _scorer, {})


@pytest.fixture(scope="module")
def texts(qwen_tokenizer: Any) -> list[str]:
    return token_text_table(qwen_tokenizer)


def test_token_text_table_shows_special_tokens_and_joins_to_the_decoded_text(
    qwen_tokenizer: Any, texts: list[str]
) -> None:
    ids = qwen_tokenizer("Then 3 + 4 = 7 — done.", add_special_tokens=False)["input_ids"]
    assert "".join(texts[i] for i in ids) == qwen_tokenizer.decode(ids)
    assert texts[qwen_tokenizer.eos_token_id] == qwen_tokenizer.eos_token


def test_records_round_trip_through_the_file_with_every_field(
    tmp_path: Path, step: tuple[ACPOBatch, ACPOStepResult], texts: list[str]
) -> None:
    view, result = step
    records = build_step_records(
        view, result, texts, global_step=7, stage=1, data_sources=["arith"] * 5, max_responses=0
    )
    path = write_step_records(records, str(tmp_path), 7)
    assert Path(path).name == "step_000007.jsonl"
    read = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]
    assert read == records
    assert [r["uid"] for r in read] == ["p1", "p1", "p2", "p2"]  # the padding row is never dumped
    for n, record in enumerate(read):
        assert set(record) >= FIELDS
        length = int(view.response_mask[n].sum())
        assert len(record["tokens"]) == len(record["entropy"]) == len(record["token_advantages"]) == length
        assert record["response"] == "".join(record["tokens"])
        assert record["response"].startswith(TEXTS[n])
        bounds = record["boundaries"]
        assert bounds[0] == 0 and bounds[-1] == length and bounds == sorted(bounds)
        assert len(record["marker_boundary"]) == len(bounds) - 2
        assert len(record["steps"]) == len(bounds) - 1
        assert all(set(s) >= STEP_FIELDS for s in record["steps"])
        assert [(s["start"], s["end"]) for s in record["steps"]] == list(itertools.pairwise(bounds))
        assert record["correct"] is (SCORES[n] > 0) and record["ground_truth"] == "14"
        assert record["data_source"] == "arith" and record["global_step"] == 7 and record["stage"] == 1
        assert record["a_base"] == pytest.approx(float(view.base_advantages[n]))
        # Stage 1: every token of a step carries the step's final advantage A_base + alpha * A_attr.
        for s in record["steps"]:
            assert record["token_advantages"][s["start"] : s["end"]] == pytest.approx(
                [s["a_final"]] * (s["end"] - s["start"]), abs=2e-4
            )
            assert s["a_final"] == pytest.approx(record["a_base"] + 0.5 * s["a_attr"], abs=2e-4)
    assert any(len(r["steps"]) > 1 for r in read)
    assert all(s["C"] > 0 for s in read[0]["steps"]) and all(s["C"] < 0 for s in read[1]["steps"])


def test_selection_is_deterministic_and_mixes_correct_and_wrong() -> None:
    correct = [True] * 6 + [False] * 2
    prompts = [f"1,{i // 2}" for i in range(8)]
    chosen = select_dump_rows(correct, prompts, 3)
    assert chosen == select_dump_rows(correct, prompts, 3) == sorted(chosen)
    assert {correct[i] for i in chosen} == {True, False}
    assert select_dump_rows(correct, prompts, 0) == list(range(8))
    assert len(select_dump_rows([True] * 5, ["a"] * 5, 2)) == 2


def test_two_identical_runs_dump_the_same_responses_whatever_uids_verl_draws(
    step: tuple[ACPOBatch, ACPOStepResult], qwen_tokenizer: Any
) -> None:
    view, result = step
    table = token_text_table(qwen_tokenizer)
    runs = []
    for run in range(8):
        redrawn = dataclasses.replace(view, uids=[f"run{run}-{uid}" for uid in view.uids])
        records = build_step_records(redrawn, result, table, global_step=1, stage=1, max_responses=1)
        runs.append([(r["prompt"], r["response"]) for r in records])
    assert len(runs[0]) == 1 and all(r == runs[0] for r in runs)
    assert prompt_key(view, 0) != "" and "," in prompt_key(view, 0)


def test_a_failing_write_is_counted_not_raised(
    tmp_path: Path, step: tuple[ACPOBatch, ACPOStepResult], qwen_tokenizer: Any
) -> None:
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the dump folder should be")
    dumper = StepDumper(DumpConfig(enable=True, every_n_steps=2), str(blocker), 1, qwen_tokenizer)
    assert dumper.due(4) and not dumper.due(3)
    metrics = dumper.dump(4, *step)
    assert metrics == {"acpo/dump/responses": 0.0, "acpo/dump/write_failures": 1.0}
    good = StepDumper(DumpConfig(enable=True, max_responses=2), str(tmp_path / "dump"), 1, qwen_tokenizer)
    assert good.dump(1, *step) == {"acpo/dump/responses": 2.0, "acpo/dump/write_failures": 0.0}
    lines = (tmp_path / "dump" / "step_000001.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["correct"] for line in lines) == [False, True]


def test_dump_config_defaults_validation_and_directory() -> None:
    assert ACPOConfig().dump == DumpConfig(enable=False, dir=None, every_n_steps=1, max_responses=32)
    assert dump_directory(DumpConfig(), "ckpt/run") == "ckpt/run/acpo_dump"
    assert dump_directory(DumpConfig(dir="/x"), "ckpt/run") == "/x"
    with pytest.raises(ACPOConfigError, match=r"acpo\.dump\.every_n_steps"):
        ACPOConfig.from_dict({"dump": {"every_n_steps": 0}})
    with pytest.raises(ACPOConfigError, match=r"acpo\.dump\.bogus"):
        ACPOConfig.from_dict({"dump": {"bogus": 1}})
