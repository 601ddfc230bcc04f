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


def test_mean_se_first_gain_step_and_accuracy_at_a_step() -> None:
    assert bench.mean_se([0.2, 0.4]) == pytest.approx((0.3, math.sqrt(0.02) / math.sqrt(2)))
    assert bench.mean_se([0.5, None, math.nan]) == (0.5, 0.0)
    assert all(math.isnan(v) for v in bench.mean_se([]))
    points = [(0, 0.30), (3, 0.35), (6, 0.40), (9, 0.45)]
    assert bench.first_gain_step(points) == 6
    assert bench.first_gain_step([(0, 0.3), (3, 0.39)]) is None
    assert bench.first_gain_step([]) is None
    assert bench.accuracy_at(points, 6) == 0.40 and bench.accuracy_at(points, 7) == 0.40
    assert bench.accuracy_at(points, 100) == 0.45 and bench.accuracy_at([(8, 0.5)], 4) is None


def test_the_slip_step_of_a_record_without_boundaries_comes_from_its_steps() -> None:
    from recipe.acpo.testbed.slips import first_wrong_mark

    assert first_wrong_mark(_record(WRONG_SECOND, [0.1, -0.5, 0.0, 0.2]))["step"] == 1
    right = ["First, 3 + 4 = 7.\n", "Then, 7 * 2 = 14.\n", "Answer: 14"]
    assert first_wrong_mark(_record(right, [0.1, 0.1, 0.1])) is None


def test_credit_hit_rates_against_chance() -> None:
    from recipe.acpo.testbed.slips import credit_hit_rates

    hit = _record(WRONG_SECOND, [0.1, -0.5, 0.0, 0.2], a_attr=[0.0, -0.3, 0.0, 0.0])  # argmin C = step 1 = slip
    miss = _record(WRONG_SECOND, [-0.9, -0.5, 0.0, 0.2], a_attr=[0.0, 0.1, 0.0, 0.0])  # argmin C = step 0
    two_steps = _record(WRONG_SECOND[:2], [0.3, -0.1])  # slip in step 1 of 2, a hit
    correct = _record(["First, 3 + 4 = 7.\n", "Answer: 7"], [0.0, 1.0], correct=True)  # no hit to count
    lucky = _record(["First, 3 + 4 = 8.\n", "Then, 8 - 1 = 6.\n", "Answer: 6"], [0.0, 0.5, 1.0], correct=True)
    stats = credit_hit_rates([hit, miss, two_steps, correct, lucky])
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
    phase = {"responses": 5, "hit_rate": hit, "most_blamed_hit_rate": hit, "chance": 0.25, "a_attr_on_slip_mean": -0.1}
    return {
        "arm": arm,
        "seed": seed,
        "points": [[8 * i, a] for i, a in enumerate(accs)],
        "wall_s": 100.0 + seed,
        "median_step_s": 4.0 if arm == "grpo" else 5.0 + seed,
        "hit_rates": {"early": phase, "late": phase} if hit is not None else None,
        "hasty_share": {"early": 0.4, "late": 0.1 * (seed + 1), "all": 0.3},
        "budget": {"stage1_steps": 24},
    }


