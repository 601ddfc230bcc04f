"""examples/run_acpo_cpu_demo.sh end to end with its smallest settings: a small testbed policy, one step per stage.

Real Ray, verl, CPU rollout, reward and merge: the testbed policy build (a few fine-tuning steps of a very small
model), evaluation before, Stage 1 with validation, merge, Stage 2, evaluation of the last Stage-2 checkpoint (merged
by the evaluation tool), the accuracy plot and the printed summary. The install step is skipped
(DEMO_SKIP_INSTALL=1): CI has already installed the project. This is also the test that a built testbed policy
loads in the CPU preset with the testbed configs and trains a step in each stage (its policy solves no problem,
so its groups carry no outcome advantage: the step runs, but nothing here can check that it learns).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "run_acpo_cpu_demo.sh"


def _processes_carrying(marker: str) -> list[str]:
    """Processes whose environment holds ``marker``: every process the demo started inherits it, Ray's included."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker.encode() in (proc / "environ").read_bytes():
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append(f"{proc.name}: {command[:120]}")
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path, list[str]]:
    demo_dir = tmp_path_factory.mktemp("cpu_demo")
    marker = f"acpo-demo-{uuid.uuid4()}"
    env = {
        **os.environ,
        "PATH": os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", ""))),
        "ACPO_DEMO_TEST_RUN": marker,
        "DEMO_MODEL": "testbed",
        "DEMO_BUILD_ARGS": "--sft-steps 20 --hidden-size 32 --num-layers 1 --eval-problems 4",
        "DEMO_TEST_FREQ": "1",
        "DEMO_SKIP_INSTALL": "1",
        "DEMO_DIR": str(demo_dir),
        "DEMO_STAGE1_STEPS": "1",
        "DEMO_STAGE2_STEPS": "1",
        "DEMO_BATCH_SIZE": "2",
        "DEMO_ROLLOUT_N": "4",
        "DEMO_TRAIN_SIZE": "16",
        "DEMO_EVAL_SIZE": "4",
        "DEMO_EVAL_K": "2",
        "DEMO_MAX_RESPONSE_LENGTH": "48",
    }
    done = subprocess.run(
        ["bash", str(DEMO)], cwd=REPO, env=env, capture_output=True, text=True, timeout=1500, stdin=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 20
    left = _processes_carrying(marker)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = _processes_carrying(marker)
    return done, demo_dir, left


def test_demo_finishes_and_prints_accuracy_before_and_after_and_attribution_statistics(demo_run) -> None:
    done, demo_dir, _ = demo_run
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    summary = done.stdout[done.stdout.index("] summary") :]
    before = json.loads((demo_dir / "eval_before" / "results.json").read_text())
    after = json.loads((demo_dir / "eval_after" / "results.json").read_text())
    assert f"before training: {100 * before['average']['acc_at_k']:6.2f}%" in summary
    assert f"after training:  {100 * after['average']['acc_at_k']:6.2f}%" in summary
    assert "steps per response" in summary and "helpful steps" in summary
    change = 100 * (after["average"]["acc_at_k"] - before["average"]["acc_at_k"])
    assert f"change:          {change:+6.2f} points" in summary
    for where in ("Logs:", "Checkpoints:", str(demo_dir / "stage2" / "checkpoints"), str(demo_dir / "accuracy.png")):
        assert where in summary
    assert (demo_dir / "accuracy.png").stat().st_size > 0
    assert "held-out accuracy" in (demo_dir / "logs" / "build_model.log").read_text()


def test_demo_evaluates_on_the_held_out_set_before_and_after_with_the_merged_stage2_checkpoint(demo_run) -> None:
    done, demo_dir, _ = demo_run
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    before = json.loads((demo_dir / "eval_before" / "results.json").read_text())
    after = json.loads((demo_dir / "eval_after" / "results.json").read_text())
    for result in (before, after):
        assert result["k"] == 2
        assert [(row["benchmark"], row["problems"], row["samples"]) for row in result["benchmarks"]] == [
            ("arithmetic_steps", 4, 8)
        ]
    assert before["settings"]["merged_from_verl_checkpoint"] is False
    assert after["settings"]["merged_from_verl_checkpoint"] is True
    assert after["settings"]["model"] == str(demo_dir / "stage2" / "checkpoints")


def test_demo_runs_both_stages_with_their_acpo_metrics_and_the_stage2_kl(demo_run) -> None:
    done, demo_dir, _ = demo_run
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    stages = {}
    for stage in ("stage1", "stage2"):
        lines = (demo_dir / "logs" / f"{stage}_metrics.jsonl").read_text().splitlines()
        stages[stage] = [json.loads(line)["data"] for line in lines if line.strip()]
        assert len(stages[stage]) == 1
        step = stages[stage][0]
        for key in ("acpo/steps_per_response", "acpo/helpful_frac", "acpo/attr_tokens_ratio", "acpo/w_mean"):
            assert isinstance(step[key], int | float), (stage, key)
        assert step["acpo/steps_per_response"] >= 1
        assert "val-core/arithmetic_steps/acc/mean@1" in step, (stage, sorted(step))
        assert (demo_dir / stage / "checkpoints" / "global_step_1" / "actor").is_dir()
    assert "actor/kl_loss" in stages["stage2"][0] and "actor/kl_loss" not in stages["stage1"][0]
    assert (demo_dir / "stage1" / "merged" / "config.json").is_file()


def test_demo_leaves_no_process_behind(demo_run) -> None:
    done, _, left = demo_run
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert left == [], f"processes left behind: {left}"
