"""Credit quality, offline: does ACPO's step credit blame the step where a wrong response first goes wrong?

No training. Responses with labelled first wrong steps go through ``acpo_core.step.compute_acpo_step`` (the code a
training step runs) once per credit variant (docs/algorithm.md §3.2, §4.1), and the credit is compared with the labels:

- ``testbed``: a testbed policy folder samples ``--samples`` responses at temperature 1 to each of ``--problems``
  held-out problems; the step checker labels each wrong response's first wrong equation; §2 segments; A_base is GRPO's
  over each problem's group; the ``acpo:`` block is the testbed config's (``--config``).
- ``traces``: a JSONL file of labelled traces (``data_prep.labelled_traces``: question, steps, target,
  mistake_index) scored by a Hugging Face causal LM (a folder, or ``smollm2`` for the offline SmolLM2-135M-Instruct);
  the steps are the given ones, A_base is -1 for a trace with a mistake and +1 without, Y' (contrast) is the last
  number of the last step.
- ``dump``: a finished run's step dump (``acpo.dump``): the credit that run computed, no rescoring.

Printed per variant, over wrong responses with a labelled slip step and at least two steps: the hit rate of the most
blamed step (most negative A_attr) and of the lowest-C step, chance (mean 1/K), the best fixed position rule (the most
common slip position for each K, fitted on the same responses: a ceiling for any rule that looks only at position),
the share of other steps whose C is above the slip step's (0.5: no signal; 1: the slip is always lowest), the mean
A_attr on the slip step and on the steps before it, and the mean A_final / A_base per token in right and wrong
responses (1.0 is GRPO). By slip position too. A JSON with every figure is written beside (``--out``).

    python benchmarks/bench_credit.py testbed --policy outputs/testbed_policy
    python benchmarks/bench_credit.py traces benchmarks/data/labelled_arithmetic_traces.jsonl --model smollm2
    python benchmarks/bench_credit.py dump outputs/acpo_cpu_demo/stage1/acpo_dump
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from acpo_core.attribution import AttributionBatch, render_answer_batch  # noqa: E402
from acpo_core.config import ACPOConfig  # noqa: E402
from acpo_core.lookahead import RememberedContinuations, greedy_continuations, lookahead_sequences, stop_text_of  # noqa: E402
from acpo_core.scoring import score_answer_loglik, score_answer_loglik_naive  # noqa: E402
from acpo_core.segmentation import VocabTables, segmentation_from_boundaries  # noqa: E402
from acpo_core.step import ACPOBatch, ACPOStepResult, compute_acpo_step  # noqa: E402
from recipe.acpo.testbed.slips import most_blamed_step  # noqa: E402
from recipe.acpo.testbed.task import TaskSpec, add_task_arguments, task_spec  # noqa: E402

TESTBED_CONFIG = ROOT / "recipe/acpo/config/testbed/arithmetic_steps.yaml"
# The spec's reading of §3-4: every credit switch at the value the spec reads (acpo_core.config's attr_total default
# is "redistributed" since this benchmark measured it, §4.1).
SPEC_READING: dict[str, dict[str, str]] = {
    "attribution": {"judge": "policy", "target": "ground_truth", "score_tokens": "all", "final_eos": "keep"},
    "advantage": {"attr_total": "added"},
}
# Each variant: what it changes from the spec's reading. The next four after "spec" change one thing;
# "value_redistributed" the two the look-ahead judge measured best with (§3.3); "combined" all four; the oracle takes
# C from the labels (testbed and traces only), the ceiling of any judge.
VARIANTS: dict[str, dict[str, dict[str, str]]] = {
    "spec": {},
    "final_eos": {"attribution": {"final_eos": "drop"}},
    "value_only": {"attribution": {"score_tokens": "value"}},
    "contrast": {"attribution": {"target": "contrast"}},
    "redistributed": {"advantage": {"attr_total": "redistributed"}},
    "value_redistributed": {"attribution": {"score_tokens": "value"}, "advantage": {"attr_total": "redistributed"}},
    "combined": {
        "attribution": {"final_eos": "drop", "score_tokens": "value", "target": "contrast"},
        "advantage": {"attr_total": "redistributed"},
    },
    "oracle": {"attribution": {"judge": "oracle"}},
    "oracle_redistributed": {"attribution": {"judge": "oracle"}, "advantage": {"attr_total": "redistributed"}},
}
ORACLE_VARIANTS = ("oracle", "oracle_redistributed")


# ------------------------------------------------------------------------------------------------ the measure


@dataclass(frozen=True)
class ResponseCredit:
    """What the benchmark reads off one response's credit."""

    correct: bool
    contributions: list[float]  # C_i
    attributed: list[float]  # A_attr,i
    slip_step: int | None  # the step holding the first wrong token (wrong responses with a label)
    ratio_sum: float  # sum over tokens of A_t / A_base (A_base != 0)
    ratio_tokens: int


