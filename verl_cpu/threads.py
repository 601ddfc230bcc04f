"""How many torch threads a training worker computes with on the ``cpu`` platform.

Ray starts an actor that reserves no CPU (verl's training workers on a CPU pool reserve none) with
``OMP_NUM_THREADS=1`` unless the variable is already set, so verl's FSDP engine would run every forward and backward
on one core while the others idle: on the 2-core testbed that made a forward and backward pass 1.7x slower
(0.49 s against 0.29 s, measured alone) and a training step 0.4 s slower
(docs/speed/bench_testbed_step_2026-12-06.txt). The plugin sets the thread count of each training worker when verl
imports its FSDP engine:

1. ``VERL_CPU_NUM_THREADS``, if the launcher's environment sets it;
2. else the launcher's ``OMP_NUM_THREADS`` (``activate`` forwards it as ``VERL_CPU_NUM_THREADS``: inside a Ray worker a
   user's ``1`` cannot be told from Ray's);
3. else the cores this process may run on, shared evenly between the training workers of its node
   (``LOCAL_WORLD_SIZE``), at least one each.

The CPU rollout server sets its own (``actor_rollout_ref.rollout.engine_kwargs.cpu.num_threads``); it decodes while
the training workers wait, and they compute while it waits.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

NUM_THREADS_ENV = "VERL_CPU_NUM_THREADS"


def parse_num_threads(value: str, name: str) -> int:
    """``value`` of the environment variable ``name`` as a thread count; a clear error if it is not one."""
    try:
        threads = int(value.strip())
    except ValueError:
        threads = 0
    if threads < 1:
        raise ValueError(f"{name}={value!r}: the number of torch threads must be a positive integer")
    return threads


def thread_env_for_workers(environ: Mapping[str, str]) -> dict[str, str]:
    """The launcher's thread setting (``VERL_CPU_NUM_THREADS``, else ``OMP_NUM_THREADS``) for every Ray worker, checked;
    empty when the launcher sets neither."""
    for name in (NUM_THREADS_ENV, "OMP_NUM_THREADS"):
        value = environ.get(name)
        if value is not None and value.strip():
            return {NUM_THREADS_ENV: str(parse_num_threads(value, name))}
    return {}


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS reports one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def training_worker_threads(environ: Mapping[str, str], cores: int) -> int:
    """Torch threads for one training worker: ``VERL_CPU_NUM_THREADS``, else ``cores`` shared by the node's
    ``LOCAL_WORLD_SIZE`` training workers."""
    value = environ.get(NUM_THREADS_ENV)
    if value is not None and value.strip():
        return parse_num_threads(value, NUM_THREADS_ENV)
    local_workers = environ.get("LOCAL_WORLD_SIZE") or environ.get("RAY_LOCAL_WORLD_SIZE") or "1"
    return max(1, cores // max(1, int(local_workers)))
