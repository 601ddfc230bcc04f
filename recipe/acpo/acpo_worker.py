"""The actor worker of ACPO: verl's ``ActorRolloutRefWorker`` plus §3 attribution scoring on its own model.

``ACPOActorRolloutRefWorker.compute_answer_loglik`` runs acpo_core's packed scoring (``acpo_core.scoring``:
``acpo.attribution.attention`` flex, one sequence of documents under a BlockMask, or sdpa, a dense 4D mask) on the
worker's FSDP model, without gradients, under the same autocast dtype as verl's log-prob pass, in micro-batches of
at most ``acpo.attribution.micro_batch_size`` responses and the token budget. It is dispatched like verl's
``compute_log_prob`` (``make_nd_compute_dataproto_dispatch_fn(mesh_name="actor")``): the driver pads the batch to a
multiple of the data-parallel size and every data-parallel rank scores an equal share. FSDP's collective parameter
gathers need an equal number of forward passes on every rank: the ranks agree on the largest micro-batch count (and
on whether any share is bad) in one all-reduce before the first forward. Then, before every forward and after the
last, they agree whether any rank failed (``acpo_core.fail_fast``): an error outside the forward's collectives
(packing a micro-batch, an out-of-memory reading the logits out) stops every rank within one micro-batch, each
raising ``RankFailure`` with the failed rank's traceback, instead of leaving them in FSDP collectives until the NCCL
watchdog. An error between two of the forward's own collectives is not covered (see ``acpo_core.fail_fast``). The
packed forward's attention implementation (flex_attention or sdpa instead of verl's flash-attention with
remove-padding) is switched for that forward only and restored afterwards
(``acpo_core.scoring.attention_implementation``).

``ACPOActorRolloutRefWorker.generate_lookahead`` serves the look-ahead judge (§3.3, ``acpo.attribution.judge=
lookahead``): the old policy's greedy continuation of every prefix [q, o_<c_i], generated on the same FSDP model by
``acpo_core.lookahead.greedy_generate`` (in lockstep across ranks, after the ranks agree on a micro-batch count).

The driver-side halves live here too, so that the scoring message has one owner: :func:`score_answers` is what the
trainer calls, with the actor worker group, to score an ``acpo_core.attribution.AttributionBatch`` either way (§3):
``packed``, :func:`attribution_request` (the batch as a TensorDict for the worker, with the micro-batch size, the
rollout temperature, the attention and :func:`attribution_token_budget`) sent to ``compute_answer_loglik``; or
``naive``, :func:`build_naive_log_prob_batch` (acpo_core's K+1 sequences ``[q, o_<c_i] + Y`` in verl's own
no-padding layout) scored by verl's ``compute_log_prob`` and summed back per step. With the look-ahead judge the
contexts first get the continuations of :func:`continue_on_workers` (§3.3), either way. Either request is
padded to the actor's data-parallel size (:func:`pad_rows_to_multiple`), as verl's dispatch needs.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import fields
from functools import partial
from typing import Any

import torch
from omegaconf import DictConfig
from tensordict import TensorDict
from verl.single_controller.base.decorator import Dispatch, make_nd_compute_dataproto_dispatch_fn, register
from verl.utils import tensordict_utils as tu
from verl.utils.device import get_device_id, get_device_name
from verl.workers.engine_workers import ActorRolloutRefWorker
from verl.workers.utils.padding import response_from_nested

from acpo_core.attribution import AttributionBatch, ScoringJob, check_attribution_batch, naive_sequences
from acpo_core.config import ACPOConfig
from acpo_core.lookahead import ContinueFn, cut_at_text, greedy_generate, lookahead_sequences, score_lookahead
from acpo_core.scoring import attention_implementation, check_scoring_inputs, plan_scoring, score_answer_loglik
from recipe.acpo.gc_freeze import freeze_startup_objects
from recipe.acpo.rollout_batch import nested_lengths

__all__ = [
    "ANSWER_LOGLIK_KEY",
    "CONTINUATIONS_KEY",
    "ACPOActorRolloutRefWorker",
    "actor_dp_size",
    "attribution_batch_from_request",
    "attribution_request",
    "attribution_token_budget",
    "build_naive_log_prob_batch",
    "continue_on_workers",
    "pad_rows_to_multiple",
    "score_answers",
]

ANSWER_LOGLIK_KEY = "answer_loglik"
# Scoring settings carried as non-tensor data of the request (token_budget 0: no budget).
SCORING_DEFAULTS: dict[str, Any] = {"micro_batch_size": 8, "temperature": 1.0, "attention": "auto", "token_budget": 0}
# The look-ahead judge's generation settings (pad_id -1: unset; end_ids: comma-separated, as one non-tensor value).
LOOKAHEAD_DEFAULTS: dict[str, Any] = {"max_new_tokens": 64, "micro_batch_size": 64, "pad_id": -1, "end_ids": ""}
CONTINUATIONS_KEY = "continuations"
CONTEXTS_KEY = "contexts"
SUPPORTED_STRATEGIES = ("fsdp", "fsdp2")


def attribution_request(
    batch: AttributionBatch,
    micro_batch_size: int,
    temperature: float,
    attention: str = "auto",
    token_budget: int | None = None,
) -> TensorDict:
    """The worker's input for :meth:`ACPOActorRolloutRefWorker.compute_answer_loglik`: the tensors of ``batch``
    plus the scoring settings (``acpo.attribution``, the rollout temperature) as non-tensor data."""
    td = TensorDict(batch.as_dict(), batch_size=[len(batch)])
    tu.assign_non_tensor(
        td,
        micro_batch_size=int(micro_batch_size),
        temperature=float(temperature),
        attention=str(attention),
        token_budget=int(token_budget or 0),
    )
    return td


def attribution_batch_from_request(td: TensorDict) -> AttributionBatch:
    """The :class:`AttributionBatch` of a request built by :func:`attribution_request`."""
    names = [f.name for f in fields(AttributionBatch)]
    missing = [name for name in names if name not in td]
    if missing:
        raise KeyError(f"compute_answer_loglik input lacks the field(s) {missing}")
    return AttributionBatch(**{name: td[name] for name in names})


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


class ACPOActorRolloutRefWorker(ActorRolloutRefWorker):
    """verl's hybrid actor/rollout/ref worker with §3 attribution scoring on the actor's own model."""

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_model(self) -> None:
        """verl's ``init_model``, then this process's start-up objects frozen out of garbage collection
        (:mod:`recipe.acpo.gc_freeze`). The override repeats verl's ``register`` so that the worker group still
        dispatches it to every rank."""
        super().init_model()
        freeze_startup_objects("training worker")

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

    def _agree_across_ranks(self, micro_batches: int, failed: bool) -> tuple[int, bool]:
        """The largest micro-batch count of all ranks, and whether any rank failed (one all-reduce, no forward)."""
        if not torch.distributed.is_initialized():
            return micro_batches, failed
        flags = torch.tensor([micro_batches, int(failed)], dtype=torch.long, device=get_device_id())
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        return int(flags[0]), bool(flags[1])

    def _autocast(self) -> Any:
        """The autocast of verl's log-prob pass (its engine's dtype), or none in float32."""
        autocast_dtype = getattr(self.actor.engine, "_autocast_dtype", torch.float32)
        if autocast_dtype == torch.float32:
            return nullcontext()
        return torch.autocast(device_type=get_device_name(), dtype=autocast_dtype)

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    def generate_lookahead(self, data: TensorDict) -> TensorDict:
        """§3.3: the old policy's greedy continuation of each context, uncut, as ``continuations`` [N, max_new_tokens]
        (``pad_id`` after an end token).

        ``data`` (:func:`continue_on_workers`): ``contexts`` (jagged, [q, o_<c_i] each) plus the settings of
        ``LOOKAHEAD_DEFAULTS``. The ranks agree on the largest micro-batch count first and generate in
        lockstep, so every rank runs the same number of forward passes (FSDP's parameter gathers). Generation
        runs on the actor's own model under sdpa attention (verl's remove-padding patches expect packed inputs) and
        the log-prob pass's autocast.
        """
        self._check_acpo_support()
        settings = {key: tu.get_non_tensor_data(data, key, default=value) for key, value in LOOKAHEAD_DEFAULTS.items()}
        end_ids = [int(token) for token in str(settings["end_ids"]).split(",") if token]
        if int(settings["pad_id"]) < 0 or not end_ids:
            raise ValueError(f"generate_lookahead needs pad_id and end_ids, got {settings}")
        contexts = list(data[CONTEXTS_KEY].unbind())
        micro_batch_size = int(settings["micro_batch_size"])
        micro_batches, _ = self._agree_across_ranks(-(-len(contexts) // micro_batch_size), False)
        engine = self.actor.engine
        model = engine.module
        lockstep = torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1
        # The model is called through its forward (FSDP1's root gathers its own parameters there, as in the scoring
        # pass), on verl's compute device (the parameters may live on the CPU under offloading).
        with engine.eval_mode(), torch.no_grad(), self._autocast(), attention_implementation(model, "sdpa"):
            continuations = greedy_generate(
                model,
                contexts,
                pad_id=int(settings["pad_id"]),
                end_ids=end_ids,
                max_new_tokens=int(settings["max_new_tokens"]),
                micro_batch_size=micro_batch_size,
                min_micro_batches=micro_batches,
                lockstep=lockstep,
                device=get_device_id(),
            )
        return TensorDict({CONTINUATIONS_KEY: continuations}, batch_size=[len(contexts)])

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    def compute_answer_loglik(self, data: TensorDict) -> TensorDict:
        """§3: L [N, Kmax+1] (float32) of this rank's share of responses, as ``answer_loglik``.

        ``data`` is :func:`attribution_request`: the padded tensors plus the scoring settings. Every rank first checks
        its share and plans its micro-batches, then the ranks agree (one all-reduce) on the largest micro-batch count
        and on whether any rank's share is bad: a bad share raises on every rank before any forward pass (no rank is
        left waiting in an FSDP collective), naming the rank and the rows of the whole request.
        """
        self._check_acpo_support()
        inputs = attribution_batch_from_request(data)
        settings = {key: tu.get_non_tensor_data(data, key, default=value) for key, value in SCORING_DEFAULTS.items()}
        settings["token_budget"] = int(settings["token_budget"]) or None
        engine = self.actor.engine
        # The device verl's engine feeds its inputs to (its parameters may live on the CPU under offloading).
        inputs = inputs.to(get_device_id())
        model = engine.module
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        first_row = engine.get_data_parallel_rank() * len(inputs)
        error = None
        micro_batches = 0
        try:
            micro_batches = len(
                plan_scoring(
                    model,
                    inputs,
                    check_scoring_inputs(model, inputs, int(settings["micro_batch_size"]), 1.0, first_row),
                    int(settings["micro_batch_size"]),
                    str(settings["attention"]),
                    settings["token_budget"],
                )
            )
        except ValueError as err:
            error = f"compute_answer_loglik on rank {rank}: {err}"
        micro_batches, failed = self._agree_across_ranks(micro_batches, error is not None)
        if failed:
            raise RuntimeError(error or f"compute_answer_loglik on rank {rank}: another rank's share is bad (see it)")
        with engine.eval_mode(), torch.no_grad(), self._autocast():
            scores = score_answer_loglik(
                model,
                inputs,
                micro_batch_size=int(settings["micro_batch_size"]),
                temperature=float(settings["temperature"]),
                attention=str(settings["attention"]),
                token_budget=settings["token_budget"],
                min_micro_batches=micro_batches,
                process_group=torch.distributed.group.WORLD if torch.distributed.is_initialized() else None,
            )
        return TensorDict({ANSWER_LOGLIK_KEY: scores.float().cpu()}, batch_size=[len(inputs)])


def build_naive_log_prob_batch(
    inputs: AttributionBatch, temperature: float, jobs: list[ScoringJob] | None = None
) -> tuple[TensorDict, torch.Tensor]:
    """§3 reference path in verl's layout: one sequence ``[q, o_<c_i] + Y`` per response and i = 0..K.

    The sequences (``jobs``; default :func:`acpo_core.attribution.naive_sequences`, the look-ahead judge's are
    :func:`acpo_core.lookahead.lookahead_sequences`) use verl's no-padding (jagged) fields, as its agent loop writes
    them: ``prompts`` = q and the response prefix, ``responses`` = Y, ``input_ids``, ``attention_mask``,
    ``position_ids`` (0..len-1), ``response_mask`` and ``loss_mask`` (ones over Y); verl's ``compute_log_prob`` then
    gives the log-probability of every answer token.

    Returns:
        The TensorDict (J rows, J = sum_n (K_n + 1)) and ``[J, 2]`` long (response row n, step index i) of each row.
    Raises:
        ValueError: see :func:`acpo_core.attribution.check_attribution_batch`.
    """
    if jobs is None:
        jobs = naive_sequences(inputs, check_attribution_batch(inputs))
    sequences = [sequence for _, _, sequence, _ in jobs]
    contexts = [sequence[:context_len] for _, _, sequence, context_len in jobs]
    answers = [sequence[context_len:] for _, _, sequence, context_len in jobs]
    owners = [(row, step) for row, step, _, _ in jobs]

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


# ---------------------------------------------------------------------------------------------------- driver side


def attribution_token_budget(config: DictConfig, acpo_cfg: ACPOConfig) -> int | None:
    """Tokens per packed attribution forward: ``acpo.attribution.max_tokens_per_micro_batch``, else the log-prob
    pass's ``log_prob_max_token_len_per_gpu`` when ``log_prob_use_dynamic_bsz`` is on, else None (rows only)."""
    if acpo_cfg.attribution.max_tokens_per_micro_batch is not None:
        return acpo_cfg.attribution.max_tokens_per_micro_batch
    rollout = config.actor_rollout_ref.rollout
    if rollout.get("log_prob_use_dynamic_bsz", False):
        return int(rollout.log_prob_max_token_len_per_gpu)
    return None