def responses_of(result: ACPOStepResult, batch: ACPOBatch, first_wrong: torch.Tensor) -> list[ResponseCredit]:
    """Per real row of ``batch``: its credit in ``result`` and its slip step (``first_wrong`` [B], -1: none)."""
    out = []
    adv = result.advantage
    for r, row in enumerate(result.real_rows.tolist()):
        k = int(result.segmentation.num_steps[r])
        correct = bool(batch.scores[row] > 0)
        token = int(first_wrong[row])
        slip = None if correct or token < 0 else int(result.segmentation.step_index[r, token])
        base = float(batch.base_advantages[row])
        valid = batch.response_mask[row] != 0
        ratio_sum, ratio_tokens = 0.0, 0
        if base != 0:
            ratio_sum = float((result.token_advantages[row][valid] / base).sum())
            ratio_tokens = int(valid.sum())
        out.append(
            ResponseCredit(
                correct=correct,
                contributions=result.contributions[r, :k].tolist(),
                attributed=adv.attributed_advantages[r, :k].tolist(),
                slip_step=slip,
                ratio_sum=ratio_sum,
                ratio_tokens=ratio_tokens,
            )
        )
    return out


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _hit_rates(rows: Sequence[ResponseCredit]) -> dict[str, Any]:
    """The figures of one set of labelled wrong responses (K >= 2)."""
    most_blamed, lowest_c, chance, above, slip_attr, before_attr = [], [], [], [], [], []
    for row in rows:
        k, slip = len(row.contributions), row.slip_step
        assert slip is not None
        most_blamed.append(float(most_blamed_step(row.attributed) == slip))
        lowest_c.append(float(min(range(k), key=row.contributions.__getitem__) == slip))
        chance.append(1.0 / k)
        c_slip = row.contributions[slip]
        others = [c for i, c in enumerate(row.contributions) if i != slip]
        above.append(sum(1.0 if c > c_slip else 0.5 if c == c_slip else 0.0 for c in others) / len(others))
        slip_attr.append(row.attributed[slip])
        before_attr.extend(row.attributed[:slip])
    by_k: dict[int, Counter[int]] = defaultdict(Counter)
    for row in rows:
        by_k[len(row.contributions)][row.slip_step] += 1  # type: ignore[index]
    position_rule = sum(max(counts.values()) for counts in by_k.values()) / max(len(rows), 1)
    return {
        "responses": len(rows),
        "most_blamed_hit": _mean(most_blamed),
        "lowest_c_hit": _mean(lowest_c),
        "chance": _mean(chance),
        "position_rule": position_rule if rows else None,
        "others_above_slip": _mean(above),
        "a_attr_slip": _mean(slip_attr),
        "a_attr_before_slip": _mean(before_attr),
    }


