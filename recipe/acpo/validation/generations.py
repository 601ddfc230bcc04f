"""What a validation pass dumped, read back: the samples verl wrote to ``trainer.validation_data_dir``.

verl writes every validation sample with its score and the reward manager's extra information (among them the tags
of ``recipe.acpo.validation.tagging_reward_manager``) as one JSON object a line, to one file per validation:
``<step>.jsonl``. A validation-only run validates once, so its dump folder holds exactly one file. The evaluation
and the pass-rate pre-pass both read it here (:func:`read_generations`), and name a sample by the file and the
sample's place in it.

The reader is strict: another number of files than one, a line that is not a JSON object, or a file without any
sample is an error that names the folder, or the file and the line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recipe.acpo.validation.command import ValidationRunError

__all__ = ["Generations", "GenerationsError", "read_generations"]


class GenerationsError(ValidationRunError):
    """verl's dump cannot be read or holds a sample the tools cannot use; the message names the file and sample."""


@dataclass(frozen=True)
class Generations:
    """The samples of one generations file, in the file's order."""

    file: Path
    samples: list[dict[str, Any]]


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
