"""The actor worker of ACPO: verl's ``ActorRolloutRefWorker`` plus spec §3 attribution scoring on its own model.

``ACPOActorRolloutRefWorker.compute_answer_loglik`` runs acpo_core's packed scoring (one sequence per response,
``[q, o, Y^(0), ..., Y^(K)]`` with a 4D attention mask) on the worker's FSDP model, without gradients, in micro-batches
of ``acpo.attribution.micro_batch_size`` responses, under the same autocast dtype as verl's log-prob pass. It is
dispatched like verl's ``compute_log_prob`` (``make_nd_compute_dataproto_dispatch_fn(mesh_name="actor")``): the driver
pads the batch to a multiple of the data-parallel size, every data-parallel rank scores an equal share, and the
Ulysses source rank of each group returns it. Equal shares mean an equal number of forward passes on every rank,
which FSDP's collective parameter gathers require.

The packed mask is a custom 4D mask, which flash-attention with remove-padding (verl's usual training forward on a
GPU) does not take: :func:`attention_for_custom_masks` switches the model to ``sdpa`` for this forward only and
restores the training implementation afterwards.

The driver-side halves live here too, so that the wire format has one owner: :class:`AttributionInputs` (the padded
batch of spec §3, as a TensorDict for the worker) and :func:`build_naive_log_prob_batch` (the reference path: the
K+1 sequences ``[q, o_<c_i] + Y`` in verl's own no-padding layout, scored by verl's ``compute_log_prob``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, fields
from typing import Any

import torch
from tensordict import TensorDict
from verl.single_controller.base.decorator import make_nd_compute_dataproto_dispatch_fn, register
from verl.utils import tensordict_utils as tu
from verl.utils.device import get_device_id, get_device_name
from verl.workers.engine_workers import ActorRolloutRefWorker

from acpo_core.attribution import SUPPORTED_ATTENTION, score_answer_loglik

__all__ = [
    "ANSWER_LOGLIK_KEY",
    "ACPOActorRolloutRefWorker",
    "AttributionInputs",
    "attention_for_custom_masks",
    "build_naive_log_prob_batch",
    "pad_rows_to_multiple",
]

ANSWER_LOGLIK_KEY = "answer_loglik"
# The attention implementation used for the packed forward when the training one takes no 4D mask.
PACKED_ATTENTION = "sdpa"
SUPPORTED_STRATEGIES = ("fsdp", "fsdp2")


@dataclass(frozen=True)
class AttributionInputs:
    """Spec §3 inputs for N responses, in acpo_core's layout (see ``acpo_core.attribution.score_answer_loglik``).

    Prompts left-padded, responses and answers right-padded; ``boundaries`` [N, Kmax+1] with -1 after c_K.
    """

    prompt_ids: torch.Tensor  # [N, P] long
    prompt_mask: torch.Tensor  # [N, P] 0/1
    response_ids: torch.Tensor  # [N, T] long
    response_mask: torch.Tensor  # [N, T] 0/1
    boundaries: torch.Tensor  # [N, Kmax+1] long
    num_steps: torch.Tensor  # [N] long
    answer_ids: torch.Tensor  # [N, A] long
    answer_mask: torch.Tensor  # [N, A] 0/1

    def __len__(self) -> int:
        return int(self.prompt_ids.shape[0])

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to_tensordict(self, micro_batch_size: int, temperature: float) -> TensorDict:
        """The worker's input: these tensors plus the scoring settings as non-tensor data."""
        td = TensorDict(self.as_dict(), batch_size=[len(self)])
        tu.assign_non_tensor(td, micro_batch_size=int(micro_batch_size), temperature=float(temperature))
        return td

    @classmethod
    def from_tensordict(cls, td: TensorDict) -> AttributionInputs:
        missing = [f.name for f in fields(cls) if f.name not in td]
        if missing:
            raise KeyError(f"compute_answer_loglik input lacks the field(s) {missing}")
        return cls(**{f.name: td[f.name] for f in fields(cls)})