def credit_figures(responses: Sequence[ResponseCredit]) -> dict[str, Any]:
    """Every figure of one variant: in total, by slip position, and the per-token A_final / A_base."""
    labelled = [r for r in responses if r.slip_step is not None and len(r.contributions) >= 2]
    figures = _hit_rates(labelled)
    figures["by_slip_step"] = {
        str(step): _hit_rates([r for r in labelled if r.slip_step == step])
        for step in sorted({r.slip_step for r in labelled})  # type: ignore[type-var]
    }
    for name, correct in (("right", True), ("wrong", False)):
        rows = [r for r in responses if r.correct is correct and r.ratio_tokens]
        tokens = sum(r.ratio_tokens for r in rows)
        figures[f"a_final_over_a_base_{name}"] = sum(r.ratio_sum for r in rows) / tokens if tokens else None
    figures["wrong_responses"] = sum(not r.correct for r in responses)
    figures["wrong_unlabelled_or_one_step"] = figures["wrong_responses"] - len(labelled)
    return figures


def _cell(value: Any, percent: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}" if percent else f"{value:+.2f}"


def format_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """The printed table: one row per variant."""
    width = max([22, *(len(name) + 2 for name in results)])
    header = (
        f"{'variant':<{width}}{'n':>5}{'blamed%':>9}{'lowC%':>8}{'chance%':>9}{'posrule%':>10}{'C>slip':>8}"
        f"{'Aattr slip':>12}{'before':>8}{'A/Abase R':>11}{'W':>7}"
    )
    lines = [header, "-" * len(header)]
    for name, f in results.items():
        lines.append(
            f"{name:<{width}}{f['responses']:>5}"
            f"{_cell(f['most_blamed_hit'], True):>9}{_cell(f['lowest_c_hit'], True):>8}"
            f"{_cell(f['chance'], True):>9}{_cell(f['position_rule'], True):>10}"
            f"{_cell(f['others_above_slip'], True):>8}{_cell(f['a_attr_slip']):>12}{_cell(f['a_attr_before_slip']):>8}"
            f"{_cell(f['a_final_over_a_base_right']):>11}{_cell(f['a_final_over_a_base_wrong']):>7}"
        )
    lines.append(
        "n: wrong responses with a labelled slip and >= 2 steps; blamed%: most negative A_attr on the slip step; "
        "lowC%: lowest C on it; posrule%: best fixed position per K (fitted on the same responses); C>slip: share of "
        "other steps with a higher C (50 = no signal); A/Abase: mean A_final / A_base per token, right and wrong "
        "responses (GRPO: +1.00)."
    )
    return "\n".join(lines)


def format_by_slip_step(results: Mapping[str, Mapping[str, Any]]) -> str:
    lines = []
    width = max([22, *(len(name) + 2 for name in results)])
    for name, f in results.items():
        parts = [
            f"slip at step {step}: n {g['responses']}, blamed {_cell(g['most_blamed_hit'], True)}%, "
            f"lowC {_cell(g['lowest_c_hit'], True)}%, A_attr {_cell(g['a_attr_slip'])}"
            for step, g in f["by_slip_step"].items()
        ]
        lines.append(f"{name:<{width}}" + "; ".join(parts))
    return "\n".join(lines)


def variant_config(base: ACPOConfig, name: str) -> ACPOConfig:
    """``base`` (its segmentation, template and numbers) with the spec's credit switches and the variant's own."""
    data = base.to_dict()
    for overrides in (SPEC_READING, VARIANTS[name]):
        for section, values in overrides.items():
            data[section] = {**data[section], **values}
    return ACPOConfig.from_dict(data)


