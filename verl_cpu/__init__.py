"""verl 0.9.1 on a CPU-only machine, as a verl plugin: ``VERL_USE_EXTERNAL_MODULES=verl_cpu VERL_PLATFORM=cpu``.

``import verl`` imports the modules named in ``VERL_USE_EXTERNAL_MODULES``; ``VERL_PLATFORM`` selects a platform
registered by one of them. Importing this package registers, without changing any verl file:

1. the ``cpu`` platform (``verl_cpu.platform``) in ``verl.plugin.platform.PlatformRegistry``;
2. the FSDP/FSDP2 training engines for the ``cpu`` device in ``verl.workers.engine.EngineRegistry`` (verl
   registers them for ``cuda`` and ``npu`` only);
3. the ``cpu`` rollout (``verl_cpu.rollout``): its trainer-side adapter in verl's rollout registry
   (``verl.workers.rollout.base``) and its replica in ``RolloutReplicaRegistry``;
4. the process-group fix: on the ``cpu`` platform verl's ``initialize_global_process_group_ray`` builds the backend
   string ``"cpu:gloo,cpu:gloo"``, which torch rejects (duplicate device); it is given plain ``"gloo"`` instead;
5. the unpinned offload: verl's FSDP engine builds a forward-only model (the reference model of a KL loss) with
   ``CPUOffloadPolicy(pin_memory=True)``, and pinning host memory needs an accelerator ("Cannot access accelerator
   device when none is available"); on the ``cpu`` platform the policy is built with ``pin_memory=False``, in every
   worker class (verl's plain ``ActorRolloutRefWorker`` included);
6. the log-prob kernel: verl's FSDP engine computes token log-probabilities with a platform's own kernel
   (flash-attn's on CUDA, torch_npu's on Ascend) or else a loop of one ``logsumexp`` per token; on the ``cpu``
   platform it gets ``verl_cpu.log_probs.token_log_probs``, the same quantity vectorised in bounded chunks;
7. the training workers' threads: Ray starts them with one torch thread; on the ``cpu`` platform each computes with
   its share of the node's cores, or ``VERL_CPU_NUM_THREADS`` (``verl_cpu.threads``).

Items 2-7 are applied when verl imports the module concerned, so processes that never build an engine or a rollout
(the driver, reward workers, agent-loop workers) do not pay for importing them. A launcher calls ``activate()`` and
sets the variables it returns in every Ray worker through the runtime environment (the ACPO recipe's ``main_acpo``
does).
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from verl_cpu.platform import CPU_PLATFORM_NAME, PlatformCPU
from verl_cpu.threads import thread_env_for_workers, training_worker_threads, usable_cores

PLUGIN_MODULE = __name__

__all__ = ["CPU_PLATFORM_NAME", "PLUGIN_MODULE", "PlatformCPU", "activate", "register_all"]


class _LoaderWithCallbacks(importlib.abc.Loader):
    """Runs the wrapped loader, then the callbacks registered for the module it has just executed."""

    def __init__(self, loader: importlib.abc.Loader, callbacks: list[Callable[[ModuleType], None]]) -> None:
        self._loader = loader
        self._callbacks = callbacks

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        for callback in self._callbacks:
            callback(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class _AfterImportFinder(importlib.abc.MetaPathFinder):
    """Meta-path finder that attaches callbacks to chosen modules; it finds nothing itself."""

    def __init__(self) -> None:
        self.callbacks: dict[str, list[Callable[[ModuleType], None]]] = {}

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.callbacks:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _LoaderWithCallbacks(spec.loader, self.callbacks.pop(fullname))
        return spec


_FINDER = _AfterImportFinder()


def _after_import(module_name: str, callback: Callable[[ModuleType], None]) -> None:
    """Call ``callback(module)`` once ``module_name`` is imported (now, if it already is)."""
    module = sys.modules.get(module_name)
    if module is not None:
        callback(module)
        return
    pending = _FINDER.callbacks.setdefault(module_name, [])
    if callback not in pending:
        pending.append(callback)
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def _register_fsdp_engines(engine_package: ModuleType) -> None:
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead

    registry = engine_package.EngineRegistry
    for model_type, engine_cls in (("language_model", FSDPEngineWithLMHead), ("value_model", FSDPEngineWithValueHead)):
        for backend in ("fsdp", "fsdp2"):
            if CPU_PLATFORM_NAME not in registry._engines.get(model_type, {}).get(backend, {}):
                registry.register(model_type=model_type, backend=backend, device=CPU_PLATFORM_NAME)(engine_cls)


def _register_rollout_adapter(rollout_base: ModuleType) -> None:
    rollout_base._ROLLOUT_REGISTRY[(CPU_PLATFORM_NAME, "async")] = "verl_cpu.rollout.CPUServerAdapter"


def _load_cpu_replica() -> type:
    from verl_cpu.rollout import CPURolloutReplica

    return CPURolloutReplica


def _register_rollout_replica(replica_module: ModuleType) -> None:
    replica_module.RolloutReplicaRegistry.register(CPU_PLATFORM_NAME, _load_cpu_replica)


def _use_plain_gloo(distributed: ModuleType) -> None:
    original = distributed.initialize_global_process_group_ray
    if getattr(original, "__verl_cpu_wrapped__", False):
        return

    @functools.wraps(original)
    def initialize_global_process_group_ray(timeout_second: int | None = None, backend: str | None = None) -> None:
        from verl.utils.device import get_device_name

        if backend is None and get_device_name() == CPU_PLATFORM_NAME:
            backend = "gloo"
        return original(timeout_second=timeout_second, backend=backend)

    initialize_global_process_group_ray.__verl_cpu_wrapped__ = True  # type: ignore[attr-defined]
    distributed.initialize_global_process_group_ray = initialize_global_process_group_ray


def _unpin_offload_policy(transformer_impl: ModuleType) -> None:
    original = transformer_impl.CPUOffloadPolicy
    if original is None or getattr(original, "__verl_cpu_wrapped__", False):
        return

    def cpu_offload_policy(*args: Any, **kwargs: Any) -> Any:
        from verl.utils.device import get_device_name

        if get_device_name() == CPU_PLATFORM_NAME:
            kwargs["pin_memory"] = False
        return original(*args, **kwargs)

    cpu_offload_policy.__verl_cpu_wrapped__ = True  # type: ignore[attr-defined]
    transformer_impl.CPUOffloadPolicy = cpu_offload_policy


def _vectorise_log_probs(transformer_impl: ModuleType) -> None:
    original = transformer_impl.logprobs_from_logits
    if getattr(original, "__verl_cpu_wrapped__", False):
        return

    @functools.wraps(original)
    def logprobs_from_logits(logits: Any, labels: Any, *args: Any, **kwargs: Any) -> Any:
        from verl.utils.device import get_device_name

        if get_device_name() == CPU_PLATFORM_NAME:
            from verl_cpu.log_probs import token_log_probs

            return token_log_probs(logits, labels)
        return original(logits, labels, *args, **kwargs)

    logprobs_from_logits.__verl_cpu_wrapped__ = True  # type: ignore[attr-defined]
    transformer_impl.logprobs_from_logits = logprobs_from_logits


def _use_worker_threads(transformer_impl: ModuleType) -> None:
    """Only a training worker imports verl's FSDP engine, so this is where its thread count is set."""
    from verl.utils.device import get_device_name

    if get_device_name() != CPU_PLATFORM_NAME:
        return
    import torch

    threads = training_worker_threads(os.environ, usable_cores())
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def register_all() -> None:
    """Register the CPU engine, rollout and the fixes (idempotent; the platform registers on import)."""
    _after_import("verl.utils.distributed", _use_plain_gloo)
    _after_import("verl.workers.engine.fsdp.transformer_impl", _unpin_offload_policy)
    _after_import("verl.workers.engine.fsdp.transformer_impl", _vectorise_log_probs)
    _after_import("verl.workers.engine.fsdp.transformer_impl", _use_worker_threads)
    _after_import("verl.workers.engine", _register_fsdp_engines)
    _after_import("verl.workers.rollout.base", _register_rollout_adapter)
    _after_import("verl.workers.rollout.replica", _register_rollout_replica)


def activate() -> dict[str, str]:
    """Select the ``cpu`` platform in this process; return the variables that do the same in every Ray worker.

    For a process that imported verl before the variables were set (the driver: Hydra imports verl's packaged
    config), the platform singleton is replaced if it was already resolved to another device. The launcher's thread
    setting travels with the variables (``verl_cpu.threads``); one that is not a positive integer is refused here.
    """
    thread_env = thread_env_for_workers(os.environ)
    modules = [m.strip() for m in os.environ.get("VERL_USE_EXTERNAL_MODULES", "").split(",") if m.strip()]
    if PLUGIN_MODULE not in modules:
        modules.append(PLUGIN_MODULE)
    env = {"VERL_PLATFORM": CPU_PLATFORM_NAME, "VERL_USE_EXTERNAL_MODULES": ",".join(modules), **thread_env}
    os.environ.update(env)

    from verl.plugin.platform import get_platform, set_platform

    if get_platform().device_name != CPU_PLATFORM_NAME:
        set_platform(PlatformCPU())
    return env


register_all()