def test_summary_pairs_seeds_with_grpo_and_writes_table_json_and_plot(tmp_path: Path, capsys) -> None:
    runs = [
        _run("grpo", 0, [0.3, 0.35, 0.38, 0.40]),
        _run("grpo", 1, [0.3, 0.42, 0.44, 0.46]),
        _run("acpo", 0, [0.3, 0.45, 0.5, 0.52], hit=0.5),
        _run("acpo", 1, [0.3, 0.35, 0.4, 0.44], hit=0.3),
        _run("acpo_oracle", 2, [0.3, 0.5, 0.6, 0.7], hit=1.0),  # no GRPO run of seed 2: nothing to pair with
    ]
    for run, push in zip(runs[2:4], (-0.3, -0.1)):
        lines = {
            "hasty": {"a_final": push, "a_final_w1": -0.4, "a_base": -0.2},
            "careful": {"a_final": 0.0, "a_final_w1": 0.0, "a_base": 0.0},
        }
        run["hit_rates"] = {phase: dict(rates, line_advantage=lines) for phase, rates in run["hit_rates"].items()}
    summary = bench.summarize(runs)
    assert summary["grpo"]["acc_end"] == pytest.approx(bench.mean_se([0.40, 0.46]))
    assert summary["grpo"]["acc_at"]["16"] == pytest.approx(bench.mean_se([0.38, 0.44]))
    assert summary["grpo"]["first_gain_steps"] == [24, 8]
    assert summary["acpo"]["first_gain_steps"] == [8, 16]
    # Paired by seed: ACPO - GRPO at the end is +0.12 (seed 0) and -0.02 (seed 1).
    assert summary["acpo"]["diff_end"] == pytest.approx(bench.mean_se([0.12, -0.02]))
    assert summary["acpo"]["diff_at"]["16"] == pytest.approx(bench.mean_se([0.12, -0.04]))
    assert "diff_end" not in summary["grpo"] and "diff_end" not in summary["acpo_oracle"]
    assert summary["acpo"]["hit_early"] == pytest.approx((0.4, bench.mean_se([0.5, 0.3])[1]))
    assert summary["acpo"]["hasty_late"] == pytest.approx(bench.mean_se([0.1, 0.2]))
    assert "hit_early" not in summary["grpo"]
    # The push from hasty toward careful lines, where the runs' dumps gave it (not in runs analysed before it existed).
    assert summary["acpo"]["hasty_push_a_final_late"] == pytest.approx(bench.mean_se([-0.3, -0.1]))
    assert summary["acpo"]["hasty_push_a_base_late"] == pytest.approx((-0.2, 0.0))
    assert "hasty_push_a_final_late" not in summary["acpo_oracle"]
    table = bench.format_table(summary)
    assert "-0.20 (w=1 -0.40, A_base -0.20)" in table
    assert "(a) verl GRPO" in table and "(d) ACPO, spec's judge" in table and "(b)" not in table
    assert " 43.0 ±" in table  # grpo end accuracy, percent
    assert "+5.0 ±" in table  # ACPO's paired difference at the end, points
    assert summary["acpo"]["step_s_ratio"] == pytest.approx(bench.mean_se([5.0 / 4.0, 6.0 / 4.0]))

    results = tmp_path / "work" / "results"
    results.mkdir(parents=True)
    for r in runs:
        (results / f"{r['arm']}_seed{r['seed']}.json").write_text(json.dumps(r))
    out = tmp_path / "out"
    bench.main(["--work", str(tmp_path / "work"), "--out", str(out), "--summary-only", "--seeds", "0", "1", "2"])
    report = json.loads((out / "bench_learning.json").read_text())
    assert set(report["summary"]) == {"grpo", "acpo", "acpo_oracle"} and len(report["runs"]) == 5
    assert (out / "bench_learning.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "(e) ACPO, oracle credit" in capsys.readouterr().out


def test_arms_with_credit_are_also_paired_with_alpha_zero_the_credits_own_effect() -> None:
    runs = [
        _run("grpo", 0, [0.3, 0.35, 0.38, 0.40]),
        _run("acpo_noattr", 0, [0.3, 0.35, 0.40, 0.44]),
        _run("acpo_noattr", 1, [0.3, 0.35, 0.40, 0.44]),
        _run("acpo_oracle", 0, [0.3, 0.40, 0.45, 0.50]),
        _run("acpo_oracle", 1, [0.3, 0.30, 0.40, 0.40]),
    ]
    summary = bench.summarize(runs)
    # oracle - alpha = 0, seed by seed: +0.06 and -0.04 at the end, +0.05 and 0.0 at step 16.
    assert summary["acpo_oracle"]["credit_diff_end"] == pytest.approx(bench.mean_se([0.06, -0.04]))
    assert summary["acpo_oracle"]["credit_diff_at"]["16"] == pytest.approx(bench.mean_se([0.05, 0.0]))
    assert summary["acpo_oracle"]["diff_end"] == pytest.approx(bench.mean_se([0.10]))  # GRPO has seed 0 only
    assert "credit_diff_end" not in summary["acpo_noattr"] and "credit_diff_end" not in summary["grpo"]
    assert "end - (b), paired" in bench.format_table(summary)
    assert "end - (b)" not in bench.format_table(bench.summarize(runs[:1] + runs[3:]))  # no (b): no such row


def test_median_step_seconds_reads_verls_step_timing(tmp_path: Path) -> None:
    metrics = tmp_path / "stage1_metrics.jsonl"
    rows = [{"step": s, "data": {"training/global_step": s, "timing_s/step": t}} for s, t in enumerate([3, 9, 4], 1)]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows) + json.dumps({"data": {"val": 1}}) + "\n")
    assert bench.median_step_seconds([metrics, tmp_path / "missing.jsonl"]) == 4.0
    assert bench.median_step_seconds([tmp_path / "missing.jsonl"]) is None


def test_hasty_share_comes_from_verls_rollout_files_in_training_order(tmp_path: Path) -> None:
    files = []
    for step, output in enumerate(["Quick, 3 + 4 ~ 7.\nAnswer: 7", "First, 3 + 4 = 7.\nAnswer: 7"] * 3, start=1):
        path = tmp_path / f"{step}.jsonl"
        path.write_text(json.dumps({"input": "q", "output": output, "score": 1.0, "step": step}) + "\n{broken\n")
        files.append(path)
    shares = bench.hasty_share_by_phase(files)
    assert shares == {"early": 0.5, "late": 0.5, "all": 0.5}
    assert bench.hasty_share_by_phase(files[:1])["early"] == 1.0


