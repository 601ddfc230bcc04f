"""The plugin's unpinned offload: every worker building verl's FSDP engine on the ``cpu`` platform gets
``CPUOffloadPolicy(pin_memory=False)`` (pinning needs an accelerator), without any worker subclass."""

from __future__ import annotations

from collections.abc import Callable

import pytest

# verl's FSDP engine builds a forward-only model's policy as transformer_impl.CPUOffloadPolicy(pin_memory=True).
_PROBE = """
import verl
from verl.workers.engine.fsdp import transformer_impl
print(transformer_impl.CPUOffloadPolicy(pin_memory=True).pin_memory)
"""


@pytest.mark.e2e  # starts verl, a fresh interpreter or a training run: slow on 2 cores
@pytest.mark.parametrize(("plugin", "pinned"), [(True, "False"), (False, "True")])
def test_the_plugin_unpins_verls_offload_policy_on_the_cpu_platform_only(
    plugin_probe: Callable[[str, bool], str], plugin: bool, pinned: str
) -> None:
    assert plugin_probe(_PROBE, plugin).split()[-1] == pinned