def run_variants(
    batches: Mapping[str, ACPOBatch],
    tables: VocabTables,
    base: ACPOConfig,
    score_fn: Callable[..., torch.Tensor],
    first_wrong: torch.Tensor,
    variants: Sequence[str],
    steps: Any = None,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Each variant through ``compute_acpo_step`` on the same responses; its figures.

    ``batches``: the responses with Y and Y' rendered for each ``acpo.attribution.score_tokens`` (``all``, ``value``),
    as the trainer's ``read_acpo_batch`` renders them for the configured one.
    """
    results: dict[str, dict[str, Any]] = {}
    for name in variants:
        started = time.monotonic()
        cfg = variant_config(base, name)
        batch = batches[cfg.attribution.score_tokens]
        view = dataclasses.replace(batch, first_wrong_token=first_wrong) if name in ORACLE_VARIANTS else batch
        result = compute_acpo_step(view, tables, cfg, score_fn, steps=steps)
        results[name] = credit_figures(responses_of(result, batch, first_wrong))
        log(f"  {name}: {time.monotonic() - started:.1f}s")
    return results


# ------------------------------------------------------------------------------------------------ the batches


def _padded(rows: Sequence[Sequence[int]], pad: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    width = max((len(r) for r in rows), default=1) or 1
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for n, row in enumerate(rows):
        if not row:
            continue
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[n, span] = torch.tensor(list(row), dtype=torch.long)
        mask[n, span] = 1
    return ids, mask


@torch.no_grad()
def response_entropy(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    chunk: int = 64,
) -> torch.Tensor:
    """[B, T] entropy at temperature 1 of the policy's next-token distribution at every response token."""
    out = torch.zeros(response_ids.shape, dtype=torch.float32)
    width = prompt_ids.shape[1]
    for first in range(0, len(prompt_ids), chunk):
        rows = slice(first, first + chunk)
        ids = torch.cat([prompt_ids[rows], response_ids[rows]], dim=1)
        mask = torch.cat([prompt_mask[rows], response_mask[rows]], dim=1)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, width - 1 : -1].float()
        logp = torch.log_softmax(logits, dim=-1)
        out[rows] = -(logp.exp() * logp).sum(dim=-1) * response_mask[rows]
    return out


class MemoScorer:
    """§3's packed scoring on a local model, remembering L per distinct input: variants that score the same
    responses and answers (the spec and redistribution, say) share one forward pass."""

    def __init__(self, model: Any, micro_batch_size: int = 64) -> None:
        self.score = partial(score_answer_loglik, model, micro_batch_size=micro_batch_size, attention="sdpa")
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, batch: AttributionBatch) -> torch.Tensor:
        digest = hashlib.sha256()
        for tensor in batch.as_dict().values():
            digest.update(tensor.contiguous().numpy().tobytes())
        key = digest.hexdigest()
        if key not in self.cache:
            self.cache[key] = self.score(batch, temperature=1.0)
        return self.cache[key]


class LookaheadScorer(MemoScorer):
    """§3.3's look-ahead judge (:mod:`acpo_core.lookahead`): L_i scored after the policy's greedy continuation of each
    prefix, cut where it starts writing the template's fixed text; continuations are remembered per context, so
    variants that differ only in Y share them."""

    def __init__(self, model: Any, tokenizer: Any, template: str, max_new_tokens: int = 64) -> None:
        super().__init__(model)
        from recipe.acpo.step_dump import token_text_table

        continue_fn = partial(
            greedy_continuations,
            model,
            pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            end_ids={tokenizer.eos_token_id},
            token_texts=token_text_table(tokenizer),
            stop_text=stop_text_of(template),
            max_new_tokens=max_new_tokens,
        )
        sequences = partial(lookahead_sequences, continue_fn=RememberedContinuations(continue_fn))
        self.score = partial(score_answer_loglik_naive, model, micro_batch_size=64, sequences=sequences)


