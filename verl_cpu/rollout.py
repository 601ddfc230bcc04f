"""The CPU rollout backend for verl 0.9.1: a generation server, its replica and the trainer-side adapter.

verl 0.9.1 serves rollouts from LLM servers only (vLLM, SGLang, TensorRT-LLM). This backend plugs the same three
roles into verl's registries under the name ``cpu`` (``actor_rollout_ref.rollout.name=cpu``):

- ``CPURolloutServer``: a Ray actor holding an fp32 copy of the policy. ``generate`` is token-in/token-out with
  per-request sampling parameters and per-token log-probs; requests that are pending together are decoded as
  one left-padded batch (``verl_cpu.generation``). Every request samples from its own random stream (seeded
  sampling, see ``CPURolloutServer.request_generator``), so responses do not depend on arrival order or batching.
  Requests that name their burst and its size (``sample_burst``, ``sample_burst_size``) are decoded a whole burst
  at a time, in a fixed order, so the batches themselves, and the last bits of every logit and log-prob, do not
  depend on arrival either (``CPURolloutServer._gather_named_burst``).
- ``CPURolloutReplica``: the ``RolloutReplica`` that launches one server per trainer worker, next to it
  (``RolloutReplicaRegistry``, used by ``LLMServerManager`` in the trainer process).
- ``CPUServerAdapter``: the ``BaseRollout`` living in the trainer worker (``verl.workers.rollout.base``'s rollout
  registry): after every step verl's checkpoint manager calls its ``update_weights`` with the trainer's
  parameters, which it ships to the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass, field
from typing import Any

import ray
import torch
from verl.utils.config import omega_conf_to_dataclass
from verl.workers.config import HFModelConfig, RolloutConfig
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica, TokenOutput

from verl_cpu.generation import (
    SAMPLE_BURST_KEY,
    SAMPLE_BURST_SIZE_KEY,
    SAMPLE_STREAM_KEY,
    GenerationResult,
    SamplingSpec,
    explicit_seed,
    generate_batch,
    request_seed,
    sampling_spec_from_params,
)

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "WARN"))

ROLLOUT_NAME = "cpu"
SERVER_NAME_PREFIX = "verl_cpu_server"


@dataclass(frozen=True)
class CPUEngineOptions:
    """``actor_rollout_ref.rollout.engine_kwargs.cpu``: knobs of the CPU generation server.

    Attributes:
        num_threads: torch intra-op threads of the server (``None``: all cores; Ray would otherwise give an actor
            with no CPU reservation a single thread).
        batch_wait_ms: after the first request of a batch arrives, how long to wait for more before decoding.
            verl's agent loops send a step's requests in one burst, so a few milliseconds gather all of them.
        max_batch_wait_ms: upper bound on the total gathering time while requests keep arriving.
        burst_wait_ms: upper bound on gathering a named burst (requests with ``sample_burst_size``), from its first
            request on. A burst normally completes within its submission's spread (about 0.3 s for 128 testbed
            requests); the bound is reached only when some of its requests never come (one failed before reaching
            the server, or another server took it), and the server then decodes what came, with a warning. 0 turns
            burst gathering off: named requests are batched as they arrive, like unnamed ones.
    """

    num_threads: int | None = None
    batch_wait_ms: float = 5.0
    max_batch_wait_ms: float = 50.0
    burst_wait_ms: float = 2000.0

    @classmethod
    def from_rollout_config(cls, config: RolloutConfig) -> CPUEngineOptions:
        raw = dict((config.engine_kwargs or {}).get(ROLLOUT_NAME) or {})
        unknown = sorted(set(raw) - {field.name for field in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown key(s) under actor_rollout_ref.rollout.engine_kwargs.cpu: {unknown}")
        return cls(**raw)


@dataclass
class _PendingRequest:
    request_id: str
    prompt_ids: list[int]
    spec: SamplingSpec
    generator: torch.Generator = field(repr=False)
    future: asyncio.Future = field(repr=False)
    # The named burst and its size (None, 0: the request names none), and the request's place in it.
    burst: str | None = None
    burst_size: int = 0
    order: tuple[tuple[int, ...], str] = ((), "")


def request_burst(params: dict[str, Any]) -> tuple[str | None, int]:
    """The burst a request names (``sample_burst``) and its size (``sample_burst_size``); ``(None, 0)`` without them.

    Raises:
        ValueError: one key without the other, or a size that is not a positive integer (naming the key).
    """
    burst, size = params.get(SAMPLE_BURST_KEY), params.get(SAMPLE_BURST_SIZE_KEY)
    if burst is None and size is None:
        return None, 0
    if burst is None or size is None:
        raise ValueError(
            f"sampling parameters {SAMPLE_BURST_KEY} and {SAMPLE_BURST_SIZE_KEY} go together: got {burst!r}, {size!r}"
        )
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"sampling parameter {SAMPLE_BURST_SIZE_KEY} must be a positive integer, got {size!r}")
    return str(burst), size


def eos_token_ids(model_config: HFModelConfig) -> set[int]:
    """Every token that ends a response: the generation config's eos ids (int or list) and the tokenizer's."""
    ids: set[int] = set()
    generation_eos = getattr(model_config.generation_config, "eos_token_id", None)
    if generation_eos is not None:
        ids.update(generation_eos if isinstance(generation_eos, list | tuple) else [generation_eos])
    tokenizer_eos = getattr(model_config.tokenizer, "eos_token_id", None)
    if tokenizer_eos is not None:
        ids.add(int(tokenizer_eos))
    if not ids:
        raise ValueError(f"the model at {model_config.path} declares no eos token: generation could never stop")
    return {int(i) for i in ids}


def pad_token_id(model_config: HFModelConfig, eos_ids: set[int]) -> int:
    """The tokenizer's pad id, else the smallest eos id."""
    pad = getattr(model_config.tokenizer, "pad_token_id", None)
    return int(pad) if pad is not None else min(eos_ids)


