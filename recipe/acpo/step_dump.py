"""Per-step dump of segmented responses and their step credit (``acpo.dump``), read by ``recipe.acpo.report``.

Every ``acpo.dump.every_n_steps``-th training step the trainer's driver writes ``step_<global_step:06d>.jsonl`` under
``acpo.dump.dir`` (default ``<trainer.default_local_dir>/acpo_dump``): one JSON object per sampled response,

    {"global_step", "uid", "data_source", "stage", "prompt", "response", "tokens": [token texts],
     "entropy": [float], "boundaries": [c_0 = 0, ..., c_K = T], "marker_boundary": [bool per inner boundary],
     "score", "correct", "ground_truth", "a_base",
     "steps": [{"start", "end", "C", "s", "u", "w", "regime", "a_attr", "a_final", "entropy_mean"}],
     "token_advantages": [float]}

``response`` is the concatenation of ``tokens`` (so character offsets map to tokens exactly); special tokens appear
as their token string (``<|im_end|>``). ``start``/``end`` are token indices of a step, ``end`` exclusive.

Everything comes from data the driver already holds (the :class:`ACPOBatch` and the :class:`ACPOStepResult` of the
step), and token texts from a table built once per tokenizer: no worker call and no per-token decode. Building the
records is pure (:func:`build_step_records`); :class:`StepDumper` adds the schedule, the file and the rule that a
dump never stops training (a failure is logged and counted in ``acpo/dump/write_failures``).
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from acpo_core.config import DumpConfig
from acpo_core.vocab_tables import vocabulary_texts

if TYPE_CHECKING:
    from acpo_core.step import ACPOBatch, ACPOStepResult

__all__ = [
    "DUMP_FILE_PATTERN",
    "StepDumper",
    "build_step_records",
    "dump_directory",
    "dump_file_name",
    "select_dump_rows",
    "token_text_table",
    "write_step_records",
]

logger = logging.getLogger(__name__)

DUMP_FILE_PATTERN = "step_*.jsonl"
DUMP_SUBDIR = "acpo_dump"
_DECIMALS = 4


def dump_file_name(global_step: int) -> str:
    return f"step_{global_step:06d}.jsonl"


def token_text_table(tokenizer: Any) -> list[str]:
    """The display text of every vocabulary id, built once: a special token shows as its token string."""
    texts = vocabulary_texts(tokenizer)
    missing = [i for i, text in enumerate(texts) if text is None]
    pieces = tokenizer.convert_ids_to_tokens(missing) if missing else []
    table = [text if text is not None else "" for text in texts]
    for token_id, piece in zip(missing, pieces):
        table[token_id] = str(piece) if piece is not None else ""
    return table


def select_dump_rows(correct: Sequence[bool], prompt_keys: Sequence[str], max_responses: int) -> list[int]:
    """Indices of the responses to dump, in batch order: deterministic, correct and wrong ones alternating.

    Within each outcome the rows are ordered by a hash of their prompt's key (then by position), so one step's dump
    spreads over prompts instead of taking the first prompt's group; ``max_responses`` 0 keeps every row. The key is
    the prompt's content (:func:`prompt_key`), not verl's uid, which every run draws afresh: two identical runs then
    dump the same responses.
    """
    rows = range(len(correct))
    if max_responses <= 0 or max_responses >= len(correct):
        return list(rows)

    def order(row: int) -> tuple[int, int]:
        return zlib.crc32(prompt_keys[row].encode("utf-8")), row

    right = sorted((r for r in rows if correct[r]), key=order)
    wrong = sorted((r for r in rows if not correct[r]), key=order)
    chosen: list[int] = []
    while len(chosen) < max_responses and (right or wrong):
        for pool in (right, wrong):
            if pool and len(chosen) < max_responses:
                chosen.append(pool.pop(0))
    return sorted(chosen)


def prompt_key(view: ACPOBatch, row: int) -> str:
    """The prompt of batch row ``row`` as text for :func:`select_dump_rows`: its token ids, padding left out."""
    return ",".join(str(t) for t in view.prompt_ids[row][view.prompt_mask[row].bool()].tolist())


def _rounded(values: torch.Tensor) -> list[float]:
    return values.double().mul(10**_DECIMALS).round().div(10**_DECIMALS).tolist()


def build_step_records(
    view: ACPOBatch,
    result: ACPOStepResult,
    token_texts: Sequence[str],
    *,
    global_step: int,
    stage: int,
    data_sources: Sequence[str] | None = None,
    max_responses: int = 0,
) -> list[dict[str, Any]]:
    """The dump records of one step (see the module docstring), for the rows :func:`select_dump_rows` picks.

    Args:
        view: the batch the step saw (B rows, padding rows included).
        result: what :func:`recipe.acpo.acpo_trainer.compute_acpo_step` returned for it (R real rows).
        token_texts: :func:`token_text_table` of the tokenizer.
        data_sources: per batch row (B), or ``None`` ("unknown").
    """
    real_rows = result.real_rows.tolist()
    seg = result.segmentation
    adv = result.advantage
    correct = (view.scores[result.real_rows] > 0).tolist()
    chosen = select_dump_rows(correct, [prompt_key(view, r) for r in real_rows], max_responses)
    vocab = len(token_texts)
    records: list[dict[str, Any]] = []
    for r in chosen:
        row = real_rows[r]
        length = int(view.response_mask[row].sum())
        num_steps = int(seg.num_steps[r])
        boundaries = seg.boundaries[r, : num_steps + 1].tolist()
        tokens = [token_texts[i] if 0 <= i < vocab else "" for i in view.response_ids[row, :length].tolist()]
        prompt_ids = view.prompt_ids[row][view.prompt_mask[row].bool()].tolist()
        columns = {
            "C": _rounded(result.contributions[r, :num_steps]),
            "s": _rounded(adv.signed_importance[r, :num_steps]),
            "u": _rounded(adv.uncertainty[r, :num_steps]),
            "w": _rounded(adv.weights[r, :num_steps]),
            "a_attr": _rounded(adv.attributed_advantages[r, :num_steps]),
            "a_final": _rounded(adv.step_advantages[r, :num_steps]),
            "entropy_mean": _rounded(adv.step_mean_entropy[r, :num_steps]),
        }
        regimes = adv.regime[r, :num_steps].tolist()
        steps = [
            {"start": boundaries[k], "end": boundaries[k + 1], "regime": int(regimes[k])}
            | {name: values[k] for name, values in columns.items()}
            for k in range(num_steps)
        ]
        records.append(
            {
                "global_step": int(global_step),
                "uid": view.uids[row],
                "data_source": str(data_sources[row]) if data_sources is not None else "unknown",
                "stage": int(stage),
                "prompt": "".join(token_texts[i] if 0 <= i < vocab else "" for i in prompt_ids),
                "response": "".join(tokens),
                "tokens": tokens,
                "entropy": _rounded(view.entropy[row, :length]),
                "boundaries": boundaries,
                "marker_boundary": seg.marker_boundary[r, 1:num_steps].tolist(),
                "score": float(view.scores[row]),
                "correct": bool(correct[r]),
                "ground_truth": view.ground_truths[row],
                "a_base": float(view.base_advantages[row]),
                "steps": steps,
                "token_advantages": _rounded(result.token_advantages[row, :length]),
            }
        )
    return records


def write_step_records(records: Sequence[dict[str, Any]], directory: str, global_step: int) -> str:
    """Write one step's records as JSONL (through a temporary file, so a reader never sees half a file)."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, dump_file_name(global_step))
    partial = path + ".tmp"
    with open(partial, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
    os.replace(partial, path)
    return path


class StepDumper:
    """Writes the dump on schedule from the trainer's driver; a failure is logged and counted, never raised."""

    def __init__(self, config: DumpConfig, directory: str, stage: int, tokenizer: Any) -> None:
        self.config = config
        self.directory = directory
        self.stage = stage
        self.tokenizer = tokenizer
        self.failures = 0
        # Built here, once, so the first dumped step does not pay for it (about 0.5 s for a 150k vocabulary).
        self._token_texts: list[str] | None = token_text_table(tokenizer) if config.enable else None

    def due(self, global_step: int) -> bool:
        return self.config.enable and global_step % self.config.every_n_steps == 0

    def dump(
        self,
        global_step: int,
        view: ACPOBatch,
        result: ACPOStepResult,
        data_sources: Sequence[str] | None = None,
    ) -> dict[str, float]:
        """Write the step's file; return the ``acpo/dump/*`` metrics (responses written, failures so far)."""
        written = 0
        try:
            if self._token_texts is None:
                self._token_texts = token_text_table(self.tokenizer)
            records = build_step_records(
                view,
                result,
                self._token_texts,
                global_step=global_step,
                stage=self.stage,
                data_sources=data_sources,
                max_responses=self.config.max_responses,
            )
            write_step_records(records, self.directory, global_step)
            written = len(records)
        except Exception:  # a dump is a diagnostic: it must never end a training run
            self.failures += 1
            logger.exception("acpo.dump: could not write step %s under %s", global_step, self.directory)
        return {"acpo/dump/responses": float(written), "acpo/dump/write_failures": float(self.failures)}


def dump_directory(dump: DumpConfig, default_local_dir: str) -> str:
    """``acpo.dump.dir``, or ``<trainer.default_local_dir>/acpo_dump`` when it is null."""
    return dump.dir if dump.dir is not None else os.path.join(default_local_dir, DUMP_SUBDIR)