def pad_rows_to_multiple(td: TensorDict, multiple: int) -> tuple[TensorDict, int]:
    """Append copies of the last row so that ``len(td)`` is a multiple of ``multiple`` (verl's dispatch needs it).

    Returns the padded TensorDict and the number of real rows (outputs beyond it are to be dropped).
    """
    num_rows = len(td)
    if num_rows == 0:
        raise ValueError("cannot pad an empty batch for dispatch")
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    remainder = num_rows % multiple
    if remainder == 0:
        return td, num_rows
    filler = torch.full((multiple - remainder,), num_rows - 1, dtype=torch.long)
    index = torch.cat([torch.arange(num_rows), filler])
    return tu.index_select_tensor_dict(td, index), num_rows


def _configs_of(model: Any) -> list[Any]:
    """Every distinct config of the model and of its sub-models and sub-configs (attention is set per config)."""
    seen: dict[int, Any] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is None or not hasattr(config, "_attn_implementation"):
            continue
        seen.setdefault(id(config), config)
        for key in getattr(config, "sub_configs", {}) or {}:
            sub = getattr(config, key, None)
            if sub is not None and hasattr(sub, "_attn_implementation"):
                seen.setdefault(id(sub), sub)
    return list(seen.values())


@contextmanager
def attention_for_custom_masks(model: Any) -> Iterator[None]:
    """Run the body with an attention implementation that takes a custom 4D mask.

    ``sdpa`` and ``eager`` are kept as they are. Anything else (``flash_attention_2`` with verl's remove-padding
    patches, a kernel) is switched to ``sdpa`` through ``set_attn_implementation`` and restored on exit, including
    the sub-model configs that ``set_attn_implementation`` marks as changed.
    """
    current = getattr(model.config, "_attn_implementation", None)
    if current in SUPPORTED_ATTENTION:
        yield
        return
    configs = _configs_of(model)
    saved = [(c, c._attn_implementation_internal, hasattr(c, "_attn_was_changed")) for c in configs]
    try:
        model.set_attn_implementation(PACKED_ATTENTION)
        if model.config._attn_implementation != PACKED_ATTENTION:
            raise RuntimeError(
                f"{type(model).__name__} did not switch from attention {current!r} to {PACKED_ATTENTION!r}, which "
                "packed attribution needs for its 4D mask; set acpo.attribution.mode=naive for this model"
            )
        yield
    finally:
        for config, implementation, had_marker in saved:
            config._attn_implementation_internal = implementation
            if not had_marker and hasattr(config, "_attn_was_changed"):
                del config._attn_was_changed


class ACPOActorRolloutRefWorker(ActorRolloutRefWorker):
    """verl's hybrid actor/rollout/ref worker with spec §3 attribution scoring on the actor's own model."""

    def _check_acpo_support(self) -> None:
        if self.actor is None:
            raise RuntimeError(f"compute_answer_loglik needs the actor model, but this worker's role is {self.role!r}")
        strategy = self.config.actor.strategy
        if strategy not in SUPPORTED_STRATEGIES:
            raise NotImplementedError(
                f"packed attribution runs on the FSDP engines {SUPPORTED_STRATEGIES}; actor_rollout_ref.actor.strategy "
                f"is {strategy!r}: use acpo.attribution.mode=naive (verl's own compute_log_prob) with this engine"
            )
        if self.config.model.get("use_fused_kernels", False):
            raise ValueError(
                "actor_rollout_ref.model.use_fused_kernels=True replaces the model's forward with one that returns "
                "no logits, which packed attribution needs: set it to False or acpo.attribution.mode=naive"
            )

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    def compute_answer_loglik(self, data: TensorDict) -> TensorDict:
        """Spec §3: L [N, Kmax+1] (float32) of this rank's share of responses, as ``answer_loglik``.

        ``data`` is :meth:`AttributionInputs.to_tensordict`: the padded tensors plus ``micro_batch_size`` and
        ``temperature`` (the rollout temperature, as in verl's old-log-prob pass).
        """
        self._check_acpo_support()
        inputs = AttributionInputs.from_tensordict(data)
        micro_batch_size = int(tu.get_non_tensor_data(data, "micro_batch_size", default=8))
        temperature = float(tu.get_non_tensor_data(data, "temperature", default=1.0))
        engine = self.actor.engine
        # The device verl's engine feeds its inputs to (its parameters may live on the CPU under offloading).
        device = get_device_id()
        tensors = {name: tensor.to(device) for name, tensor in inputs.as_dict().items()}
        autocast_dtype = getattr(engine, "_autocast_dtype", torch.float32)
        autocast = (
            nullcontext()
            if autocast_dtype == torch.float32
            else torch.autocast(device_type=get_device_name(), dtype=autocast_dtype)
        )
        with engine.eval_mode(), torch.no_grad():
            model = engine.module
            with attention_for_custom_masks(model), autocast:
                scores = score_answer_loglik(
                    model, **tensors, micro_batch_size=micro_batch_size, temperature=temperature
                )
        return TensorDict({ANSWER_LOGLIK_KEY: scores.float().cpu()}, batch_size=[len(inputs)])


