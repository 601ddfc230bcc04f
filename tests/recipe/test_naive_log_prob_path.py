"""The naive cross-check's log-prob path as the GPU smoke test runs it, on the CPU.

``ACPO_ATTRIBUTION_CROSS_CHECK=1`` scores the naive reference through verl's ``compute_log_prob``, i.e. the FSDP
engine's ``infer_batch`` with the run's ``use_remove_padding`` and ``log_prob_use_dynamic_bsz``. The CPU preset runs it
padded with fixed micro-batches; the smoke test and the 7B scripts run it with remove-padding (the K+1 sequences of a
micro-batch packed into one row, ``attention_mask=None``, sequences told apart by their position ids) and dynamic batch
sizes (micro-batches by token budget, rows reordered and put back). verl 0.9.1 needs no flash-attn for that path: its
FSDP engine packs with nested tensors, ``verl.utils.attention_utils`` falls back to pure-torch ``unpad_input`` /
``pad_input`` without flash-attn, and transformers' SDPA mask builder turns packed position ids into a block-diagonal
causal mask (``masking_utils.find_packed_sequence_indices``). So this test builds verl's own FSDP2 engine on the CPU
(one gloo rank, sdpa, fp32) and checks that both layouts give acpo_core's naive answer log-likelihoods. Only the
attention kernel differs on a GPU (flash-attn's variable-length kernel instead of SDPA under a block mask)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from acpo_core.attribution import AttributionBatch

REPO = Path(__file__).resolve().parents[2]
PROMPTS = ["What is two plus two?", "Compute six times seven, then halve it.", "Add three and five."]
RESPONSES = [
    "Two plus two is four. So the answer is four.",
    "Six times seven is forty two. Half of that is twenty one. Thus twenty one.",
    "Three and five make eight.",
]
ANSWERS = ["Answer: 4", "Answer: 21", "Answer: 8"]
CUTS = ([0, 6, None], [0, 5, 11, None], [0, None])  # step boundaries; None = the response's end


def attribution_inputs(tokenizer: Any) -> AttributionBatch:
    """Three responses of 2, 3 and 1 steps, left-padded prompts, as the trainer's batch holds them."""
    encode = [[tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts] for texts in (PROMPTS, RESPONSES)]
    answers = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in ANSWERS]
    prompts, responses = encode
    n, width_p, width_t, width_a = len(PROMPTS), *(max(map(len, x)) for x in (prompts, responses, answers))
    fields = {
        name: torch.zeros(n, width, dtype=torch.long)
        for name, width in (("p", width_p), ("pm", width_p), ("t", width_t), ("tm", width_t), ("a", width_a))
    }
    fields["am"] = torch.zeros(n, width_a, dtype=torch.long)
    boundaries = torch.full((n, 4), -1, dtype=torch.long)
    num_steps = torch.zeros(n, dtype=torch.long)
    for i in range(n):
        fields["p"][i, width_p - len(prompts[i]) :] = torch.tensor(prompts[i])
        fields["pm"][i, width_p - len(prompts[i]) :] = 1
        fields["t"][i, : len(responses[i])] = torch.tensor(responses[i])
        fields["tm"][i, : len(responses[i])] = 1
        fields["a"][i, : len(answers[i])] = torch.tensor(answers[i])
        fields["am"][i, : len(answers[i])] = 1
        cuts = [len(responses[i]) if c is None else c for c in CUTS[i]]
        boundaries[i, : len(cuts)] = torch.tensor(cuts)
        num_steps[i] = len(cuts) - 1
    f = fields
    return AttributionBatch(f["p"], f["pm"], f["t"], f["tm"], boundaries, num_steps, f["a"], f["am"])