@pytest.mark.parametrize(
    "argv", [["--arms", "grpo", "ppo"], ["--seeds", "0", "0"], ["--seeds", "-1"], ["--seeds", "x"]]
)
def test_an_unknown_arm_or_a_bad_seed_list_is_refused_before_any_run(tmp_path: Path, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--work", str(tmp_path / "work"), *argv])
    assert exit_info.value.code == 2
    assert not (tmp_path / "work" / "runs").exists()


def test_each_arm_differs_from_the_shared_command_only_by_what_defines_it(tmp_path: Path) -> None:
    args = bench.argparse.Namespace(batch_size=16, rollout_n=8, lr=2e-4, val_n=2, test_freq=8)
    common = (Path("m"), tmp_path, 48, 3, Path("t.parquet"), Path("v.parquet"), args, "/tmp/r")

    def overrides(arm: str) -> set[str]:  # the run's name says the arm; the rest must not
        return {o for o in bench.stage_command(arm, 1, *common) if not o.startswith("trainer.experiment_name=")}

    base = overrides("acpo") - set(bench.ARM_OVERRIDES["acpo"])
    assert "actor_rollout_ref.rollout.seed=3" in base and "data.seed=3" in base
    assert any(o.startswith("trainer.rollout_data_dir=") for o in base)
    for arm, defining in bench.ARM_OVERRIDES.items():
        assert overrides(arm) - base == set(defining) and base - overrides(arm) == set()
    # Every ACPO arm names its judge: the testbed's default may change, an arm may not.
    assert all(any(o.startswith("acpo.attribution.judge=") for o in d) for d in bench.ARM_OVERRIDES.values())
    # bench_testbed_step times the demo's config as it is: no arm's switches.
    assert overrides("acpo") - set(bench.stage_command("acpo", 1, *common, ())) == set(bench.ARM_OVERRIDES["acpo"])
    grpo = bench.stage_command("grpo", 1, *common)
    assert "grpo_cpu_testbed" in grpo and "actor_rollout_ref.rollout.seed=3" in grpo


def test_a_work_folder_built_for_another_task_is_refused_before_any_run(tmp_path: Path, capsys) -> None:
    work = tmp_path / "work"
    bench.main(["--work", str(work), "--num-ops", "4-6", "--summary-only"])
    assert json.loads((work / "task.json").read_text())["num_ops"] == [4, 6]
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--work", str(work), "--summary-only"])  # the default task: 2-3 operations
    assert exit_info.value.code == 2
    assert "built for the task" in capsys.readouterr().err
    old = tmp_path / "old"  # a folder from before the record holds the default task
    (old / "policy").mkdir(parents=True)
    with pytest.raises(SystemExit):
        bench.main(["--work", str(old), "--num-ops", "5", "--summary-only"])
    bench.main(["--work", str(old), "--summary-only"])
    assert json.loads((old / "task.json").read_text())["num_ops"] == [2, 3]


def test_line_kind_advantages_weigh_hasty_and_careful_steps_by_their_tokens() -> None:
    from recipe.acpo.testbed.slips import line_kind_advantages

    lines = ["First, 3 + 4 = 7.\n", "Quick, 7 * 2 ~ 15.\n", "Then, 15 - 1 = 14.\n", "Answer: 14"]
    record = _record(lines, [0.0, -1.0, 0.0, 0.0])
    record["a_base"] = -0.5
    for step, a_final, s in zip(record["steps"], [-0.2, -1.4, -0.2, -0.2], [0.5, -3.0, 0.5, 0.0]):
        step["a_final"], step["s"] = a_final, s
    record["steps"][2]["end"] = 8  # the careful step 2 takes the answer line's tokens too: 4 tokens
    del record["steps"][3]
    zero_variance = dict(record, a_base=0.0)  # no signal: left out
    stats = line_kind_advantages([record, zero_variance])
    # w = 1 from the same s: |A_base| s = (0.25, -1.5, 0.25), token mean -0.1875, alpha 0.5 of the centred term.
    hasty_w1, careful_w1 = -0.5 + 0.5 * (-1.5 + 0.1875), -0.5 + 0.5 * (0.25 + 0.1875)
    assert stats["hasty"] == pytest.approx({"a_final": -1.4, "a_final_w1": hasty_w1, "a_base": -0.5, "tokens": 2})
    assert stats["careful"] == pytest.approx({"a_final": -0.2, "a_final_w1": careful_w1, "a_base": -0.5, "tokens": 6})
    assert bench.hasty_push({"hasty": stats["hasty"], "careful": stats["careful"]}, "a_final") == pytest.approx(-1.2)
    assert bench.hasty_push(stats, "a_base") == pytest.approx(0.0)
    assert math.isnan(bench.hasty_push(None, "a_final"))
    assert math.isnan(line_kind_advantages([])["hasty"]["a_final"])
