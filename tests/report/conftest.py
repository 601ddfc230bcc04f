"""Fixtures of the report tests: synthetic runs (metrics JSONL and a step dump in the dump's format)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from recipe.acpo.step_dump import write_step_records

WORDS = ["First", " 3", " +", " 4", " =", " 7", ".", "\n", "Then", " 7", " *", " 2", " =", " 14", ".", " So", " x"]
METRIC_KEYS = (
    "critic/score/mean",
    "actor/entropy",
    "acpo/steps_per_response",
    "acpo/helpful_frac",
    "acpo/regime1_frac",
    "acpo/regime2_frac",
    "acpo/regime3_frac",
    "acpo/attr_gain_correct",
    "acpo/attr_gain_incorrect",
    "actor/kl_loss",
    "timing_s/gen",
    "timing_s/old_log_prob",
    "timing_s/acpo_attribution",
    "timing_s/update_actor",
)


def fake_record(rng: random.Random, global_step: int, index: int, data_source: str = "arithmetic") -> dict[str, Any]:
    """One response in the dump format: 6-40 tokens cut into 1-4 steps, credit of both signs."""
    length = rng.randint(6, 40)
    tokens = [rng.choice(WORDS) for _ in range(length)]
    num_steps = rng.randint(1, min(4, length))
    cuts = sorted(rng.sample(range(1, length), num_steps - 1))
    boundaries = [0, *cuts, length]
    correct = index % 2 == 0
    a_base = 0.8 if correct else -0.8
    steps = []
    for k in range(num_steps):
        s = rng.uniform(-2, 2)
        steps.append(
            {
                "start": boundaries[k],
                "end": boundaries[k + 1],
                "C": s,
                "s": s,
                "u": rng.uniform(0, 2),
                "w": 1.0,
                "regime": 3 if s <= 0 else 1,
                "a_attr": abs(a_base) * s,
                "a_final": a_base + 0.5 * abs(a_base) * s,
            }
        )
    token_advantages = [
        steps[k]["a_final"] for k in range(num_steps) for _ in range(steps[k]["start"], steps[k]["end"])
    ]
    return {
        "global_step": global_step,
        "uid": f"prompt-{index // 4}",
        "data_source": data_source,
        "stage": 1,
        "prompt": "<|im_start|>user\nWhat is (3 + 4) * 2?<|im_end|>",
        "response": "".join(tokens),
        "tokens": tokens,
        "entropy": [rng.uniform(0, 3) for _ in range(length)],
        "boundaries": boundaries,
        "marker_boundary": [rng.random() < 0.5 for _ in range(num_steps - 1)],
        "score": 1.0 if correct else 0.0,
        "correct": correct,
        "ground_truth": "14",
        "a_base": a_base,
        "steps": steps,
        "token_advantages": token_advantages,
    }


def write_metrics(path: Path, steps: int, keys: tuple[str, ...] = METRIC_KEYS) -> Path:
    """verl's file logger format: one {"step", "data"} line per step, validation logged on its own line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for step in range(1, steps + 1):
            handle.write(json.dumps({"step": step, "data": {k: 0.1 * step + n for n, k in enumerate(keys)}}) + "\n")
            if step % 2 == 0:
                handle.write(json.dumps({"step": step, "data": {"val-core/arithmetic/acc/mean@1": 0.1 * step}}) + "\n")
    return path


FakeRun = Callable[..., Path]


@pytest.fixture
def fake_run(tmp_path: Path) -> FakeRun:
    """Build a run folder: metrics at RUN/metrics.jsonl, dump files under RUN/ckpt/acpo_dump (as the trainer puts
    them with acpo.dump.dir null); returns the run folder."""

    def build(steps: int = 3, per_step: int = 4, dump: bool = True, data_source: str = "arithmetic") -> Path:
        run = tmp_path / "run"
        write_metrics(run / "metrics.jsonl", steps)
        if dump:
            rng = random.Random(0)
            for step in range(1, steps + 1):
                records = [fake_record(rng, step, i, data_source) for i in range(per_step)]
                write_step_records(records, str(run / "ckpt" / "acpo_dump"), step)
        return run

    return build
