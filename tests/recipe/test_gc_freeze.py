"""recipe.acpo.gc_freeze: start-up objects frozen out of garbage collection, on by default, off with ACPO_GC_FREEZE=0.

The freezing itself runs in a child process (it would freeze the test process's objects for the rest of the session);
that it runs in the recipe's Ray processes is checked end to end in ``test_e2e_cpu_seeded_rollout.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from recipe.acpo.gc_freeze import GC_FREEZE_ENV, gc_freeze_enabled
from recipe.acpo.main_acpo import worker_env_vars
from recipe.acpo.preflight import SetupError

REPO = Path(__file__).resolve().parents[2]

# Two reference cycles, one alive when the process freezes and one made after; both then dropped. What survives a
# full collection says which one the collector still sees.
CHILD = textwrap.dedent(
    """
    import gc, json, logging, weakref
    from recipe.acpo.gc_freeze import freeze_startup_objects

    logging.basicConfig(level=logging.INFO)

    class Node:
        pass

    def cycle():
        first, second = Node(), Node()
        first.other, second.other = second, first
        return first

    before = cycle()
    froze = freeze_startup_objects("test process")
    frozen_count = gc.get_freeze_count()
    after = cycle()
    before_ref, after_ref = weakref.ref(before), weakref.ref(after)
    del before, after
    gc.collect()
    print(json.dumps({
        "froze": froze,
        "frozen_count": frozen_count,
        "before_alive": before_ref() is not None,
        "after_alive": after_ref() is not None,
    }))
    """
)


def _child(env_value: str | None) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if k != GC_FREEZE_ENV}
    if env_value is not None:
        env[GC_FREEZE_ENV] = env_value
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    done = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_freezing_is_on_by_default_and_off_with_zero() -> None:
    assert gc_freeze_enabled({}) is True
    assert gc_freeze_enabled({GC_FREEZE_ENV: "1"}) is True
    assert gc_freeze_enabled({GC_FREEZE_ENV: " 0 "}) is False


@pytest.mark.parametrize("value", ["yes", "2", "", "off"])
def test_a_value_other_than_0_or_1_is_refused_naming_the_variable(value: str) -> None:
    with pytest.raises(ValueError, match=f"{GC_FREEZE_ENV}={value!r}: set 0"):
        gc_freeze_enabled({GC_FREEZE_ENV: value})


def test_a_frozen_process_no_longer_collects_its_start_up_cycles_but_collects_later_ones() -> None:
    result, log = _child(None)
    assert result["froze"] is True and result["frozen_count"] > 1000
    # The cost the module's docstring names: a cycle alive at the freeze is never collected ...
    assert result["before_alive"] is True
    # ... while one made afterwards is, as before.
    assert result["after_alive"] is False
    assert "test process: " in log and "start-up objects frozen out of garbage collection" in log


def test_zero_leaves_garbage_collection_as_it_is() -> None:
    result, log = _child("0")
    assert result == {"froze": False, "frozen_count": 0, "before_alive": False, "after_alive": False}
    assert "frozen" not in log


def test_every_ray_worker_gets_the_checked_setting_and_a_bad_one_stops_the_run_before_ray(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(GC_FREEZE_ENV, raising=False)
    assert worker_env_vars(cpu_run=False)[GC_FREEZE_ENV] == "1"
    monkeypatch.setenv(GC_FREEZE_ENV, "0")
    assert worker_env_vars(cpu_run=False)[GC_FREEZE_ENV] == "0"
    monkeypatch.setenv(GC_FREEZE_ENV, "maybe")
    with pytest.raises(SetupError, match=f"{GC_FREEZE_ENV}='maybe'"):
        worker_env_vars(cpu_run=False)


def test_the_training_workers_init_model_keeps_verls_dispatch_to_every_rank() -> None:
    from verl.single_controller.base.decorator import MAGIC_ATTR
    from verl.workers.engine_workers import ActorRolloutRefWorker

    from recipe.acpo.acpo_worker import ACPOActorRolloutRefWorker

    # Without verl's register on the override, the worker group would no longer dispatch init_model.
    assert ACPOActorRolloutRefWorker.init_model is not ActorRolloutRefWorker.init_model
    assert getattr(ACPOActorRolloutRefWorker.init_model, MAGIC_ATTR) == getattr(
        ActorRolloutRefWorker.init_model, MAGIC_ATTR
    )
