"""Seeded rollouts: every request of a run samples from its own random stream, named by what the request is.

Two runs with the same ``actor_rollout_ref.rollout.seed`` (and the same data order, weights, machine type and thread
count) then draw the same responses, whatever order the requests reach the CPU rollout server in, however they are
batched and however many servers share them. The stream of one request is named in three places:

1. the trainer's process (:func:`seed_rollouts`, installed by ``recipe.acpo.main_acpo``): before a batch of
   prompts is handed to verl's agent-loop workers, each prompt row gets the field ``acpo_sample_stream`` =
   ``"<train|val>:<global_steps>:<d>"``, where ``d`` counts the identical prompts (same messages) before it in the
   pass: a training step and a validation pass of the same step never share streams, and a prompt that appears
   twice in a pass gets two sets of streams;
2. the agent loop (``recipe.acpo.agent_loop.CurriculumAgentLoop``, ``request_stream``) appends the request's session
   (its rank in the prompt's group of n): ``sampling_params["sample_stream"] = "<row stream>:<session_id>"``;
3. the CPU rollout server seeds the request with ``verl_cpu.generation.request_seed(rollout.seed, stream,
   prompt_ids)``, a hash of the run's seed, that name and the prompt's token ids. A ``seed`` the request sets in its
   own sampling parameters wins over all of this.

With one CPU rollout server (the testbed's set-up), the trainer's process also names each submission a burst: every
prompt row gets ``acpo_sample_burst`` = ``"<stream label>:<submission within the pass>"`` and
``acpo_sample_burst_size``, the number of requests the submission sends (its rows times n), and the agent loop passes
both to the server (``sample_burst``, ``sample_burst_size``). The server decodes a burst only whole and in a fixed
order (``verl_cpu.rollout``), so its batches, and the last bits of every logit and returned log-prob, are the same in
every run: without that, requests batched as they happened to arrive gave log-probs that differed in their last bits
(about 1e-9), which Stage 1's importance weights carry into the losses, and two runs' weights drifted apart. With
several servers no burst is named (a server cannot know its share), and batches follow arrival as before.

The trainer's process also puts every batch it samples back in submission order (:class:`SubmissionOrder`): verl
hands over trajectories in the order they finished, and float sums in another order would let the weights, and then
the responses, drift apart after the first step.

What is reproducible and what is not is described in ``verl_cpu.generation`` (and the README): same machine type,
torch version and thread count give identical runs; elsewhere, runs agree closely but may drift.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from tensordict import TensorDict
from transfer_queue import KVBatchMeta
from verl.utils import tensordict_utils as tu

from recipe.acpo.agent_loop import SAMPLE_BURST_FIELD, SAMPLE_BURST_SIZE_FIELD, SAMPLE_STREAM_FIELD
from recipe.acpo.curriculum import _rows
from verl_cpu.rollout import ROLLOUT_NAME as CPU_ROLLOUT_NAME

__all__ = ["SAMPLE_STREAM_FIELD", "SampleStreamTagger", "SubmissionOrder", "cpu_rollout_servers", "seed_rollouts"]

# verl's per-row override of the number of requests of a prompt (AgentLoopWorkerTQ._run_prompt).
ROLLOUT_N_FIELD = "__rollout_n__"


def cpu_rollout_servers(config: Any) -> int | None:
    """How many CPU rollout servers a run has (one per trainer worker, ``verl_cpu.rollout.CPURolloutReplica``);
    None when the rollout is not the CPU one."""
    rollout = config.actor_rollout_ref.rollout
    if rollout.get("name") != CPU_ROLLOUT_NAME:
        return None
    return int(config.trainer.nnodes) * int(config.trainer.n_gpus_per_node)


class SampleStreamTagger:
    """Names the stream of every prompt row submitted for rollout; counts identical prompts over a whole pass.

    A pass is a training step or a validation pass (verl submits a validation pass in several batches, one per
    validation dataloader batch): the duplicate rank of a prompt counts its earlier copies in the same pass.
    """

    def __init__(self, requests_per_prompt: tuple[int, int] | None = None) -> None:
        """``requests_per_prompt``: (training n, validation n) to name each submission a burst of that many requests
        per row (:data:`SAMPLE_BURST_FIELD`); None names no bursts."""
        self._pass: str | None = None
        self._seen: dict[str, int] = {}
        self._submissions = 0
        self.requests_per_prompt = requests_per_prompt

    def __call__(self, batch: TensorDict) -> TensorDict:
        """Attach ``acpo_sample_stream`` (and the burst fields) to every row of ``batch`` (in place); return it."""
        validate = bool(tu.get(batch, "validate", False))
        label = f"{'val' if validate else 'train'}:{tu.get(batch, 'global_steps', None)}"
        if label != self._pass:
            self._pass, self._seen, self._submissions = label, {}, 0
        if self.requests_per_prompt is not None:
            default_n = self.requests_per_prompt[1 if validate else 0]
            size = sum(int(n) if n is not None else default_n for n in _rows(batch, ROLLOUT_N_FIELD))
            tu.assign_non_tensor_stack(batch, SAMPLE_BURST_FIELD, [f"{label}:{self._submissions}"] * len(batch))
            tu.assign_non_tensor_stack(batch, SAMPLE_BURST_SIZE_FIELD, [size] * len(batch))
            self._submissions += 1
        streams = []
        for messages in _rows(batch, "raw_prompt"):
            key = json.dumps(list(messages) if messages is not None else None, sort_keys=True, default=str)
            duplicate = self._seen.get(key, 0)
            self._seen[key] = duplicate + 1
            streams.append(f"{label}:{duplicate}")
        tu.assign_non_tensor_stack(batch, SAMPLE_STREAM_FIELD, streams)
        return batch


class SubmissionOrder:
    """Puts every sampled batch in submission order: prompt row as submitted, then session, then output index.

    verl's replay buffer returns a group's trajectories in the order they finished generating, which varies between
    runs; the training step's float sums (losses, gradients, advantage statistics) then vary in their last bits, and
    the next step's policy with them. Sorting the batch by where each prompt was submitted makes the step
    deterministic. Trajectory keys are verl's ``{uid}_{session_id}_{index}``.
    """

    def __init__(self) -> None:
        self._rows: dict[str, int] = {}
        self._submitted = 0

    def record(self, batch: TensorDict) -> None:
        """Remember the submission rank of every prompt (uid) of ``batch``."""
        for uid in _rows(batch, "uid"):
            self._rows[str(uid)] = self._submitted
            self._submitted += 1

    def _rank(self, key: str) -> tuple[int, int, int]:
        uid, _, rest = key.partition("_")
        session, _, index = rest.partition("_")
        if session.isdigit() and index.isdigit():
            return self._rows.get(uid, self._submitted), int(session), int(index)
        return self._rows.get(uid, self._submitted), 0, 0

    def sort(self, meta: KVBatchMeta) -> KVBatchMeta:
        """``meta`` with its keys (and their tags) in submission order; forgets the prompts it has seen sampled."""
        order = sorted(range(len(meta.keys)), key=lambda i: self._rank(meta.keys[i]))
        for key in meta.keys:
            self._rows.pop(key.partition("_")[0], None)
        return dataclasses.replace(meta, keys=[meta.keys[i] for i in order], tags=[meta.tags[i] for i in order])


def seed_rollouts(trainer: Any, manager: Any) -> Any:
    """Install seeded rollouts on a V1 trainer and its agent-loop manager; returns the manager.

    ``manager.generate_sequences`` names the streams of each batch (:class:`SampleStreamTagger`; with one CPU
    rollout server, its burst too) and records its submission order, and ``trainer.replay_buffer.sample`` returns
    batches in that order (:class:`SubmissionOrder`), for training and validation alike.
    """
    generate_sequences = manager.generate_sequences
    config = getattr(trainer, "config", None)
    requests_per_prompt = None
    if config is not None and cpu_rollout_servers(config) == 1:
        rollout = config.actor_rollout_ref.rollout
        requests_per_prompt = (int(rollout.n), int(rollout.val_kwargs.n))
    tag, order = SampleStreamTagger(requests_per_prompt), SubmissionOrder()

    def seeded_generate_sequences(batch: TensorDict, *args: Any, **kwargs: Any) -> Any:
        order.record(batch)
        return generate_sequences(tag(batch), *args, **kwargs)

    manager.generate_sequences = seeded_generate_sequences
    replay_buffer = getattr(trainer, "replay_buffer", None)
    if replay_buffer is not None:
        sample = replay_buffer.sample

        def ordered_sample(*args: Any, **kwargs: Any) -> tuple[KVBatchMeta, Any]:
            meta, metrics = sample(*args, **kwargs)
            return order.sort(meta), metrics

        replay_buffer.sample = ordered_sample
    return manager
