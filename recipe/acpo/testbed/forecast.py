"""How well a testbed policy forecasts its final answer from a prefix of its own response, as attribution asks it to.

For each response (sampled at temperature 1 on held-out problems) and each cut (every line start, and the complete
response after its ``Answer: N`` line), the policy gets the prompt, the response's ids up to the cut and the cue's
ids (``Answer now:`` for a policy built with probes, ``Answer:`` for today's template) and writes a value greedily.
The value is compared with (a) the value the prefix commits to (the remaining operations applied to the last written
value: what a judge of the written steps should forecast) and (b) the ground truth. Rates are by operations remaining
after the cut (``3`` .. ``0``; ``full``: after the ``Answer:`` line). A judge at chance gives step credit at chance;
one that follows (a) credits a slip with the drop it causes.

``python -m recipe.acpo.testbed forecast POLICY_DIR --cue 'Answer now:'`` measures a built policy folder.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recipe.acpo.testbed.policy import (
    REPORT_FILE,
    _encode,
    answer_of,
    held_out_problems,
    sample_responses,
)
from recipe.acpo.testbed.probes import committed_value, cuts, prefix_ids
from recipe.acpo.testbed.task import StepProblem, TaskSpec

TEMPLATE_CUE = "Answer:"  # today's answer template, "Answer: {answer}", without its value
_VALUE = re.compile(r"^\s*(-?\d+)")
_KEYS = ("3", "2", "1", "0", "full")

__all__ = ["TEMPLATE_CUE", "forecast_policy", "forecast_table", "format_forecast", "greedy_values"]


def greedy_values(
    model: Any, tokenizer: Any, sequences: Sequence[Sequence[int]], max_new_tokens: int = 4, batch: int = 64
) -> list[int | None]:
    """The integer each of ``sequences`` (ids) is continued with greedily (None: the continuation is no integer)."""
    import torch

    values: list[int | None] = []
    for first in range(0, len(sequences), batch):
        rows = sequences[first : first + batch]
        width = max(map(len, rows))
        input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, ids in enumerate(rows):  # left-padded, as generation needs
            input_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[i, width - len(ids) :] = 1
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        for text in tokenizer.batch_decode(out[:, width:], skip_special_tokens=True):
            match = _VALUE.match(text)
            values.append(int(match[1]) if match else None)
    return values


def forecast_table(
    model: Any, tokenizer: Any, problems: Sequence[StepProblem], responses: Sequence[str], cue: str
) -> dict[str, dict[str, float | int]]:
    """Per operations remaining (``3`` .. ``0``, ``full``): ``n`` cuts, and the shares whose greedy value after
    ``cue`` is the committed value (``committed``), the ground truth (``truth``), and whose committed value is the
    ground truth (``committed_is_truth``: how far the two rates can differ). Cuts that commit to no value (more
    equations than operations; the end of a response without an ``Answer:`` line) are left out.
    """
    sequences, prompt_lengths = _encode(tokenizer, problems, responses)
    cue_ids = list(tokenizer(cue, add_special_tokens=False)["input_ids"])
    queries: list[list[int]] = []
    facts: list[tuple[str, int, int]] = []
    for problem, response, sequence, prompt_length in zip(problems, responses, sequences, prompt_lengths, strict=True):
        for end in cuts(response):
            at_line_start = end == 0 or response[end - 1] == "\n"
            committed = committed_value(problem, response[:end])
            if committed is None or not (at_line_start or answer_of(response) is not None):
                continue
            try:
                prefix = prefix_ids(tokenizer, response, sequence[prompt_length:], end)
            except ValueError:  # not a token boundary: attribution would not cut there either
                continue
            queries.append(list(sequence[:prompt_length]) + prefix + cue_ids)
            facts.append((str(committed[1]) if at_line_start else "full", committed[0], problem.answer))
    counts = {key: [0, 0, 0, 0] for key in _KEYS}
    for value, (key, committed, truth) in zip(greedy_values(model, tokenizer, queries), facts, strict=True):
        row = counts.setdefault(key, [0, 0, 0, 0])
        row[0] += 1
        row[1] += value == committed
        row[2] += value == truth
        row[3] += committed == truth
    return {
        key: {
            "n": n,
            "committed": round(hits / n, 4) if n else None,
            "truth": round(right / n, 4) if n else None,
            "committed_is_truth": round(same / n, 4) if n else None,
        }
        for key, (n, hits, right, same) in counts.items()
    }


def format_forecast(cue: str, table: dict[str, dict[str, float | int]]) -> str:
    """One log line of a :func:`forecast_table`."""
    parts = [
        f"{'after the Answer line' if key == 'full' else f'{key} left'}: {100 * row['committed']:.0f}% committed / "
        f"{100 * row['truth']:.0f}% truth (n={row['n']}, {100 * row['committed_is_truth']:.0f}% same)"
        for key, row in table.items()
        if row["n"]
    ]
    return f"greedy forecast after {cue!r} by operations left: " + "; ".join(parts)


def forecast_policy(
    folder: str | Path, cues: Sequence[str], eval_problems: int | None = None, seed: int | None = None
) -> dict[str, Any]:
    """:func:`forecast_table` of each cue for a built policy folder, on temperature-1 responses to its held-out
    problems (the task, seed and count of its ``testbed_build.json`` unless given), and how many of those responses
    write each cue. The responses are sampled afresh (seeded), so they are not the build's own."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    report = json.loads((folder / REPORT_FILE).read_text(encoding="utf-8"))
    seed = report["seed"] if seed is None else seed
    task = TaskSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in report["task"].items()})
    problems = held_out_problems(task, eval_problems or report["eval_problems"], seed)
    torch.set_num_threads(report["policy"].get("num_threads", 2))
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    responses = sample_responses(model, tokenizer, [p.prompt for p in problems], temperature=1.0)
    return {
        "policy": str(folder),
        "eval_problems": len(problems),
        "cue_emitted": {cue: sum(cue in response for response in responses) for cue in cues},
        "forecast": {cue: forecast_table(model, tokenizer, problems, responses, cue) for cue in cues},
    }