def testbed_batch(
    policy_dir: Path,
    num_problems: int,
    samples: int,
    seed: int,
    cfg: ACPOConfig,
    log: Callable[[str], None] = print,
    task: TaskSpec | None = None,
) -> tuple[dict[str, ACPOBatch], VocabTables, Any, torch.Tensor, dict[str, Any]]:
    """Sampled testbed responses (:func:`answer_renderings`) to held-out problems of ``task`` (the one the policy
    was built for; default: the demo's), their tables, the policy and the first wrong tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    from recipe.acpo.step_dump import token_text_table
    from recipe.acpo.testbed.policy import answer_of
    from recipe.acpo.testbed.slips import first_wrong_tokens
    from recipe.acpo.testbed.task import generate

    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
    problems = generate(num_problems, task or TaskSpec(), seed=seed + 2_000_003, pool="rl")
    torch.manual_seed(seed)
    chat = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p.prompt}], add_generation_prompt=True, tokenize=False
        )
        for p in problems
    ]
    prompts = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in chat]
    pad = tokenizer.pad_token_id
    prompt_rows = [ids for ids in prompts for _ in range(samples)]
    prompt_ids, prompt_mask = _padded(prompt_rows, pad, left=True)
    started = time.monotonic()
    responses: list[list[int]] = []
    with torch.no_grad():
        for first in range(0, len(prompt_rows), 256):
            rows = slice(first, first + 256)
            out = model.generate(
                input_ids=prompt_ids[rows],
                attention_mask=prompt_mask[rows],
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=80,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
            )
            for row in out[:, prompt_ids.shape[1] :].tolist():
                cut = row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
                responses.append(row[:cut])
    log(f"sampled {len(responses)} responses in {time.monotonic() - started:.0f}s")
    response_ids, response_mask = _padded(responses, pad)
    texts = tokenizer.batch_decode(response_ids * response_mask + pad * (1 - response_mask), skip_special_tokens=True)
    answers = [p.answer for p in problems for _ in range(samples)]
    scores = torch.tensor([float(answer_of(t) == a) for t, a in zip(texts, answers)])
    uids = [str(n // samples) for n in range(len(responses))]
    truths = [str(a) for a in answers]
    own_texts = [None if s > 0 or answer_of(t) is None else str(answer_of(t)) for t, s in zip(texts, scores.tolist())]
    batch = ACPOBatch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        entropy=response_entropy(model, prompt_ids, prompt_mask, response_ids, response_mask),
        base_advantages=compute_grpo_outcome_advantage(scores[:, None], torch.ones(len(scores), 1), uids)[0][:, 0],
        scores=scores,
        is_padding=torch.zeros(len(responses), dtype=torch.bool),
        uids=uids,
        answer_ids=torch.zeros(1),
        answer_mask=torch.zeros(1),
        ground_truths=truths,  # type: ignore[arg-type]
    )
    batches = answer_renderings(batch, tokenizer, truths, own_texts, cfg.attribution.answer_template)
    first_wrong = first_wrong_tokens(
        response_ids, response_mask, token_text_table(tokenizer), ["arithmetic_steps"] * len(responses)
    )
    tables = VocabTables.from_tokenizer(tokenizer, cfg.segmentation.markers)
    info = {"responses": len(responses), "accuracy": float(scores.mean()), "labelled": int((first_wrong >= 0).sum())}
    return batches, tables, model, first_wrong, info


def answer_renderings(
    batch: ACPOBatch, tokenizer: Any, truths: Sequence[str], own: Sequence[str | None], template: str
) -> dict[str, ACPOBatch]:
    """``batch`` with Y (``truths``) and Y' (``own``) rendered by ``template``, for each ``score_tokens`` choice."""
    out = {}
    for score_tokens in ("all", "value"):
        truth = render_answer_batch(tokenizer, truths, batch.uids, template, score_tokens)
        own_answers = render_answer_batch(tokenizer, own, batch.uids, template, score_tokens)
        out[score_tokens] = dataclasses.replace(
            batch, answer_ids=truth.ids, answer_mask=truth.mask, answer_scored=truth.scored, own_answers=own_answers
        )
    return out


