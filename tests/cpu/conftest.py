"""Shared by the CPU plugin's tests: run a snippet in a fresh interpreter, with or without the plugin selected."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def plugin_probe() -> Callable[..., str]:
    """``probe(code, plugin, extra_env=None)``: the stdout of ``python -c code`` with the repository on the path,
    ``extra_env`` set and, when ``plugin``, ``VERL_USE_EXTERNAL_MODULES=verl_cpu VERL_PLATFORM=cpu`` (without: neither
    variable); a failure shows stderr."""

    def probe(code: str, plugin: bool, extra_env: dict[str, str] | None = None) -> str:
        drop = ("VERL_USE_EXTERNAL_MODULES", "VERL_PLATFORM", "VERL_CPU_NUM_THREADS")
        env = {key: value for key, value in os.environ.items() if key not in drop}
        env["PYTHONPATH"] = str(REPO_ROOT)
        env.update(extra_env or {})
        if plugin:
            env.update({"VERL_USE_EXTERNAL_MODULES": "verl_cpu", "VERL_PLATFORM": "cpu"})
        command = [sys.executable, "-c", code]
        done = subprocess.run(command, env=env, cwd="/", capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    return probe
