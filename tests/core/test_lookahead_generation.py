"""acpo_core.lookahead.greedy_generate: the model's greedy tokens, rows leaving the batch at their end token, every
rank running the same forward passes in lockstep, and one rank's failure stopping every rank.

A tiny random Llama (built from its config, no files) stands in for the policy. Its end token is chosen from its own
greedy output, so that the rows of one micro-batch end at different lengths. The lockstep cases spawn two gloo ranks
whose forward passes each hold an all-reduce (standing in for FSDP's parameter gather): a rank that ran fewer passes,
or left after a failure, would leave the other blocked until the gloo timeout (120 s; 60 s in the failure cases),
which the tests report as a failure.
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import DynamicCache

from acpo_core import lookahead
from acpo_core.fail_fast import RankFailure
from acpo_core.lookahead import greedy_generate

PAD, MAX_NEW = 0, 12
CONTEXTS = [[5, 9, 3], [7], [11, 4, 8, 2, 6], [3, 3], [20, 1, 14, 9]]


def tiny_llama() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config).eval()


def contexts() -> list[torch.Tensor]:
    return [torch.tensor(c, dtype=torch.long) for c in CONTEXTS]


def end_token(model: Any) -> int:
    """A token the model writes early in some continuations but not in all: rows then end at different lengths."""
    never = greedy_generate(model, contexts(), PAD, {31}, MAX_NEW)
    firsts = {int(t) for t in never[:, 1:4].flatten()} - {PAD}
    for token in sorted(firsts):
        ends = [(row == token).nonzero()[:1].tolist() for row in never]
        if 1 < sum(bool(e) for e in ends) < len(ends):
            return token
    raise AssertionError(f"no token ends some rows early: {never.tolist()}")


def count_passes(model: Any, collective: bool = False) -> list[tuple[int, int, bool]]:
    """(rows, tokens per row, whether it used the cache) of every forward pass the model runs from now on; each joins
    an all-reduce if ``collective``."""
    passes: list[tuple[int, int, bool]] = []

    def hook(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        passes.append((*kwargs["input_ids"].shape, bool(kwargs.get("use_cache"))))
        if collective:
            dist.all_reduce(torch.ones(1))

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return passes


def expected_rows_per_pass(out: torch.Tensor, end: int) -> list[int]:
    """The rows one micro-batch holding every row of ``out`` decodes in each pass: a row takes part up to and
    including the pass that wrote its end token."""
    last = [row.index(end) if end in row else MAX_NEW - 1 for row in out.tolist()]
    return [sum(n >= k for n in last) for k in range(max(last) + 1)]


def test_greedy_generate_is_hf_greedy_per_context_and_drops_finished_rows() -> None:
    model = tiny_llama()
    end = end_token(model)
    counted = count_passes(model)
    out = greedy_generate(model, contexts(), PAD, {end}, MAX_NEW, micro_batch_size=len(CONTEXTS))
    passes = list(counted)
    assert out.shape == (len(CONTEXTS), MAX_NEW) and out.dtype == torch.long
    for row, context in zip(out.tolist(), contexts()):
        alone = model.generate(
            input_ids=context[None], do_sample=False, max_new_tokens=MAX_NEW, eos_token_id=end, pad_token_id=PAD
        )[0, context.numel() :].tolist()
        assert row[: len(alone)] == alone and set(row[len(alone) :]) <= {PAD}
    # One prefill of every row, then one token a pass for the rows that have not written their end token.
    rows = expected_rows_per_pass(out, end)
    assert rows[-1] < len(CONTEXTS)  # some row ended before the last pass (end_token chose so)
    assert [r for r, _, _ in passes] == rows
    assert passes[0][1] == max(len(c) for c in CONTEXTS) and all(width == 1 for _, width, _ in passes[1:])
    # Micro-batches of 3 and 2 rows continue every context the same way.
    assert torch.equal(greedy_generate(model, contexts(), PAD, {end}, MAX_NEW, micro_batch_size=3), out)


def _lockstep_worker(rank: int, init_file: str, out: str) -> None:
    model = tiny_llama()  # transformers imported before the group's clock starts
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=120)
    )
    try:
        end = end_token(model)
        # Rank 0: three micro-batches of 2, 2 and 1 rows; rank 1: one of 1 row, then two empty ones (the agreed 3).
        mine = contexts() if rank == 0 else contexts()[2:3]
        alone = greedy_generate(model, mine, PAD, {end}, MAX_NEW, micro_batch_size=2)
        passes = count_passes(model, collective=True)
        together = greedy_generate(
            model, mine, PAD, {end}, MAX_NEW, micro_batch_size=2, min_micro_batches=3, lockstep=True
        )
        dummies = sum(not used_cache for _, _, used_cache in passes)
        result = {"passes": len(passes), "dummies": dummies, "equal": torch.equal(alone, together)}
    except Exception as err:  # a rank left waiting turns into a gloo timeout here
        result = {"error": f"{type(err).__name__}: {err}"}
    _report_and_exit(rank, out, result)


def _report_and_exit(rank: int, out: str, result: dict[str, Any]) -> None:
    """Write this rank's result for the test, wait for the other rank, and leave."""
    Path(out, f"rank{rank}.json").write_text(json.dumps(result), encoding="utf-8")
    dist.barrier()
    dist.destroy_process_group()
    # Without the interpreter's teardown: gloo's threads may abort it at exit (tests/core/test_fail_fast.py).
    os._exit(0)