class CPURolloutServer:
    """Token-in/token-out generation on the CPU for one rollout replica (a Ray actor, created by the replica).

    Weights arrive from the trainer through ``load_weights`` (the adapter calls it after every step); until then a
    server built with ``load_format=dummy`` refuses to generate instead of sampling from random weights.
    """

    def __init__(
        self,
        config: RolloutConfig,
        model_config: Any,
        replica_rank: int = 0,
        model: torch.nn.Module | None = None,
    ) -> None:
        from transformers import AutoModelForCausalLM

        self.config: RolloutConfig = omega_conf_to_dataclass(config, dataclass_type=RolloutConfig)
        self.model_config: HFModelConfig = (
            model_config
            if isinstance(model_config, HFModelConfig)
            else omega_conf_to_dataclass(model_config, dataclass_type=HFModelConfig)
        )
        self.replica_rank = replica_rank
        self.options = CPUEngineOptions.from_rollout_config(self.config)
        torch.set_num_threads(self.options.num_threads or os.cpu_count() or 1)

        hf_config = self.model_config.hf_config
        # flash-attn does not run on the CPU: keep eager if asked for, else torch's SDPA.
        attention = "eager" if getattr(hf_config, "_attn_implementation", None) == "eager" else "sdpa"
        if model is not None:
            self.model = model
            self.has_weights = True
        elif self.config.load_format == "dummy":
            # verl's hybrid engines start from dummy weights: the trainer sends the real ones before any rollout.
            self.model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32, attn_implementation=attention)
            self.has_weights = False
        else:
            self.model = AutoModelForCausalLM.from_pretrained(
                self.model_config.local_path, config=hf_config, dtype=torch.float32, attn_implementation=attention
            )
            self.has_weights = True
        self.model.eval()
        self.eos_token_ids = eos_token_ids(self.model_config)
        self.pad_token_id = pad_token_id(self.model_config, self.eos_token_ids)
        self.max_model_len = self.config.max_model_len or (self.config.prompt_length + self.config.response_length)
        if isinstance(self.config.seed, bool) or not isinstance(self.config.seed, int):
            raise ValueError(f"actor_rollout_ref.rollout.seed must be an integer, got {self.config.seed!r}")
        self.seed: int = self.config.seed
        # Requests without a named stream: how many with the same prompt this server has seen at each step.
        self._unnamed_counts: dict[tuple[int | None, tuple[int, ...]], int] = {}

        self.global_steps: int | None = None
        self.awake = True
        self.weight_updates = 0
        self.batch_sizes: list[int] = []
        self._pending: list[_PendingRequest] = []
        self._batcher: asyncio.Task | None = None
        self._model_lock: asyncio.Lock | None = None
        self._arrival: asyncio.Event | None = None
        # Requests of each named burst already taken into a batch (a burst larger than max_num_seqs takes several).
        self._burst_taken: dict[str, int] = {}

    # ------------------------------------------------------------------ generation

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data: Any = None,
        video_data: Any = None,
        audio_data: Any = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
        priority: int = 0,
    ) -> TokenOutput:
        """Generate one response; concurrent calls are batched together. Same contract as vLLM's server."""
        if image_data is not None or video_data is not None or audio_data is not None:
            raise NotImplementedError("the CPU rollout serves text-only models (got image, video or audio data)")
        if not self.has_weights:
            raise RuntimeError("CPU rollout server has no weights yet: the trainer has not called update_weights")
        prompt_ids = [int(t) for t in prompt_ids]
        room = self.max_model_len - len(prompt_ids)
        if room < 1:
            raise ValueError(
                f"request {request_id}: prompt of {len(prompt_ids)} tokens leaves no room to generate within "
                f"max_model_len={self.max_model_len}"
            )
        params = dict(sampling_params)
        want_log_probs = bool(params.get("logprobs", False))
        default_max_tokens = min(
            self.config.response_length, self.config.prompt_length + self.config.response_length - len(prompt_ids)
        )
        spec = sampling_spec_from_params(params, default_max_tokens=max(1, default_max_tokens))
        if spec.max_tokens > room:
            spec = dataclasses.replace(spec, max_tokens=room)
        burst, burst_size = request_burst(params)
        if self.options.burst_wait_ms <= 0:
            burst, burst_size = None, 0
        generator = self.request_generator(params, prompt_ids)
        future = asyncio.get_running_loop().create_future()
        order = (tuple(prompt_ids), str(params.get(SAMPLE_STREAM_KEY, "")))
        self._pending.append(_PendingRequest(request_id, prompt_ids, spec, generator, future, burst, burst_size, order))
        self._arrived().set()
        if self._batcher is None or self._batcher.done():
            self._batcher = asyncio.create_task(self._run_batches())
        result: GenerationResult | None = await future
        extra_fields: dict[str, Any] = {"global_steps": self.global_steps}
        if result is None:
            return TokenOutput(token_ids=[], log_probs=None, stop_reason="aborted", extra_fields=extra_fields)
        return TokenOutput(
            token_ids=result.token_ids,
            log_probs=result.log_probs if want_log_probs else None,
            stop_reason="completed",
            num_preempted=0,
            extra_fields=extra_fields,
        )

    def request_generator(self, params: dict[str, Any], prompt_ids: list[int]) -> torch.Generator:
        """The random stream of one request, so that its response does not depend on arrival order or batching.

        In order of precedence:

        1. the request's own ``seed`` sampling parameter (vLLM's per-request seed) seeds it as given;
        2. a named stream (``sampling_params["sample_stream"]``, set by the caller that knows the request: the ACPO
           agent loop names the pass, the step, the prompt's rank among identical prompts and the request's session)
           is seeded with ``request_seed(rollout.seed, stream, prompt_ids)``;
        3. otherwise the stream is named ``unnamed:<global_steps>:<k>``, ``k`` counting the requests with this prompt
           this server has received at this step. That is still independent of batching, but among identical prompts
           it follows arrival order (responses of a group may be permuted between runs) and it is per server.
        """
        seed = explicit_seed(params)
        if seed is not None:
            return torch.Generator().manual_seed(seed)
        stream = params.get(SAMPLE_STREAM_KEY)
        if stream is None:
            key = (self.global_steps, tuple(prompt_ids))
            rank = self._unnamed_counts.get(key, 0)
            self._unnamed_counts[key] = rank + 1
            stream = f"unnamed:{self.global_steps}:{rank}"
        return torch.Generator().manual_seed(request_seed(self.seed, str(stream), prompt_ids))

    def _set_global_steps(self, global_steps: int) -> None:
        if global_steps != self.global_steps:
            self._unnamed_counts.clear()
            self._burst_taken.clear()
        self.global_steps = global_steps

    def _lock(self) -> asyncio.Lock:
        if self._model_lock is None:
            self._model_lock = asyncio.Lock()
        return self._model_lock

    async def _gather_burst(self) -> None:
        """Wait while requests keep arriving (at most ``max_batch_wait_ms``), so one burst becomes one batch."""
        wait_s = self.options.batch_wait_ms / 1000.0
        deadline = time.monotonic() + self.options.max_batch_wait_ms / 1000.0
        seen = -1
        while len(self._pending) != seen and len(self._pending) < self.config.max_num_seqs:
            seen = len(self._pending)
            if time.monotonic() + wait_s > deadline:
                break
            await asyncio.sleep(wait_s)

    def _arrived(self) -> asyncio.Event:
        if self._arrival is None:
            self._arrival = asyncio.Event()
        return self._arrival

    async def _gather_named_burst(self, burst: str, size: int) -> None:
        """Wait until every request of ``burst`` has arrived (at most ``burst_wait_ms``): woken by each arrival, no
        polling. Decoding a burst only whole, in a fixed order, makes its batches the same in every run."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.burst_wait_ms / 1000.0
        while True:
            pending = sum(1 for r in self._pending if r.burst == burst)
            if pending == 0 or pending + self._burst_taken.get(burst, 0) >= size:
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                logger.warning(
                    "burst %s: %d of its %d requests reached this server within burst_wait_ms=%s; decoding them "
                    "(another server took the rest, or they failed before reaching it)",
                    burst,
                    pending + self._burst_taken.get(burst, 0),
                    size,
                    self.options.burst_wait_ms,
                )
                return
            self._arrived().clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived().wait(), timeout=remaining)

    def _take_pending(self, candidates: list[_PendingRequest]) -> list[_PendingRequest]:
        """The first ``max_num_seqs`` of ``candidates``, removed from the pending requests."""
        batch = candidates[: self.config.max_num_seqs]
        taken = {id(r) for r in batch}
        self._pending = [r for r in self._pending if id(r) not in taken]
        return batch

    def _take_named_burst(self, burst: str, size: int) -> list[_PendingRequest]:
        """The next batch of ``burst``: its pending requests in (prompt, stream) order, at most ``max_num_seqs``."""
        members = sorted((r for r in self._pending if r.burst == burst), key=lambda r: r.order)
        batch = self._take_pending(members)
        done = self._burst_taken.get(burst, 0) + len(batch)
        if done >= size:
            self._burst_taken.pop(burst, None)
        else:
            self._burst_taken[burst] = done
        return batch

    async def _run_batches(self) -> None:
        while self._pending:
            first = self._pending[0]
            if first.burst is not None:
                await self._gather_named_burst(first.burst, first.burst_size)
                batch = self._take_named_burst(first.burst, first.burst_size)
                if not batch:  # aborted while gathering
                    continue
            else:
                await self._gather_burst()
                # Requests of named bursts wait for their own batch, whole.
                batch = self._take_pending([r for r in self._pending if r.burst is None])
            try:
                async with self._lock():
                    results = await asyncio.to_thread(
                        generate_batch,
                        self.model,
                        [r.prompt_ids for r in batch],
                        [r.spec for r in batch],
                        self.eos_token_ids,
                        self.pad_token_id,
                        [r.generator for r in batch],
                    )
                self.batch_sizes.append(len(batch))
            except Exception as err:  # every caller must hear about the failure, not hang
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(err)
                continue
            for request, result in zip(batch, results):
                if not request.future.done():
                    request.future.set_result(result)

    # ------------------------------------------------------------------ weights

    async def load_weights(self, named_tensors: dict[str, torch.Tensor], global_steps: int | None = None) -> int:
        """Copy the trainer's parameters (Hugging Face names) into the served model; returns how many were set.

        Unknown names fail loudly; parameters tied to one that was sent (the LM head of a tied embedding) may be
        omitted. Waits for the batch being decoded, so no response mixes two policies.
        """
        # Tied parameters (the LM head of a tied embedding) appear under both names; either one sets them.
        params = dict(self.model.named_parameters(remove_duplicate=False))
        unknown = sorted(set(named_tensors) - set(params))
        if unknown:
            raise KeyError(f"CPU rollout received weights the served model does not have: {unknown[:5]}")
        sent = {id(params[name]) for name in named_tensors}
        unset = sorted(name for name, param in params.items() if id(param) not in sent)
        if unset:
            raise KeyError(f"CPU rollout update would leave parameters unset: {unset[:5]}")
        for name, tensor in named_tensors.items():
            if params[name].shape != tensor.shape:
                raise ValueError(
                    f"weight {name}: served shape {tuple(params[name].shape)}, received {tuple(tensor.shape)}"
                )
        async with self._lock():
            with torch.no_grad():
                for name, tensor in named_tensors.items():
                    params[name].copy_(tensor.to(dtype=params[name].dtype))
        self.has_weights = True
        self.weight_updates += 1
        if global_steps is not None:
            self._set_global_steps(global_steps)
        return len(named_tensors)

    # ------------------------------------------------------------------ verl's server control surface

    async def wake_up(self, tags: list[str] | None = None) -> None:
        self.awake = True

    async def sleep(self) -> None:
        # Host memory is not reclaimed between steps: the weights stay for the next update to overwrite.
        self.awake = False

    async def clear_kv_cache(self) -> None:
        return None  # the KV cache lives only for the duration of one batch

    async def release_kv_cache(self) -> None:
        return None

    async def resume_kv_cache(self) -> None:
        return None

    async def set_global_steps(self, global_steps: int) -> None:
        self._set_global_steps(global_steps)

    async def wait_for_requests_to_drain(self) -> None:
        while self._pending or (self._batcher is not None and not self._batcher.done()):
            await asyncio.sleep(0.01)

    async def abort_all_requests(self, reset_prefix_cache: bool = True, reject_request: bool = False) -> dict:
        """Answer every request that has not started decoding with ``stop_reason='aborted'``."""
        aborted = [r for r in self._pending if not r.future.done()]
        self._pending.clear()
        self._burst_taken.clear()
        self._arrived().set()  # a burst being gathered stops waiting for requests that are gone
        for request in aborted:
            request.future.set_result(None)
        return {"aborted_count": len(aborted), "request_ids": [r.request_id for r in aborted]}

    async def resume_generation(self) -> None:
        return None

    async def start_profile(self, **kwargs: Any) -> None:
        return None

    async def stop_profile(self) -> None:
        return None

    async def get_stats(self) -> dict[str, Any]:
        """Counters for tests and benchmarks: batch sizes decoded, weight updates received, awake state."""
        return {
            "batch_sizes": list(self.batch_sizes),
            "weight_updates": self.weight_updates,
            "global_steps": self.global_steps,
            "awake": self.awake,
        }


def server_actor_name(replica_rank: int, name_suffix: str = "") -> str:
    return f"{SERVER_NAME_PREFIX}_{replica_rank}{name_suffix}"


class CPURolloutReplica(RolloutReplica):
    """One CPU generation server per replica; a replica spans exactly one trainer worker (tp = dp = pp = 1)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.world_size != 1:
            raise ValueError(
                "the CPU rollout runs one server per trainer worker: set actor_rollout_ref.rollout."
                "tensor_model_parallel_size=1, data_parallel_size=1 and pipeline_model_parallel_size=1 "
                f"(world size {self.world_size})"
            )

    def rollout_worker_use_gpu(self) -> bool:
        return False

    async def launch_servers(self) -> None:
        options: dict[str, Any] = {
            "name": server_actor_name(self.replica_rank, self.name_suffix),
            "max_concurrency": self.max_concurrency,
            # The server computes only while the trainer worker waits on it: reserving a core would deadlock small
            # machines without making anything faster.
            "num_cpus": 0,
        }
        if self.workers:
            node_id = await self.workers[0].__ray_call__.remote(lambda _: ray.get_runtime_context().get_node_id())
            options["scheduling_strategy"] = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
                node_id=node_id, soft=False
            )
        server = (
            ray.remote(CPURolloutServer)
            .options(**options)
            .remote(config=self.config, model_config=self.model_config, replica_rank=self.replica_rank)
        )
        await server.__ray_ready__.remote()
        self.servers = [server]
        self._server_handle = server
        self._server_address = options["name"]


