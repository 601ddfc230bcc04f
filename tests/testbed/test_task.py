"""recipe.acpo.testbed.task: deterministic, disjoint pools and splits, reference solutions the checker accepts."""

from __future__ import annotations

import argparse

import pandas as pd
import pytest

from data_prep.schema import DataError, check_parquet
from recipe.acpo.testbed.step_check import check_steps
from recipe.acpo.testbed.task import (
    DATA_SOURCE,
    TaskSpec,
    add_task_arguments,
    generate,
    main,
    pool_of,
    task_arguments,
    task_spec,
    write_dataset,
)


def test_reference_solutions_pass_the_step_checker_and_end_with_the_answer() -> None:
    spec = TaskSpec(num_ops=(1, 4), operations=("add", "sub", "mul", "div"))
    for problem in generate(300, spec, seed=3):
        check = check_steps(problem.solution, start=problem.start)
        assert check.all_correct and len(check.equations) == len(problem.operations)
        assert problem.solution.splitlines()[-1] == f"Answer: {problem.answer}"
        assert all(0 <= value <= spec.max_value for value in problem.values)
        assert problem.solution.startswith("First, ")


def test_the_knobs_set_the_operations_and_ranges() -> None:
    spec = TaskSpec(num_ops=(3, 3), max_start=9, max_operand=5, max_value=30, operations=("add",))
    for problem in generate(50, spec, seed=0):
        assert len(problem.operations) == 3 and problem.start <= 9
        assert all(kind == "add" and operand <= 5 for kind, operand in problem.operations)
    with pytest.raises(DataError, match="operations"):
        TaskSpec(operations=("pow",))


def test_generation_is_deterministic_and_pools_never_share_a_problem() -> None:
    spec = TaskSpec()
    assert generate(40, spec, seed=1) == generate(40, spec, seed=1)
    assert generate(40, spec, seed=1) != generate(40, spec, seed=2)
    policy = generate(200, spec, seed=0, pool="policy")
    rl = generate(200, spec, seed=0, pool="rl")
    assert {pool_of(p.text) for p in policy} == {"policy"} and {pool_of(p.text) for p in rl} == {"rl"}
    assert not {p.text for p in policy} & {p.text for p in rl}


def test_written_files_are_in_the_schema_with_the_short_prompt_and_the_reference_steps(tmp_path) -> None:
    train, val = write_dataset(tmp_path, 30, 10, seed=0)
    assert val is not None
    for path in (train, val):
        assert check_parquet(path).ok
    train_rows, val_rows = pd.read_parquet(train), pd.read_parquet(val)
    assert set(train_rows["data_source"]) == {DATA_SOURCE}
    assert not set(train_rows["extra_info"].map(lambda i: i["raw_problem"])) & set(
        val_rows["extra_info"].map(lambda i: i["raw_problem"])
    )
    row = val_rows.iloc[0]
    assert row["prompt"][0]["content"].startswith("Step by step: Start at ")
    info = row["extra_info"]
    assert info["solution"].endswith(f"Answer: {row['reward_model']['ground_truth']}")
    assert check_steps(info["solution"], start=int(info["start"])).all_correct


def test_the_command_line_writes_the_same_files_for_the_same_arguments(tmp_path, capsys) -> None:
    for name in ("a", "b"):
        main(["--output-dir", str(tmp_path / name), "--num-train", "12", "--num-val", "4", "--num-ops", "2"])
    assert "wrote 12 rows" in capsys.readouterr().out
    for split in ("train", "val"):
        a = pd.read_parquet(tmp_path / "a" / f"{DATA_SOURCE}_{split}.parquet")
        b = pd.read_parquet(tmp_path / "b" / f"{DATA_SOURCE}_{split}.parquet")
        pd.testing.assert_frame_equal(a, b)
    with pytest.raises(SystemExit):
        main(["--output-dir", str(tmp_path / "c"), "--operations", "add,pow"])


def test_the_old_data_prep_command_names_the_new_one() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "data_prep.arithmetic_steps", "--output-dir", "x"], capture_output=True, text=True
    )
    assert done.returncode == 1
    assert "python -m recipe.acpo.testbed.task" in done.stderr
    with pytest.raises(ImportError, match=r"recipe\.acpo\.testbed\.task"):
        import data_prep.arithmetic_steps  # noqa: F401


@pytest.mark.parametrize(
    "spec", [TaskSpec(), TaskSpec(num_ops=(4, 6)), TaskSpec(num_ops=(3, 3), max_value=80, operations=("add", "mul"))]
)
def test_task_arguments_give_the_spec_back_through_the_options(spec: TaskSpec) -> None:
    parser = argparse.ArgumentParser()
    add_task_arguments(parser)
    assert task_spec(parser.parse_args(task_arguments(spec))) == spec
    assert task_spec(parser.parse_args([])) == TaskSpec()
