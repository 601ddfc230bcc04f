"""What a validation pass dumped, read back: the samples verl wrote to ``trainer.validation_data_dir``, and when a
sample counts as correct.

verl writes every validation sample with its score and the reward manager's extra information (among them the tags
of ``recipe.acpo.validation.tagging_reward_manager``) as one JSON object a line, to one file per validation:
``<step>.jsonl``. A validation-only run validates once, so its dump folder holds exactly one file. The evaluation
and the pass-rate pre-pass both read it here (:func:`read_generations`), and name a sample by the file and the
sample's place in it.

The reader is strict: another number of files than one, a line that is not a JSON object, or a file without any
sample is an error that names the folder, or the file and the line.

The correctness rule, the same for Acc@k and Pass@k and for the pre-pass's p(q):

- a sample's accuracy (:func:`sample_accuracy`) is its ``acc`` when the scorer reports one (verl's convention; the
  recipe's reward reports ``acc`` = ``score`` in {0, 1}), else its ``score``; it must be a number in [0, 1] (a bool
  counts as 0 or 1), or the sample is an error naming the file and the sample;
- a sample is correct (:func:`is_correct`) when its accuracy is above 0, as training counts a group's accuracy from
  ``score > 0`` (``recipe.acpo.curriculum``): Pass@k is the share of problems with a correct sample, p(q) the share
  of a prompt's samples that are correct, Acc@k the mean accuracy.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recipe.acpo.validation.command import ValidationRunError

__all__ = ["Generations", "GenerationsError", "is_correct", "read_generations", "sample_accuracy", "sample_location"]


class GenerationsError(ValidationRunError):
    """verl's dump cannot be read or holds a sample the tools cannot use; the message names the file and sample."""


@dataclass(frozen=True)
class Generations:
    """The samples of one generations file, in the file's order."""

    file: Path
    samples: list[dict[str, Any]]


def sample_location(where: str, index: int) -> str:
    """How an error names sample ``index`` (0-based, in the file's order) of the dump ``where`` (its file)."""
    return f"{where}, sample {index}"


def read_generations(dump_dir: Path) -> Generations:
    """The samples verl dumped to ``dump_dir`` (``trainer.validation_data_dir`` of a validation-only run).

    Raises:
        GenerationsError: ``dump_dir`` holds no or several ``*.jsonl`` files, a line is not a JSON object (naming
            the file and the line), or the file holds no sample.
    """
    files = sorted(dump_dir.glob("*.jsonl"))
    if len(files) != 1:
        raise GenerationsError(
            f"expected exactly one generations file in {dump_dir} from a validation-only run, found "
            f"{[f.name for f in files]}"
        )
    samples = []
    with files[0].open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                sample = json.loads(line)
            except json.JSONDecodeError as err:
                raise GenerationsError(f"{files[0]}:{line_number}: not JSON: {err}") from err
            if not isinstance(sample, dict):
                raise GenerationsError(f"{files[0]}:{line_number}: not a JSON object: {line.strip()[:80]}")
            samples.append(sample)
    if not samples:
        raise GenerationsError(f"{files[0]} holds no samples")
    return Generations(file=files[0], samples=samples)


def sample_accuracy(sample: dict[str, Any], where: str) -> float:
    """A dumped sample's accuracy: its ``acc`` when the scorer reported one, else its score, in [0, 1].

    Raises:
        GenerationsError: the value is not a number in [0, 1] (the message starts with ``where``).
    """
    value = sample.get("acc")
    if value is None:
        value = sample.get("score")
    if isinstance(value, bool):
        value = float(value)
    if not isinstance(value, int | float) or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise GenerationsError(
            f"{where}: accuracy {value!r} is not a number in [0, 1]; the scorer must report 'acc' or a 0/1 score"
        )
    return float(value)


def is_correct(accuracy: float) -> bool:
    """Whether a sample of this accuracy (:func:`sample_accuracy`) counts as correct: above 0."""
    return accuracy > 0