class CPUServerAdapter(BaseRollout):
    """The trainer worker's handle on its CPU generation server: wake/sleep and weight updates."""

    def __init__(self, config: RolloutConfig, model_config: HFModelConfig, device_mesh: Any, replica_rank: int = -1):
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ.get("RANK", "0"))
        self.replica_rank = rank if replica_rank == -1 else replica_rank
        self.server_handle: ray.actor.ActorHandle | None = None

    def _server(self) -> ray.actor.ActorHandle:
        # The server is launched after the trainer worker, so look it up on first use.
        if self.server_handle is None:
            self.server_handle = ray.get_actor(server_actor_name(self.replica_rank))
        return self.server_handle

    async def resume(self, tags: list[str]) -> None:
        await self._server().wake_up.remote(tags=tags)

    async def release(self) -> None:
        await self._server().sleep.remote()

    async def update_weights(
        self,
        weights: Iterable[tuple[str, torch.Tensor]] | AsyncIterable[tuple[str, torch.Tensor]],
        global_steps: int | None = None,
        wire_format: str = "named_tensors",
        peft_config: Any = None,
        **kwargs: Any,
    ) -> None:
        if wire_format != "named_tensors":
            raise NotImplementedError(f"the CPU rollout receives full tensors only, not wire_format={wire_format!r}")
        if peft_config is not None:
            raise NotImplementedError("the CPU rollout does not serve LoRA adapters: set model.lora.merge=True")
        # The generator may run collectives (FSDP all-gathers), so every rank consumes it in full.
        named_tensors: dict[str, torch.Tensor] = {}
        if isinstance(weights, AsyncIterable):
            async for name, tensor in weights:
                named_tensors[name] = tensor.detach().to("cpu").clone()
        else:
            for name, tensor in weights:
                named_tensors[name] = tensor.detach().to("cpu").clone()
        await self._server().load_weights.remote(named_tensors, global_steps)
