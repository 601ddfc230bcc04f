"""The pure analysis of benchmarks/bench_learning.py: gain step, mean ± std, attribution hit rate, outputs."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_learning.py"
_SPEC = importlib.util.spec_from_file_location("bench_learning", _PATH)
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)


def _record(lines: list[str], contributions: list[float], correct: bool = False, a_attr=None) -> dict:
    """A dump record whose tokens are the response's lines (one step per line) split in two tokens each."""
    tokens = []
    for line in lines:
        half = len(line) // 2
        tokens += [line[:half], line[half:]]
    steps = [
        {"start": 2 * k, "end": 2 * k + 2, "C": c, "a_attr": (a_attr or [0.0] * len(lines))[k]}
        for k, c in enumerate(contributions)
    ]
    return {"tokens": tokens, "steps": steps, "correct": correct, "response": "".join(tokens)}


WRONG_SECOND = ["First, 3 + 4 = 7.\n", "Then, 7 * 2 = 15.\n", "Then, 15 - 1 = 14.\n", "Answer: 14"]


def test_mean_std_and_first_gain_step() -> None:
    assert bench.mean_std([0.2, 0.4]) == pytest.approx((0.3, math.sqrt(0.02)))
    assert bench.mean_std([0.5]) == (0.5, 0.0)
    assert all(math.isnan(v) for v in bench.mean_std([]))
    points = [(0, 0.30), (3, 0.35), (6, 0.40), (9, 0.45)]
    assert bench.first_gain_step(points) == 6
    assert bench.first_gain_step([(0, 0.3), (3, 0.39)]) is None
    assert bench.first_gain_step([]) is None


def test_the_slip_step_of_a_record_without_boundaries_comes_from_its_steps() -> None:
    from recipe.acpo.testbed.slips import first_wrong_mark

    assert first_wrong_mark(_record(WRONG_SECOND, [0.1, -0.5, 0.0, 0.2]))["step"] == 1
    right = ["First, 3 + 4 = 7.\n", "Then, 7 * 2 = 14.\n", "Answer: 14"]
    assert first_wrong_mark(_record(right, [0.1, 0.1, 0.1])) is None


def test_hit_stats_against_chance() -> None:
    hit = _record(WRONG_SECOND, [0.1, -0.5, 0.0, 0.2], a_attr=[0.0, -0.3, 0.0, 0.0])  # argmin C = step 1 = slip
    miss = _record(WRONG_SECOND, [-0.9, -0.5, 0.0, 0.2], a_attr=[0.0, 0.1, 0.0, 0.0])  # argmin C = step 0
    two_steps = _record(WRONG_SECOND[:2], [0.3, -0.1])  # slip in step 1 of 2, a hit
    correct = _record(["First, 3 + 4 = 7.\n", "Answer: 7"], [0.0, 1.0], correct=True)  # no hit to count
    lucky = _record(["First, 3 + 4 = 8.\n", "Then, 8 - 1 = 6.\n", "Answer: 6"], [0.0, 0.5, 1.0], correct=True)
    stats = bench.hit_stats([hit, miss, two_steps, correct, lucky])
    assert stats["correct_responses"] == 2
    assert stats["correct_with_wrong_step_frac"] == pytest.approx(1 / 2)
    assert stats["responses"] == 3
    assert stats["hit_rate"] == pytest.approx(2 / 3)
    # Most blamed = the most negative A_attr: step 1 in ``hit``; none in ``miss`` and ``two_steps`` (no A_attr < 0).
    assert stats["most_blamed_hit_rate"] == pytest.approx(1 / 3)
    assert stats["chance"] == pytest.approx((1 / 4 + 1 / 4 + 1 / 2) / 3)
    assert stats["a_attr_on_slip_mean"] == pytest.approx((-0.3 + 0.1 + 0.0) / 3)
    assert stats["a_attr_on_slip_negative_frac"] == pytest.approx(1 / 3)


def test_dump_hit_rates_splits_early_and_late(tmp_path: Path) -> None:
    hit = _record(WRONG_SECOND, [0.1, -0.5, 0.0, 0.2])
    miss = _record(WRONG_SECOND, [-0.9, -0.5, 0.0, 0.2])
    files = []
    for step, record in enumerate([miss, miss, hit, hit, hit, hit], start=1):
        path = tmp_path / f"step_{step:06d}.jsonl"
        path.write_text(json.dumps(record) + "\n")
        files.append(path)
    rates = bench.dump_hit_rates(files)
    assert rates["dumped_steps"] == 6
    assert rates["early"]["hit_rate"] == 0.0 and rates["early"]["responses"] == 2
    assert rates["late"]["hit_rate"] == 1.0 and rates["late"]["chance"] == pytest.approx(0.25)


def _run(arm: str, seed: int, accs: list[float], hit: float | None = None) -> dict:
    phase = {"responses": 5, "hit_rate": hit, "chance": 0.25, "a_attr_on_slip_mean": -0.1}
    return {
        "arm": arm,
        "seed": seed,
        "points": [[3 * i, a] for i, a in enumerate(accs)],
        "wall_s": 100.0 + seed,
        "hit_rates": {"early": phase, "late": phase} if hit is not None else None,
        "budget": {"stage1_steps": 6},
    }


def test_summary_table_json_and_plot(tmp_path: Path, capsys) -> None:
    runs = [
        _run("grpo", 0, [0.3, 0.35, 0.38]),
        _run("grpo", 1, [0.3, 0.42, 0.44]),
        _run("acpo", 0, [0.3, 0.45, 0.5], hit=0.5),
        _run("acpo", 1, [0.3, 0.35, 0.4], hit=0.3),
    ]
    summary = bench.summarize(runs)
    assert summary["grpo"]["acc_end"] == pytest.approx(bench.mean_std([0.38, 0.44]))
    assert summary["grpo"]["first_gain_steps"] == [None, 3]
    assert summary["acpo"]["first_gain_steps"] == [3, 6]
    assert summary["acpo"]["hit_early"] == pytest.approx((0.4, bench.mean_std([0.5, 0.3])[1]))
    assert "hit_early" not in summary["grpo"]
    table = bench.format_table(summary)
    assert "(a) verl GRPO" in table and "(c) ACPO" in table and "(b)" not in table
    assert " 41.0 ±" in table  # grpo end accuracy, percent

    results = tmp_path / "work" / "results"
    results.mkdir(parents=True)
    for r in runs:
        (results / f"{r['arm']}_seed{r['seed']}.json").write_text(json.dumps(r))
    out = tmp_path / "out"
    bench.main(["--work", str(tmp_path / "work"), "--out", str(out), "--summary-only"])
    report = json.loads((out / "bench_learning.json").read_text())
    assert set(report["summary"]) == {"grpo", "acpo"} and len(report["runs"]) == 4
    assert (out / "bench_learning.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "(c) ACPO" in capsys.readouterr().out
