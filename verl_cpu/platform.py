"""A ``cpu`` platform for verl 0.9.1's platform registry (``verl.plugin.platform``).

verl resolves every device question (``get_device_name``, ``get_torch_device``, ``get_device_id``, rng state, memory
statistics, the Ray resource to ask for) through one platform object, selected by ``VERL_PLATFORM``. verl ships
``nvidia``, ``npu`` and ``rocm`` only; this module adds ``cpu`` so that the FSDP2 engine, the trainer and the
workers run unchanged on a machine without an accelerator.
"""

from __future__ import annotations

import contextlib
import os
import platform as host_platform
import types
from collections.abc import Iterator
from typing import Any

import torch
from verl.plugin.platform import PlatformBase, PlatformRegistry

CPU_PLATFORM_NAME = "cpu"


def _physical_memory() -> tuple[int, int]:
    """(available, total) bytes of host memory, the CPU analogue of ``torch.cuda.mem_get_info``."""
    try:
        import psutil

        memory = psutil.virtual_memory()
        return int(memory.available), int(memory.total)
    except ImportError:  # pragma: no cover - psutil ships with ray
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return int(pages), int(pages)


def _zero(*_args: Any, **_kwargs: Any) -> int:
    return 0


def _noop(*_args: Any, **_kwargs: Any) -> None:
    return None


def _build_device_module() -> types.ModuleType:
    """``torch.cpu`` completed with the ``torch.cuda`` functions verl calls through ``get_torch_device()``.

    Memory statistics read as zero and cache/IPC calls do nothing: host memory is not pooled by torch.
    ``current_device()`` returns the string ``"cpu"`` so that ``tensor.to(get_device_id())`` and
    ``torch.device(get_device_id())`` both work.
    """
    module = types.ModuleType("verl_cpu_device", "torch.cpu with the torch.cuda API verl expects")
    for name in dir(torch.cpu):
        if not name.startswith("__"):
            setattr(module, name, getattr(torch.cpu, name))
    module.is_available = lambda: True
    module.device_count = lambda: 1
    module.current_device = lambda: CPU_PLATFORM_NAME
    module.set_device = _noop
    module.synchronize = _noop
    module.empty_cache = _noop
    module.ipc_collect = _noop
    module.set_per_process_memory_fraction = _noop
    module.reset_peak_memory_stats = _noop
    module.reset_max_memory_allocated = _noop
    module.memory_allocated = _zero
    module.memory_reserved = _zero
    module.max_memory_allocated = _zero
    module.max_memory_reserved = _zero
    module.memory_stats = lambda *_a, **_k: {}
    module.mem_get_info = lambda *_a, **_k: _physical_memory()
    module.get_rng_state = lambda *_a, **_k: torch.get_rng_state()
    module.set_rng_state = lambda state, *_a, **_k: torch.set_rng_state(state)
    module.manual_seed = torch.manual_seed
    module.manual_seed_all = torch.manual_seed
    module.get_device_name = lambda *_a, **_k: host_platform.processor() or host_platform.machine() or "cpu"
    return module


CPU_DEVICE_MODULE = _build_device_module()


@PlatformRegistry.register(platform=CPU_PLATFORM_NAME)
class PlatformCPU(PlatformBase):
    """Host CPU as verl's accelerator: gloo collectives, fp32 tensors on ``cpu``, Ray's ``GPU`` resource as a slot.

    verl's workers always ask Ray for ``num_gpus``; the CPU preset declares ``ray_init.num_gpus`` so that each
    training worker takes one such slot. Nothing in this class touches a GPU.
    """

    @property
    def device_name(self) -> str:
        return CPU_PLATFORM_NAME

    @property
    def vendor_name(self) -> str:
        return CPU_PLATFORM_NAME

    @property
    def device_module(self) -> types.ModuleType:
        return CPU_DEVICE_MODULE

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        # Never auto-detected: a CUDA machine must not silently fall back to the CPU. Select it with VERL_PLATFORM.
        return os.environ.get("VERL_PLATFORM", "").strip().lower() == CPU_PLATFORM_NAME

    def current_device(self) -> str:  # type: ignore[override]
        return CPU_PLATFORM_NAME

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: int | None = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        # Ray sets CUDA_VISIBLE_DEVICES for the GPU slots it hands out; it is harmless on a CPU-only host.
        return "CUDA_VISIBLE_DEVICES"

    @contextlib.contextmanager
    def nvtx_range(self, msg: str) -> Iterator[None]:
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None
