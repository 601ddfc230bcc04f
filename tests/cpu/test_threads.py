"""The training workers' torch threads on the ``cpu`` platform: their share of the node's cores, or the launcher's
setting, instead of the single thread Ray starts them with."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from verl_cpu import activate
from verl_cpu.threads import NUM_THREADS_ENV, thread_env_for_workers, training_worker_threads


@pytest.mark.parametrize(
    ("environ", "cores", "threads"),
    [
        ({}, 2, 2),
        ({"LOCAL_WORLD_SIZE": "2"}, 2, 1),
        ({"RAY_LOCAL_WORLD_SIZE": "2"}, 8, 4),
        ({"LOCAL_WORLD_SIZE": "4"}, 2, 1),  # more workers than cores: one each, never zero
        ({NUM_THREADS_ENV: "3", "LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}, 2, 3),
        ({"OMP_NUM_THREADS": "1"}, 2, 2),  # inside a Ray worker, Ray's forced 1 says nothing of the user's wish
    ],
)
def test_a_training_worker_takes_its_share_of_the_cores_unless_told(
    environ: dict[str, str], cores: int, threads: int
) -> None:
    assert training_worker_threads(environ, cores) == threads


def test_the_launchers_setting_travels_to_the_workers_and_a_bad_one_is_refused_naming_it() -> None:
    assert thread_env_for_workers({}) == {}
    assert thread_env_for_workers({"OMP_NUM_THREADS": "4"}) == {NUM_THREADS_ENV: "4"}
    assert thread_env_for_workers({NUM_THREADS_ENV: " 2 ", "OMP_NUM_THREADS": "4"}) == {NUM_THREADS_ENV: "2"}
    for bad in ("two", "0", "-1", "1.5"):
        with pytest.raises(ValueError, match=rf"{NUM_THREADS_ENV}='{bad}': the number of torch threads"):
            thread_env_for_workers({NUM_THREADS_ENV: bad})
    with pytest.raises(ValueError, match="OMP_NUM_THREADS='x'"):
        thread_env_for_workers({"OMP_NUM_THREADS": "x"})


def test_activate_refuses_a_bad_thread_setting_before_anything_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NUM_THREADS_ENV, "many")
    with pytest.raises(ValueError, match=f"{NUM_THREADS_ENV}='many'"):
        activate()


# A training worker as Ray starts it (OMP_NUM_THREADS=1), importing verl's FSDP engine.
_PROBE = """
import torch, verl
before = torch.get_num_threads()
from verl.workers.engine.fsdp import transformer_impl
print(before, torch.get_num_threads())
"""


@pytest.mark.e2e  # starts a fresh interpreter that imports verl: slow on 2 cores
@pytest.mark.parametrize(
    ("plugin", "extra_env", "expected"),
    [
        (True, {}, f"1 {len(os.sched_getaffinity(0))}"),
        (True, {NUM_THREADS_ENV: "3"}, "1 3"),
        (False, {}, "1 1"),
    ],
)
def test_importing_verls_engine_gives_a_cpu_training_worker_its_threads(
    plugin_probe: Callable[..., str], plugin: bool, extra_env: dict[str, str], expected: str
) -> None:
    env = {"OMP_NUM_THREADS": "1", "LOCAL_WORLD_SIZE": "1", **extra_env}
    assert plugin_probe(_PROBE, plugin, env).split("\n")[-2] == expected