def _run_two_ranks(
    worker_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: Any
) -> list[dict[str, Any]]:
    """Each rank's result of this file's ``worker_name(rank, rendezvous file, folder, *args)`` on two gloo ranks."""
    # Spawned children unpickle the worker by module name: import this file as a top-level module they can find.
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    worker = getattr(importlib.import_module(Path(__file__).stem), worker_name)
    mp.spawn(worker, args=(str(tmp_path / "rendezvous"), str(tmp_path), *args), nprocs=2, join=True)
    return [json.loads(Path(tmp_path, f"rank{rank}.json").read_text(encoding="utf-8")) for rank in range(2)]


def test_greedy_generate_in_lockstep_runs_the_same_passes_on_every_rank(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = _run_two_ranks("_lockstep_worker", tmp_path, monkeypatch)
    assert all("error" not in r for r in results), results
    assert results[0]["passes"] == results[1]["passes"]
    assert all(r["equal"] for r in results)
    # Rank 1 ran one-token passes without the cache while rank 0 went on with its second and third micro-batches.
    assert results[1]["dummies"] > 0


class _CacheThatCannotDropRows(DynamicCache):
    """A working KV cache without ``batch_select_indices``, as a state-space or linear-attention layer's would be."""

    @property
    def batch_select_indices(self) -> Any:
        raise AttributeError("batch_select_indices")


def test_a_cache_that_cannot_drop_rows_is_refused_by_name_on_one_process() -> None:
    model = tiny_llama()
    end = end_token(model)

    def swap_cache(module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> Any:
        output.past_key_values.__class__ = _CacheThatCannotDropRows
        return output

    model.register_forward_hook(swap_cache, with_kwargs=True)
    # The first row to write its end token is refused, whichever pass that is.
    with pytest.raises(TypeError, match="_CacheThatCannotDropRows cannot"):
        greedy_generate(model, contexts(), PAD, {end}, MAX_NEW, micro_batch_size=len(CONTEXTS))


def _failing_worker(rank: int, init_file: str, out: str, failure: str) -> None:
    model = tiny_llama()
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60)
    )
    end = end_token(model)
    count_passes(model, collective=True)
    calls = []

    def fail_on_third_pass(module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> Any:
        # After the pass's collective, as an error reading the logits would be; on rank 1's third pass it is decoding
        # its one row or, that row ended, running a one-token pass beside rank 0.
        calls.append(1)
        if rank == 1 and failure == "third pass" and len(calls) == 3:
            raise RuntimeError("boom on the third pass")
        return output

    def fail_to_pad(*args: Any) -> Any:
        raise RuntimeError("boom building the micro-batch")

    model.register_forward_hook(fail_on_third_pass, with_kwargs=True)
    if rank == 1 and failure == "micro-batch":
        lookahead.left_padded = fail_to_pad
    started = time.monotonic()
    # Rank 0: three micro-batches of 2, 2 and 1 rows; rank 1: one of 1 row, then two empty ones (the agreed 3).
    mine = contexts() if rank == 0 else contexts()[2:3]
    try:
        greedy_generate(model, mine, PAD, {end}, MAX_NEW, micro_batch_size=2, min_micro_batches=3, lockstep=True)
        result = {"raised": None}
    except Exception as err:
        result = {"raised": type(err).__name__, "message": str(err)}
    result["seconds"] = time.monotonic() - started
    _report_and_exit(rank, out, result)


@pytest.mark.parametrize(
    ("failure", "message"),
    [("third pass", "boom on the third pass"), ("micro-batch", "boom building the micro-batch")],
)
def test_one_ranks_failure_in_lockstep_stops_every_rank_with_its_error(
    failure: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = _run_two_ranks("_failing_worker", tmp_path, monkeypatch, failure)
    for result in results:
        assert result["raised"] == RankFailure.__name__, results
        assert "rank(s) [1]" in result["message"] and message in result["message"]
        # At the next agreement, not at the 60 s collective timeout of a rank left waiting.
        assert result["seconds"] < 30, results