def build_naive_log_prob_batch(inputs: AttributionInputs, temperature: float) -> tuple[TensorDict, torch.Tensor]:
    """Spec §3 reference path in verl's layout: one sequence ``[q, o_<c_i] + Y`` per response and i = 0..K.

    The sequences use verl's no-padding (jagged) fields, as its agent loop writes them: ``prompts`` = q and the
    response prefix, ``responses`` = Y, ``input_ids``, ``attention_mask``, ``position_ids`` (0..len-1),
    ``response_mask`` and ``loss_mask`` (ones over Y); verl's ``compute_log_prob`` then gives the log-probability of
    every answer token.

    Returns:
        The TensorDict (J rows, J = sum_n (K_n + 1)) and ``[J, 2]`` long (response row n, step index i) of each row.
    """
    prompt_len = (inputs.prompt_mask != 0).sum(dim=1).tolist()
    response_len = (inputs.response_mask != 0).sum(dim=1).tolist()
    answer_len = (inputs.answer_mask != 0).sum(dim=1).tolist()
    steps = inputs.num_steps.tolist()
    cuts = inputs.boundaries.tolist()
    prompt_width = inputs.prompt_ids.shape[1]
    contexts: list[torch.Tensor] = []
    answers: list[torch.Tensor] = []
    owners: list[tuple[int, int]] = []
    for n in range(len(inputs)):
        if cuts[n][steps[n]] != response_len[n]:
            raise ValueError(f"row {n}: last boundary {cuts[n][steps[n]]} is not the response length {response_len[n]}")
        prompt = inputs.prompt_ids[n, prompt_width - prompt_len[n] :].long()
        answer = inputs.answer_ids[n, : answer_len[n]].long()
        for i in range(steps[n] + 1):
            contexts.append(torch.cat([prompt, inputs.response_ids[n, : cuts[n][i]].long()]))
            answers.append(answer)
            owners.append((n, i))
    sequences = [torch.cat([c, a]) for c, a in zip(contexts, answers)]

    def jagged(tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.nested.as_nested_tensor(tensors, layout=torch.jagged)

    td = tu.get_tensordict(
        {
            "prompts": jagged(contexts),
            "responses": jagged(answers),
            "input_ids": jagged(sequences),
            "attention_mask": jagged([torch.ones_like(s) for s in sequences]),
            "position_ids": jagged([torch.arange(s.numel(), dtype=torch.long) for s in sequences]),
            "response_mask": jagged([torch.ones_like(a) for a in answers]),
            "loss_mask": jagged([torch.ones_like(a) for a in answers]),
        }
    )
    tu.assign_non_tensor(td, temperature=float(temperature), calculate_entropy=False, compute_loss=False)
    return td, torch.tensor(owners, dtype=torch.long).reshape(-1, 2)