def actor_dp_size(worker_group: Any) -> int:
    """The data-parallel size of the ``actor`` mesh of a verl worker group: a dispatched batch is a multiple of it."""
    if "actor" not in worker_group._dispatch_info:
        worker_group._dispatch_info["actor"] = worker_group._query_dispatch_info("actor")
    return max(worker_group._dispatch_info["actor"]) + 1


def continue_on_workers(
    worker_group: Any,
    contexts: list[torch.Tensor],
    *,
    pad_id: int,
    end_ids: list[int],
    token_texts: list[str],
    stop_text: str,
    max_new_tokens: int,
    micro_batch_size: int,
) -> list[list[int]]:
    """§3.3's :data:`acpo_core.lookahead.ContinueFn` on the actor workers: their greedy continuation of each context
    (:meth:`ACPOActorRolloutRefWorker.generate_lookahead`), cut by :func:`acpo_core.lookahead.cut_at_text`."""
    if not contexts:
        return []
    request = tu.get_tensordict({CONTEXTS_KEY: torch.nested.as_nested_tensor(contexts, layout=torch.jagged)})
    tu.assign_non_tensor(
        request,
        max_new_tokens=int(max_new_tokens),
        micro_batch_size=int(micro_batch_size),
        pad_id=int(pad_id),
        end_ids=",".join(str(int(token)) for token in end_ids),
    )
    request, num_rows = pad_rows_to_multiple(request, actor_dp_size(worker_group))
    generated = worker_group.generate_lookahead(request)[CONTINUATIONS_KEY][:num_rows]
    ends = set(end_ids)
    return [cut_at_text(row, token_texts, stop_text, ends) for row in generated.tolist()]