# Runs in a fresh interpreter: it selects verl's CPU platform and starts a one-rank gloo process group.
_PROBE = """
import json, os, sys
from pathlib import Path
import torch
import torch.distributed as dist
import verl_cpu  # noqa: F401  (the cpu platform and verl's FSDP engines registered for it)
from verl.trainer.config import CheckpointConfig
from verl.utils import tensordict_utils as tu
from verl.workers.config import FSDPEngineConfig, FSDPOptimizerConfig, HFModelConfig
from verl.workers.engine import EngineRegistry
from verl.workers.engine.utils import prepare_micro_batches
from verl.workers.utils.padding import response_from_nested
from transformers import AutoModelForCausalLM

from acpo_core.scoring import score_answer_loglik_naive
from recipe.acpo.acpo_worker import build_naive_log_prob_batch
from recipe.acpo.offline_models import load_qwen25_tokenizer

sys.path.insert(0, os.environ["ACPO_TEST_DIR"])
from test_naive_log_prob_path import attribution_inputs

model_dir, budget = sys.argv[1], int(sys.argv[2])
dist.init_process_group("gloo", rank=0, world_size=1)
fp32 = {"param_dtype": "fp32", "reduce_dtype": "fp32", "buffer_dtype": "fp32"}
model_config = HFModelConfig(path=model_dir, override_config={"attn_implementation": "sdpa"}, use_remove_padding=True)
model_config.model_type = "language_model"
engine_config = FSDPEngineConfig(
    strategy="fsdp2", forward_only=True, use_torch_compile=False, model_dtype="fp32", mixed_precision=fp32,
    use_dynamic_bsz=True, infer_max_token_len_per_gpu=budget, infer_micro_batch_size_per_gpu=1,
)
engine = EngineRegistry.new(
    model_type="language_model", backend="fsdp2", model_config=model_config, engine_config=engine_config,
    optimizer_config=FSDPOptimizerConfig(lr=1e-6), checkpoint_config=CheckpointConfig(),
)
engine.initialize()
inputs = attribution_inputs(load_qwen25_tokenizer())
model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa", dtype=torch.float32).eval()
with torch.no_grad():
    reference = score_answer_loglik_naive(model, inputs, micro_batch_size=4)
result = {"attention": engine.module.config._attn_implementation}
layouts = {
    "remove_padding_dynamic_bsz": dict(use_remove_padding=True, use_dynamic_bsz=True, max_token_len_per_gpu=budget),
    "padded_fixed_micro_batches": dict(use_remove_padding=False, use_dynamic_bsz=False, micro_batch_size_per_gpu=1),
}
for name, settings in layouts.items():
    request, owners = build_naive_log_prob_batch(inputs, temperature=1.0)
    tu.assign_non_tensor(request, use_fused_kernels=False, **settings)
    if settings["use_dynamic_bsz"]:
        _, order = prepare_micro_batches(request.clone(), same_micro_num_in_dp=True)
        result["micro_batches"] = [len(rows) for rows in order]
        result["lengths"] = request["input_ids"].offsets().diff().tolist()
    with engine.eval_mode():
        log_probs = engine.infer_batch(request, loss_function=None)["model_output"]["log_probs"]
    answers = response_from_nested(log_probs, request["response_mask"])
    scores = torch.zeros(inputs.boundaries.shape)
    for (row, step), values in zip(owners.tolist(), answers.unbind()):
        scores[row, step] = values.sum()
    result[name] = float((scores - reference).abs().max())
dist.destroy_process_group()
print("RESULT " + json.dumps(result))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.e2e  # starts verl, a fresh interpreter or a training run: slow on 2 cores
def test_verls_remove_padding_dynamic_bsz_log_probs_equal_the_naive_reference_on_cpu(tiny_model_dir: Path) -> None:
    budget = 96  # tokens per micro-batch: several micro-batches, most holding more than one packed sequence
    env = {k: v for k, v in os.environ.items() if k not in ("VERL_USE_EXTERNAL_MODULES", "VERL_PLATFORM")}
    env.update(
        VERL_USE_EXTERNAL_MODULES="verl_cpu",
        VERL_PLATFORM="cpu",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE="1",
        HF_HUB_OFFLINE="1",
        PYTHONPATH=str(REPO),
        ACPO_TEST_DIR=str(Path(__file__).resolve().parent),
    )
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(tiny_model_dir), str(budget)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result["attention"] == "sdpa"
    # The dynamic-bsz path really packs and splits: several micro-batches, one at least with several sequences.
    assert len(result["micro_batches"]) >= 2 and max(result["micro_batches"]) >= 2, result
    assert sum(result["micro_batches"]) == len(result["lengths"]) and max(result["lengths"]) <= budget
    assert result["remove_padding_dynamic_bsz"] <= 1e-4, result
    assert result["padded_fixed_micro_batches"] <= 1e-4, result
