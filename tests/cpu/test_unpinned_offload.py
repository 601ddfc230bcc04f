"""The plugin's unpinned offload: every worker building verl's FSDP engine on the ``cpu`` platform gets
``CPUOffloadPolicy(pin_memory=False)`` (pinning needs an accelerator), without any worker subclass."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# verl's FSDP engine builds a forward-only model's policy as transformer_impl.CPUOffloadPolicy(pin_memory=True).
_PROBE = """
import verl
from verl.workers.engine.fsdp import transformer_impl
print(transformer_impl.CPUOffloadPolicy(pin_memory=True).pin_memory)
"""


def _probe(plugin: bool) -> str:
    env = {key: value for key, value in os.environ.items() if key not in ("VERL_USE_EXTERNAL_MODULES", "VERL_PLATFORM")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    if plugin:
        env.update({"VERL_USE_EXTERNAL_MODULES": "verl_cpu", "VERL_PLATFORM": "cpu"})
    done = subprocess.run([sys.executable, "-c", _PROBE], env=env, cwd="/", capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.split()[-1]


@pytest.mark.e2e  # starts verl, a fresh interpreter or a training run: slow on 2 cores
@pytest.mark.parametrize(("plugin", "pinned"), [(True, "False"), (False, "True")])
def test_the_plugin_unpins_verls_offload_policy_on_the_cpu_platform_only(plugin: bool, pinned: str) -> None:
    assert _probe(plugin) == pinned