def score_answers(
    worker_group: Any,
    inputs: AttributionBatch,
    mode: str,
    config: DictConfig,
    acpo_config: ACPOConfig,
    continue_fn: ContinueFn | None = None,
) -> torch.Tensor:
    """L [R, max_steps + 1] of §3, on the actor workers of ``worker_group`` (the old policy before the update).

    ``mode`` ``packed``: the workers' packed scoring (:meth:`ACPOActorRolloutRefWorker.compute_answer_loglik`);
    ``naive``: verl's ``compute_log_prob`` on K+1 sequences (:func:`build_naive_log_prob_batch`). With
    ``continue_fn`` (the look-ahead judge, §3.3: :func:`continue_on_workers`) the contexts carry the policy's
    continuations: packed, :func:`acpo_core.lookahead.score_lookahead` (each distinct context a one-step response);
    naive, the sequences ``[q, o_<c_i, g_i, Y]`` of :func:`acpo_core.lookahead.lookahead_sequences`. ``config`` is
    the run's verl config (the rollout temperature, the log-prob pass's micro-batching), ``acpo_config`` its ``acpo:``
    block (``acpo.attribution``).
    """
    if continue_fn is not None and mode == "packed":
        # One packed pass over every distinct look-ahead context as a one-step response (§3.3).
        packed = partial(score_answers, worker_group, mode="packed", config=config, acpo_config=acpo_config)
        return score_lookahead(inputs, continue_fn, packed)
    attribution = acpo_config.attribution
    temperature = float(config.actor_rollout_ref.rollout.temperature)
    dp_size = actor_dp_size(worker_group)
    if mode == "packed":
        budget = attribution_token_budget(config, acpo_config)
        request = attribution_request(inputs, attribution.micro_batch_size, temperature, attribution.attention, budget)
        request, num_rows = pad_rows_to_multiple(request, dp_size)
        output = worker_group.compute_answer_loglik(request)
        return output[ANSWER_LOGLIK_KEY][:num_rows].float()
    # Reference path: verl's own log-prob pass on K+1 separate sequences per response.
    jobs = None if continue_fn is None else lookahead_sequences(inputs, check_attribution_batch(inputs), continue_fn)
    request, owners = build_naive_log_prob_batch(inputs, temperature, jobs)
    rollout = config.actor_rollout_ref.rollout
    multiple = dp_size
    if not rollout.get("log_prob_use_dynamic_bsz", False):
        multiple *= int(rollout.log_prob_micro_batch_size_per_gpu)
    request, num_rows = pad_rows_to_multiple(request, multiple)
    output = worker_group.compute_log_prob(request)
    answer_logprobs = response_from_nested(output["log_probs"], request["response_mask"])
    lengths = nested_lengths(answer_logprobs)[:num_rows]
    # §3.2 value-only scoring: each job's answer tokens count as inputs.answer_scored marks them.
    scored = torch.cat([inputs.answer_scored[row, : int(n)] for row, n in zip(owners[:, 0].tolist(), lengths)])
    values = answer_logprobs.values()[: int(lengths.sum())].float() * scored.float()
    job = torch.repeat_interleave(torch.arange(num_rows), lengths)
    per_job = torch.zeros(num_rows).index_add_(0, job, values)
    scores = torch.zeros(inputs.boundaries.shape, dtype=torch.float32)
    scores[owners[:, 0], owners[:, 1]] = per_job
    return scores