_LAST_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def traces_batch(
    path: Path, model_name: str, template: str, chat_template: bool
) -> tuple[dict[str, ACPOBatch], VocabTables, Any, torch.Tensor, Any, dict[str, Any]]:
    """Labelled traces (:func:`answer_renderings`) with their given steps; the model; the first wrong tokens."""
    from data_prep.labelled_traces import read_labelled_traces, trace_token_inputs

    model, tokenizer = load_causal_lm(model_name)
    traces = read_labelled_traces(path)
    tokens = [trace_token_inputs(t, tokenizer, chat_template) for t in traces]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    prompt_ids, prompt_mask = _padded([t.prompt_ids for t in tokens], pad, left=True)
    response_ids, response_mask = _padded([t.response_ids for t in tokens], pad)
    width = max(len(t.step_starts) for t in tokens) + 1
    boundaries = torch.full((len(traces), width), -1, dtype=torch.long)
    for n, t in enumerate(tokens):
        cuts = [*t.step_starts, len(t.response_ids)]
        boundaries[n, : len(cuts)] = torch.tensor(cuts)
    steps = segmentation_from_boundaries(boundaries, response_mask)
    wrong = torch.tensor([t.mistake_index is not None for t in traces])
    first_wrong = torch.tensor(
        [-1 if t.mistake_index is None else tok.step_starts[t.mistake_index] for t, tok in zip(traces, tokens)]
    )
    own = []
    for t in traces:
        numbers = _LAST_NUMBER.findall(t.steps[-1])
        own.append(numbers[-1] if t.mistake_index is not None and numbers else None)
    uids = [f"line{t.line}" for t in traces]
    batch = ACPOBatch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        entropy=response_entropy(model, prompt_ids, prompt_mask, response_ids, response_mask, chunk=16),
        base_advantages=torch.where(wrong, -1.0, 1.0),
        scores=(~wrong).float(),
        is_padding=torch.zeros(len(traces), dtype=torch.bool),
        uids=uids,
        answer_ids=torch.zeros(1),
        answer_mask=torch.zeros(1),
        ground_truths=[t.target for t in traces],  # type: ignore[arg-type]
    )
    batches = answer_renderings(batch, tokenizer, [t.target for t in traces], own, template)
    tables = VocabTables.from_tokenizer(tokenizer)
    info = {"traces": len(traces), "with_mistake": int(wrong.sum()), "model": model_name, "template": template}
    return batches, tables, model, first_wrong, steps, info


def load_causal_lm(name: str) -> tuple[Any, Any]:
    """A Hugging Face causal LM and tokenizer: ``smollm2`` (offline SmolLM2-135M-Instruct) or a folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == "smollm2":
        import tempfile

        from recipe.acpo.offline_models import build_smollm2

        folder = Path(tempfile.gettempdir()) / "acpo_bench_credit_smollm2"
        name = str(folder if (folder / "config.json").is_file() else build_smollm2(folder))
    tokenizer = AutoTokenizer.from_pretrained(name)
    model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32, attn_implementation="sdpa").eval()
    return model, tokenizer


# ------------------------------------------------------------------------------------------------ the dump


def dump_responses(directory: Path) -> list[ResponseCredit]:
    """The credit a finished run wrote to its step dump, with the step checker's slip steps (testbed records)."""
    from recipe.acpo.testbed.slips import TESTBED_DATA_SOURCES, first_wrong_mark

    files = sorted(directory.glob("step_*.jsonl"))
    if not files:
        raise FileNotFoundError(f"{directory}: no step_*.jsonl dump files (acpo.dump.enable=True writes them)")
    out = []
    for file in files:
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                steps = record["steps"]
                correct = bool(record["correct"])
                base = float(record["a_base"])
                token_advantages = record["token_advantages"]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                raise ValueError(f"{file}: line {number}: not a step-dump record ({err})") from err
            mark = None
            if not correct and record.get("data_source") in TESTBED_DATA_SOURCES:
                mark = first_wrong_mark(record)
            ratio = sum(a / base for a in token_advantages) if base else 0.0
            out.append(
                ResponseCredit(
                    correct=correct,
                    contributions=[float(s["C"]) for s in steps],
                    attributed=[float(s["a_attr"]) for s in steps],
                    slip_step=None if mark is None else int(mark["step"]),
                    ratio_sum=ratio,
                    ratio_tokens=len(token_advantages) if base else 0,
                )
            )
    return out


# ------------------------------------------------------------------------------------------------ command line


