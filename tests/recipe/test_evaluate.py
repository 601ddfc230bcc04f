"""recipe.acpo.validation.evaluate (``python -m recipe.acpo.evaluate``): Acc@k tables from verl's validation dump,
input checks, and a real validation run on CPU."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from recipe.acpo.validation import evaluate as ev
from recipe.acpo.validation.generations import GenerationsError

REPO = Path(__file__).resolve().parents[2]


def _sample(source: str, prompt: str, session: int, acc: float | None, score: float | None = None) -> dict[str, Any]:
    sample: dict[str, Any] = {"uid": f"{prompt}_{session}_0", "data_source": source, "score": score}
    if acc is not None:
        sample["acc"] = acc
    return sample


def _write_benchmark(path: Path, source: str, answers: list[str]) -> Path:
    rows = [
        {
            "data_source": source,
            "prompt": [{"role": "user", "content": f"What is {a} + 0? Answer: $Answer"}],
            "ability": "MATH",
            "reward_model": {"ground_truth": a, "style": "rule"},
            "extra_info": {"index": f"{source}-{i}"},
        }
        for i, a in enumerate(answers)
    ]
    pd.DataFrame(rows).to_parquet(path)
    return path


def test_acc_at_k_averages_samples_per_problem_then_problems_and_the_average_is_macro() -> None:
    # aime: problem p1 2/4 right, p2 4/4 right -> Acc@4 = (0.5 + 1.0) / 2; Pass@4 = 1.0
    # amc: one problem, 1/4 right -> Acc@4 = 0.25; Pass@4 = 1.0; math: one problem, 0/4 -> 0.0, Pass@4 0.0
    accs = {"aime": {"p1": [1, 0, 1, 0], "p2": [1, 1, 1, 1]}, "amc": {"p3": [0, 0, 1, 0]}, "math": {"p4": [0] * 4}}
    samples = [
        _sample(source, prompt, session, float(a))
        for source, problems in accs.items()
        for prompt, values in problems.items()
        for session, a in enumerate(values)
    ]
    result = ev.compute_table(samples, k=4, expected_problems={"aime": 2, "amc": 1, "math": 1})
    by_name = {row.benchmark: row for row in result.rows}
    expected_acc = {
        source: sum(sum(v) / 4 for v in problems.values()) / len(problems) for source, problems in accs.items()
    }
    for source, acc in expected_acc.items():
        assert by_name[source].acc_at_k == pytest.approx(acc)
    assert by_name["aime"].pass_at_k == 1.0 and by_name["math"].pass_at_k == 0.0
    # macro: the mean of the three benchmark rows, not the pooled mean over the four problems
    assert result.average_acc_at_k == pytest.approx(sum(expected_acc.values()) / 3)
    assert result.average_acc_at_k != pytest.approx(sum(sum(v) for p in accs.values() for v in p.values()) / 16)
    assert [row.benchmark for row in result.rows] == ["aime", "amc", "math"]


def test_a_sample_missing_from_the_dump_counts_as_wrong() -> None:
    samples = [_sample("gsm", "p1", 0, 1.0), _sample("gsm", "p1", 1, 1.0)]
    row = ev.compute_table(samples, k=4).rows[0]
    assert row.acc_at_k == pytest.approx(0.5)
    assert row.missing_samples == 2 and row.samples == 2


def test_score_is_the_accuracy_when_the_scorer_reports_no_acc_and_out_of_range_scores_are_rejected() -> None:
    samples = [_sample("gsm", "p1", 0, None, score=1.0), _sample("gsm", "p1", 1, None, score=0.0)]
    assert ev.compute_table(samples, k=2).rows[0].acc_at_k == pytest.approx(0.5)
    with pytest.raises(GenerationsError, match=r"sample 0: accuracy -1.0 is not a number in \[0, 1\]"):
        ev.compute_table([_sample("gsm", "p1", 0, None, score=-1.0)], k=1)


def test_a_dump_without_data_source_names_the_sample_and_the_wrapper() -> None:
    with pytest.raises(ev.EvaluationError, match=r"sample 1: no 'data_source'.*TaggingRewardManager"):
        ev.compute_table([_sample("gsm", "p1", 0, 1.0), {"uid": "p1_1_0", "acc": 1.0}], k=2)


def test_more_than_k_samples_or_a_benchmark_without_samples_is_an_error() -> None:
    samples = [_sample("gsm", "p1", s, 1.0) for s in range(3)]
    with pytest.raises(ev.EvaluationError, match="more than k=2 samples"):
        ev.compute_table(samples, k=2)
    with pytest.raises(ev.EvaluationError, match=r"no generation was dumped for benchmark\(s\) \['amc'\]"):
        ev.compute_table(samples, k=3, expected_problems={"gsm": 1, "amc": 5})


def test_markdown_table_has_one_row_per_benchmark_and_the_average() -> None:
    samples = [_sample("aime", "p1", 0, 1.0), _sample("aime", "p1", 1, 0.0), _sample("amc", "p2", 0, 0.0)]
    samples.append(_sample("amc", "p2", 1, 0.0))
    markdown = ev.compute_table(samples, k=2).to_markdown()
    lines = markdown.strip().splitlines()
    assert lines[0].startswith("| Benchmark | Problems | Acc@2 (%)")
    assert lines[2] == "| aime | 1 | 50.00 | 100.00 |"
    assert lines[3] == "| amc | 1 | 0.00 | 0.00 |"
    assert lines[4] == "| **Average** | 2 | **25.00** | 50.00 |"


def test_benchmark_file_checks_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ev.EvaluationError, match=r"benchmark file not found: .*nope\.parquet"):
        ev.inspect_benchmark(tmp_path / "nope.parquet")
    not_parquet = tmp_path / "bench.parquet"
    not_parquet.write_text("problem,answer\n1+1,2\n")
    with pytest.raises(ev.EvaluationError, match=r"bench\.parquet is not a readable parquet file"):
        ev.inspect_benchmark(not_parquet)
    no_reward = tmp_path / "no_reward.parquet"
    pd.DataFrame({"data_source": ["x"], "prompt": [[{"role": "user", "content": "q"}]]}).to_parquet(no_reward)
    with pytest.raises(ev.EvaluationError, match=r"no_reward.parquet lacks the column\(s\) \['reward_model'\]"):
        ev.inspect_benchmark(no_reward)
    good = _write_benchmark(tmp_path / "good.parquet", "aime2024", ["1", "2", "3"])
    assert ev.inspect_benchmark(good).problems_per_source == {"aime2024": 3}


def _run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "recipe.acpo.evaluate", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def test_help_documents_every_option() -> None:
    done = _run_cli("--help")
    assert done.returncode == 0
    for option in ev.build_parser()._option_string_actions:
        assert option in done.stdout
    assert "Acc@k" in done.stdout and "results.md" in done.stdout


def test_missing_model_or_data_file_fails_before_anything_runs(tmp_path: Path, tiny_model_dir: Path) -> None:
    bench = _write_benchmark(tmp_path / "b.parquet", "gsm", ["1"])
    done = _run_cli("--model", str(tmp_path / "no_model"), "--data", str(bench), "--dry-run")
    assert done.returncode == 2 and f"model not found: {tmp_path / 'no_model'}" in done.stderr
    done = _run_cli("--model", str(tiny_model_dir), "--data", str(tmp_path / "missing.parquet"), "--dry-run")
    assert done.returncode == 2 and "benchmark file not found" in done.stderr and "missing.parquet" in done.stderr
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    done = _run_cli("--model", str(empty), "--data", str(bench), "--dry-run")
    assert done.returncode == 2 and "neither a Hugging Face model folder" in done.stderr


def test_verl_checkpoint_folders_resolve_to_the_latest_actor(tmp_path: Path) -> None:
    for step in (5, 10):
        (tmp_path / f"global_step_{step}" / "actor").mkdir(parents=True)
    assert ev.find_verl_actor_checkpoint(tmp_path) == tmp_path / "global_step_10" / "actor"
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("5")
    assert ev.find_verl_actor_checkpoint(tmp_path) == tmp_path / "global_step_5" / "actor"
    assert ev.find_verl_actor_checkpoint(tmp_path / "global_step_10") == tmp_path / "global_step_10" / "actor"
    actor = tmp_path / "global_step_10" / "actor"
    assert ev.find_verl_actor_checkpoint(actor) == actor
    assert ev.find_verl_actor_checkpoint(tmp_path / "global_step_10" / "actor" / "huggingface") is None
    # a step named by verl's tracker but without an actor folder: the latest step that has one
    (tmp_path / "global_step_12").mkdir()
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("12")
    assert ev.find_verl_actor_checkpoint(tmp_path) == tmp_path / "global_step_10" / "actor"


def test_a_corrupt_checkpoint_tracker_is_named_before_anything_runs(tmp_path: Path) -> None:
    bench = _write_benchmark(tmp_path / "b.parquet", "gsm", ["1"])
    (tmp_path / "ckpt" / "global_step_3" / "actor").mkdir(parents=True)
    (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").write_text("three")
    done = _run_cli("--model", str(tmp_path / "ckpt"), "--data", str(bench), "--dry-run")
    assert done.returncode == 2 and "latest_checkpointed_iteration.txt should hold a step number" in done.stderr


def test_validation_command_sets_verl_validation_only_keys(tmp_path: Path, tiny_model_dir: Path) -> None:
    bench = _write_benchmark(tmp_path / "b.parquet", "gsm", ["1", "2"])
    command = ev.build_validation_command(
        model=tiny_model_dir,
        data_files=[bench],
        k=3,
        temperature=0.7,
        top_p=0.9,
        top_k=-1,
        max_prompt_length=128,
        max_response_length=64,
        config_name="acpo_cpu",
        dump_dir=tmp_path / "dump",
        checkpoint_dir=tmp_path / "ckpt",
        config_overrides=["reward.reward_manager.name=X"],
        n_gpus=None,
        nnodes=1,
        tensor_parallel_size=None,
        experiment_name="e",
        extra_overrides=["data.val_batch_size=4"],
    )
    assert command[1:5] == ["-m", "recipe.acpo.main_acpo", "--config-name", "acpo_cpu"]
    for override in (
        "trainer.val_only=True",
        "trainer.val_before_train=True",
        "trainer.resume_mode=disable",
        "actor_rollout_ref.rollout.val_kwargs.n=3",
        "actor_rollout_ref.rollout.val_kwargs.do_sample=True",
        "actor_rollout_ref.rollout.val_kwargs.temperature=0.7",
        "data.max_response_length=64",
        f"trainer.validation_data_dir='{tmp_path / 'dump'}'",
        "reward.reward_manager.name=X",
    ):
        assert override in command
    # the user's overrides come after the tool's defaults, and the tool's config overrides (composed from the user's)
    # come last so that a user's reward manager gets wrapped rather than replacing the wrapper
    assert command[-2:] == ["data.val_batch_size=4", "reward.reward_manager.name=X"]


PARITY_SCORER = """
def parity(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    return float(len(solution_str) % 2 == 0)
"""


@pytest.mark.e2e  # starts verl, a fresh interpreter or a training run: slow on 2 cores
def test_cpu_evaluation_table_matches_a_direct_count_of_the_dumped_scores(tmp_path: Path, tiny_model_dir: Path) -> None:
    # Real verl validation on CPU (Ray, FSDP2 worker, CPU rollout). A random tiny model never answers, so the run's
    # reward is swapped for a scorer that gives every sample a 0 or 1 from its text, to make the counts non-trivial;
    # the tool wraps whichever reward manager the run is configured with.
    k = 3
    bench_a = _write_benchmark(tmp_path / "a.parquet", "bench_a", ["1", "2", "3"])
    bench_b = _write_benchmark(tmp_path / "b.parquet", "bench_b", ["4", "5"])
    scorer = tmp_path / "parity_scorer.py"
    scorer.write_text(PARITY_SCORER)
    out = tmp_path / "eval"
    ray_tmp = Path(tempfile.mkdtemp(prefix="acpo_ray_", dir="/tmp"))
    try:
        done = _run_cli(
            "--cpu",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(bench_a),
            str(bench_b),
            "--k",
            str(k),
            "--max-response-length",
            "12",
            "--max-prompt-length",
            "128",
            "--output-dir",
            str(out),
            f"ray_kwargs.ray_init._temp_dir={ray_tmp}",
            "reward.reward_manager.source=register",
            "reward.reward_manager.name=naive",
            f"reward.custom_reward_function.path={scorer}",
            "reward.custom_reward_function.name=parity",
            timeout=300,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        left = subprocess.run(["pgrep", "-f", str(ray_tmp)], capture_output=True, text=True).stdout.split()
        assert left == [], f"Ray processes left behind: {left}"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)

    results = json.loads((out / "results.json").read_text())
    dump = [json.loads(line) for f in (out / "generations").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert len(dump) == (3 + 2) * k
    # The direct count: every dumped score, grouped by benchmark and by problem (verl keys samples uid_session_index).
    scores: dict[str, dict[str, list[float]]] = {}
    for sample in dump:
        # the dumped score is the scorer's verdict on the dumped text
        assert sample["score"] == float(len(sample["output"]) % 2 == 0)
        problem = sample["uid"].rsplit("_", 2)[0]
        scores.setdefault(sample["data_source"], {}).setdefault(problem, []).append(sample["score"])
    direct = {name: sum(sum(s) / k for s in problems.values()) / len(problems) for name, problems in scores.items()}
    rows = {row["benchmark"]: row for row in results["benchmarks"]}
    assert set(rows) == {"bench_a", "bench_b"}
    assert (rows["bench_a"]["problems"], rows["bench_b"]["problems"]) == (3, 2)
    for name, acc in direct.items():
        assert rows[name]["acc_at_k"] == pytest.approx(acc)
        assert rows[name]["samples"] == len(scores[name]) * k
        # verl's own validation metric agrees with the table
        assert results["verl_reported"][name] == pytest.approx(acc)
    assert results["average"]["acc_at_k"] == pytest.approx((direct["bench_a"] + direct["bench_b"]) / 2)
    all_scores = [s for problems in scores.values() for p in problems.values() for s in p]
    assert 0.0 < sum(all_scores) < len(all_scores), "the parity scorer should give a mix of 0 and 1"
    markdown = (out / "results.md").read_text()
    assert f"| bench_a | 3 | {100 * direct['bench_a']:.2f} |" in markdown
    assert f"| **Average** | 5 | **{100 * results['average']['acc_at_k']:.2f}** |" in markdown
