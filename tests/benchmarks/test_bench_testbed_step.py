"""benchmarks/bench_testbed_step.py: overrides replace the demo's, timers pair by step, variants are checked."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_testbed_step.py"
_SPEC = importlib.util.spec_from_file_location("bench_testbed_step", _PATH)
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)


def test_an_override_replaces_the_one_of_the_same_key_and_new_keys_are_appended() -> None:
    command = ["python", "-m", "x", "trainer.test_freq=8", "+a.b=1", "c=2"]
    assert bench.with_overrides(command, ["trainer.test_freq=-1", "a.b=3", "d=4"]) == [
        *("python", "-m", "x", "c=2"),
        *("trainer.test_freq=-1", "a.b=3", "d=4"),
    ]


def _metrics(path: Path, steps: dict[int, dict[str, float]]) -> Path:
    lines = [json.dumps({"step": s, "data": {f"timing_s/{k}": v for k, v in t.items()}}) for s, t in steps.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_timers_pair_each_step_with_the_baselines_same_step_and_repeat(tmp_path: Path) -> None:
    base = [
        bench.step_timers(_metrics(tmp_path / "b0", {1: {"step": 9.0}, 2: {"step": 4.0}, 3: {"step": 3.0}}), 1),
        bench.step_timers(_metrics(tmp_path / "b1", {1: {"step": 9.0}, 2: {"step": 5.0}, 3: {"step": 6.0}}), 1),
    ]
    assert base[0] == {2: {"step": 4.0}, 3: {"step": 3.0}}  # the warm-up step is left out
    faster = [{2: {"step": 3.5}, 3: {"step": 2.5}}, {2: {"step": 4.5}, 3: {"step": 5.5}}]
    summary = bench.paired_summary({bench.BASELINE: base, "faster": faster})
    assert summary[bench.BASELINE]["step"] == {"median": 4.5}
    # Unpaired medians differ by 0.5 as well here, but the pairs are what cancels a slow run.
    assert summary["faster"]["step"] == {"median": 4.0, "paired_diff": -0.5, "pairs": 4}
    table = bench.format_summary(summary)
    assert "(-0.500)" in table and "gen" in table.splitlines()[0]


def test_variants_need_a_name_of_their_own_and_key_value_overrides() -> None:
    assert bench.parse_variants(None) == bench.DEFAULT_VARIANTS
    assert bench.parse_variants([["two workers", "actor_rollout_ref.rollout.agent.num_workers=2"]]) == {
        "two workers": ["actor_rollout_ref.rollout.agent.num_workers=2"]
    }
    with pytest.raises(ValueError, match="needs KEY=VALUE or env:NAME=VALUE overrides"):
        bench.parse_variants([["x", "nokey"]])
    with pytest.raises(ValueError, match="needs KEY=VALUE or env:NAME=VALUE overrides"):
        bench.parse_variants([["x", "env:=1"]])
    with pytest.raises(ValueError, match="its own name"):
        bench.parse_variants([["baseline", "a=1"]])
    with pytest.raises(ValueError, match="its own name"):
        bench.parse_variants([["x", "a=1"], ["x", "b=2"]])


def test_the_floor_alone_runs_only_the_baseline_and_prints_as_one_more_row() -> None:
    assert bench.parse_variants(None, floor=True) == {}
    assert bench.parse_variants([["x", "a=1"]], floor=True) == {"x": ["a=1"]}
    summary = {
        bench.BASELINE: {"gen": {"median": 2.0}, "step": {"median": 4.5}},
        bench.FLOOR: {"gen": {"median": 0.25}, "step": {"median": 1.25}},
    }
    floor_row = bench.format_summary(summary).splitlines()[2]
    assert floor_row.startswith(bench.FLOOR) and "0.250" in floor_row and "1.250" in floor_row


def test_env_overrides_set_the_variants_environment_and_leave_hydra_the_rest() -> None:
    overrides = bench.parse_variants([["no freeze", "env:ACPO_GC_FREEZE=0", "a.b=1", "env:X=y=z"]])["no freeze"]
    hydra_overrides, env = bench.split_env_overrides(overrides)
    assert hydra_overrides == ["a.b=1"]
    assert env == {"ACPO_GC_FREEZE": "0", "X": "y=z"}
    assert bench.split_env_overrides(["a=1"]) == (["a=1"], {})