def _variants(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="source", required=True)
    testbed = sub.add_parser("testbed", help="sample a testbed policy and label its responses with the step checker")
    testbed.add_argument("--policy", type=Path, required=True, help="a testbed policy folder (testbed build)")
    testbed.add_argument("--problems", type=int, default=128, help="held-out problems (%(default)s)")
    testbed.add_argument("--samples", type=int, default=8, help="responses per problem, one GRPO group (%(default)s)")
    testbed.add_argument("--seed", type=int, default=0, help="problems and sampling seed (%(default)s)")
    testbed.add_argument("--config", type=Path, default=TESTBED_CONFIG, help="YAML whose acpo: block is used")
    testbed.add_argument("--answer-template", default=None, help="Y's template (default: the config's)")
    add_task_arguments(testbed.add_argument_group("task", "the task the policy was built for (testbed build)"))
    traces = sub.add_parser("traces", help="score a JSONL of labelled traces with a causal LM")
    traces.add_argument("file", type=Path, help="JSONL rows {question, steps, target, mistake_index}")
    traces.add_argument("--model", default="smollm2", help="a model folder, or smollm2 (offline; default)")
    traces.add_argument("--answer-template", default="Answer: {answer}", help="Y's template (%(default)r)")
    traces.add_argument("--no-chat-template", action="store_true", help="raw question + newline as the prompt")
    dump = sub.add_parser("dump", help="a finished run's step dump (no rescoring)")
    dump.add_argument("directory", type=Path, help="the run's acpo_dump folder")
    for part in (testbed, traces):
        part.add_argument(
            "--variants", type=_variants, default=list(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}"
        )
        part.add_argument(
            "--lookahead",
            action="store_true",
            help="also score every judged variant with the look-ahead judge (acpo_core.lookahead: L_i after the "
            "model's greedy continuation of each prefix), reported as VARIANT+lookahead",
        )
    for part in (testbed, traces, dump):
        part.add_argument("--out", type=Path, default=None, help="JSON file to write (default: none)")
    return parser


def _acpo_block(path: Path) -> ACPOConfig:
    from omegaconf import OmegaConf

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config")
    return ACPOConfig.from_dict(OmegaConf.load(path).get("acpo"))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    started = time.monotonic()
    if args.source == "dump":
        results = {"run": credit_figures(dump_responses(args.directory))}
        info: dict[str, Any] = {"dump": str(args.directory)}
    elif args.source == "testbed":
        cfg = _acpo_block(args.config)
        if args.answer_template is not None:
            cfg = dataclasses.replace(
                cfg, attribution=dataclasses.replace(cfg.attribution, answer_template=args.answer_template)
            )
            cfg.validate()
        task = task_spec(args)
        batches, tables, model, first_wrong, info = testbed_batch(
            args.policy, args.problems, args.samples, args.seed, cfg, task=task
        )
        info |= {"policy": str(args.policy), "seed": args.seed, "answer_template": cfg.attribution.answer_template}
        if task != TaskSpec():
            info["task"] = dataclasses.asdict(task)
        steps = None
        results = run_variants(batches, tables, cfg, MemoScorer(model), first_wrong, args.variants)
    else:
        cfg = ACPOConfig.from_dict({"attribution": {"answer_template": args.answer_template}})
        batches, tables, model, first_wrong, steps, info = traces_batch(
            args.file, args.model, args.answer_template, not args.no_chat_template
        )
        results = run_variants(batches, tables, cfg, MemoScorer(model, 16), first_wrong, args.variants, steps=steps)
    if args.source != "dump" and args.lookahead:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model.name_or_path)
        scorer = LookaheadScorer(model, tokenizer, cfg.attribution.answer_template)
        judged = [name for name in args.variants if name not in ORACLE_VARIANTS]
        looked = run_variants(batches, tables, cfg, scorer, first_wrong, judged, steps=steps)
        results |= {f"{name}+lookahead": figures for name, figures in looked.items()}
    seconds = time.monotonic() - started
    print(f"\n{info}")
    print(format_table(results))
    print("\nBy slip step:\n" + format_by_slip_step(results))
    print(f"\n{seconds:.0f}s in all")
    report = {"source": args.source, "info": info, "seconds": round(seconds, 1), "variants": results}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
