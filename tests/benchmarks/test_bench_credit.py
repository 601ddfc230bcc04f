"""benchmarks/bench_credit.py: its figures on hand-made credit, and a whole run on a tiny labelled-trace fixture.

The hit rates themselves come from the benchmark's runs (docs/algorithm.md §3.2), never from here.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_credit", ROOT / "benchmarks" / "bench_credit.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["bench_credit"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


bench = _load_bench()


def _credit(correct: bool, c: list[float], a: list[float], slip: int | None, ratio: float = 1.0) -> Any:
    return bench.ResponseCredit(
        correct=correct, contributions=c, attributed=a, slip_step=slip, ratio_sum=ratio * len(c), ratio_tokens=len(c)
    )


def test_figures_count_hits_chance_position_rule_and_rank_exactly() -> None:
    rows = [
        _credit(False, [1.0, -2.0, 0.5], [0.3, -0.4, 0.1], slip=1, ratio=0.5),  # both hit; both other steps above
        _credit(False, [-1.0, 2.0, 0.5], [0.3, 0.4, 0.1], slip=1, ratio=0.7),  # no negative A_attr; lowest C at 0
        _credit(False, [3.0, 1.0], [0.2, -0.1], slip=0, ratio=0.9),  # blamed 1, lowest C 1: misses
        _credit(False, [0.0], [0.0], slip=0),  # one step: not counted
        _credit(False, [0.5, 0.2], [0.1, 0.1], slip=None),  # unlabelled: not counted
        _credit(True, [1.0, 1.0], [0.5, 0.5], slip=None, ratio=1.5),
    ]
    f = bench.credit_figures(rows)
    assert f["responses"] == 3
    assert f["most_blamed_hit"] == pytest.approx(1 / 3)
    assert f["lowest_c_hit"] == pytest.approx(1 / 3)
    assert f["chance"] == pytest.approx((1 / 3 + 1 / 3 + 1 / 2) / 3)
    # K = 3: slip at 1 twice (rule hits both); K = 2: slip at 0 once.
    assert f["position_rule"] == pytest.approx(1.0)
    # Share of other steps with a higher C: row 1 both (1.0), row 2 none (0.0), row 3 none (0.0).
    assert f["others_above_slip"] == pytest.approx(1 / 3)
    assert f["a_attr_slip"] == pytest.approx((-0.4 + 0.4 + 0.2) / 3)
    assert f["a_attr_before_slip"] == pytest.approx((0.3 + 0.3) / 2)
    assert f["a_final_over_a_base_right"] == pytest.approx(1.5)
    assert f["a_final_over_a_base_wrong"] == pytest.approx((1.5 + 2.1 + 1.8 + 1.0 + 2.0) / (3 + 3 + 2 + 1 + 2))
    assert f["wrong_responses"] == 5 and f["wrong_unlabelled_or_one_step"] == 2
    assert set(f["by_slip_step"]) == {"0", "1"} and f["by_slip_step"]["1"]["responses"] == 2


def test_unknown_variants_are_refused_before_anything_runs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench.main(["traces", "missing.jsonl", "--variants", "spec,bogus"])
    assert "bogus" in capsys.readouterr().err


def _write_traces(path: Path) -> None:
    rows = [
        {"question": "Ann has 3 pens and buys 4. She gives 2 away.", "steps": ["3 + 4 = 8.", "8 - 2 = 6.", "So 6."],
         "target": "5", "mistake_index": 0},
        {"question": "Bo has 10 cups and breaks 3. He buys 5.", "steps": ["10 - 3 = 7.", "7 + 5 = 13.", "So 13."],
         "target": "12", "mistake_index": 1},
        {"question": "Cy reads 4 pages a day for 3 days.", "steps": ["4 * 3 = 12.", "So 12."],
         "target": "12", "mistake_index": None},
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_traces_run_writes_every_variant_and_the_oracle_finds_each_slip(tiny_model_dir: Path, tmp_path: Path) -> None:
    traces = tmp_path / "traces.jsonl"
    _write_traces(traces)
    out = tmp_path / "credit.json"
    report = bench.main(["traces", str(traces), "--model", str(tiny_model_dir), "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert set(report["variants"]) == set(bench.VARIANTS)
    for name, figures in report["variants"].items():
        assert figures["responses"] == 2, name
        assert figures["chance"] == pytest.approx(1 / 3)
    assert report["variants"]["oracle"]["lowest_c_hit"] == 1.0
    assert report["variants"]["oracle"]["others_above_slip"] == 1.0
    # Redistribution keeps each response's total: A_final / A_base per token averages exactly 1.
    assert report["variants"]["redistributed"]["a_final_over_a_base_wrong"] == pytest.approx(1.0, abs=1e-5)
    assert report["variants"]["spec"]["a_final_over_a_base_wrong"] != pytest.approx(1.0, abs=1e-5)


def test_dump_mode_refuses_a_folder_without_dump_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no step_"):
        bench.main(["dump", str(tmp_path)])
    (tmp_path / "step_000001.jsonl").write_text('{"steps": 3}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"step_000001\.jsonl: line 1"):
        bench.main(["dump", str(tmp_path)])


def test_testbed_samples_the_held_out_problems_of_the_task_the_policy_was_built_for(tiny_policy: Path) -> None:
    from acpo_core.config import ACPOConfig
    from recipe.acpo.testbed.task import TaskSpec

    batches, _, _, _, info = bench.testbed_batch(
        tiny_policy, 3, 2, 0, ACPOConfig(), log=lambda _: None, task=TaskSpec(num_ops=(5, 5))
    )
    assert info["responses"] == 6
    from transformers import AutoTokenizer

    prompts = AutoTokenizer.from_pretrained(tiny_policy).batch_decode(
        batches["all"].prompt_ids, skip_special_tokens=True
    )
    # "Start at 7, add 3, subtract 2, ...": five operations after the start value.
    assert all(prompt.split("Step by step: ")[1].count(", ") == 5 for prompt in prompts)


def test_the_lookahead_judge_scores_every_judged_variant_again_and_leaves_the_oracle_out(
    tiny_policy: Path, tmp_path: Path
) -> None:
    args = ["testbed", "--policy", str(tiny_policy), "--problems", "6", "--samples", "4", "--lookahead"]
    report = bench.main([*args, "--variants", "spec,value_only,oracle", "--out", str(tmp_path / "credit.json")])
    assert set(report["variants"]) == {"spec", "value_only", "oracle", "spec+lookahead", "value_only+lookahead"}
    for name in ("spec", "value_only"):
        assert report["variants"][f"{name}+lookahead"]["responses"] == report["variants"][name]["responses"]


def test_labelled_traces_take_the_lookahead_judge_too(tiny_model_dir: Path, tmp_path: Path) -> None:
    traces = tmp_path / "traces.jsonl"
    _write_traces(traces)
    args = ["traces", str(traces), "--model", str(tiny_model_dir), "--variants", "value_only,oracle", "--lookahead"]
    report = bench.main(args)
    assert set(report["variants"]) == {"value_only", "oracle", "value_only+lookahead"}
    looked, plain = report["variants"]["value_only+lookahead"], report["variants"]["value_only"]
    assert looked["responses"] == plain["responses"]
