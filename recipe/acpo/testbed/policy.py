"""Build the testbed policy offline: a ~0.5M-parameter Llama fine-tuned on demonstrations of the testbed task.

``build_policy(out_dir, seed)`` draws fine-tuning problems from the task's ``policy`` pool
(``recipe.acpo.testbed.task``; the RL train and validation files use the other pool), writes a demonstration of
each (its reference steps, some lines written hastily and some of those with a slip:
``recipe.acpo.testbed.demonstrations``), trains the tokenizer on them (``recipe.acpo.testbed.tokenizer``), trains a
small Llama by supervised fine-tuning on what an RL response looks like (the chat-templated prompt, then the steps,
``Answer: N`` and the end-of-sequence token, with the loss on the response only), measures its accuracy on held-out
``rl``-pool problems by sampling, and saves an ordinary Hugging Face folder. Everything is seeded and single-order
(fixed thread count, deterministic algorithms), so the same arguments give bit-identical weights on the same machine
and torch build.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from recipe.acpo.testbed.demonstrations import demonstration, hasty_line_share
from recipe.acpo.testbed.step_check import check_steps
from recipe.acpo.testbed.task import StepProblem, TaskSpec, generate
from recipe.acpo.testbed.tokenizer import train_tokenizer

_ANSWER = re.compile(r"^\s*Answer:\s*(-?\d+)\s*$", re.MULTILINE)
REPORT_FILE = "testbed_build.json"


@dataclass(frozen=True)
class PolicySpec:
    """Model size and fine-tuning schedule of the testbed policy."""

    vocab_size: int = 512
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    max_position_embeddings: int = 256
    sft_problems: int = 12_000
    sft_steps: int = 1200
    batch_size: int = 32
    lr: float = 5e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    eval_problems: int = 256
    num_threads: int = 2
    split_digits: bool = False
    # The demonstrations' hasty lines and their slips (recipe.acpo.testbed.demonstrations).
    hasty_rate: float = 0.4
    slip_rate: float = 0.5
    hasty_relation: str = "~"
    # Probe examples (recipe.acpo.testbed.probes): round(probe_rate * sft_problems) of them are mixed into the
    # fine-tuning set (1.0: as many as demonstrations; 0: none, the build as without the option), each a
    # demonstration's prefix, ``probe_cue`` and the final value the prefix commits to, the loss on the value only.
    probe_rate: float = 0.0
    probe_cue: str = "Answer now:"

    def __post_init__(self) -> None:
        if not (isinstance(self.probe_rate, int | float) and 0 <= self.probe_rate < math.inf):
            raise ValueError(f"probe_rate must be a number >= 0, got {self.probe_rate!r}")
        if not (isinstance(self.probe_cue, str) and self.probe_cue.strip()):
            raise ValueError(f"probe_cue must be a non-empty string, got {self.probe_cue!r}")


@dataclass
class BuildReport:
    """What a build measured: held-out accuracy (greedy and sampled at temperature 1) and step-check counts."""

    out_dir: str
    seed: int
    num_parameters: int
    train_seconds: float
    final_loss: float
    eval_problems: int
    greedy_accuracy: float
    sampled_accuracy: float
    sampled_unparsable: int
    sampled_hasty_line_share: float
    sampled_first_wrong_step: dict[str, int] = field(default_factory=dict)
    task: dict[str, Any] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)
    # Probes fine-tuned on; temperature-1 responses that write the probe cue unprompted (it should be 0).
    probe_examples: int = 0
    sampled_cue_emitted: int = 0
    # Per cue (the probe cue and today's template's ``Answer:``): the greedy forecast after each line start of the
    # temperature-1 responses, by operations remaining (recipe.acpo.testbed.forecast.forecast_table).
    forecast: dict[str, Any] = field(default_factory=dict)


def pin_tokenizer_class(folder: Path) -> None:
    """Make ``AutoTokenizer`` load the folder's ``tokenizer.json`` as it is.

    Without it, transformers may pick the model type's tokenizer class, which can replace the pre-tokenizer (for a
    Qwen2 model it always does: Qwen's, digits one by one) so that the ids are no longer the ones the policy was
    trained on. For a Llama model the class named here is honoured.
    """
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_file.write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")


def _print_now(message: str) -> None:
    print(message, flush=True)


def answer_of(response: str) -> int | None:
    """The integer on the last ``Answer:`` line of ``response``, or None."""
    found = _ANSWER.findall(response)
    return int(found[-1]) if found else None


def _encode(
    tokenizer: Any, problems: Sequence[StepProblem], responses: Sequence[str]
) -> tuple[list[list[int]], list[int]]:
    """Per problem: prompt + response token ids, and the prompt's length (the response is the loss target)."""
    sequences, prompt_lengths = [], []
    for problem, response in zip(problems, responses, strict=True):
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": problem.prompt}], add_generation_prompt=True, tokenize=False
        )
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        sequences.append(prompt_ids + response_ids)
        prompt_lengths.append(len(prompt_ids))
    return sequences, prompt_lengths


def training_sequences(
    tokenizer: Any, problems: Sequence[StepProblem], demonstrations: Sequence[str], policy: PolicySpec, seed: int
) -> tuple[list[list[int]], list[int], int]:
    """The fine-tuning sequences, where each one's loss starts, and how many of them are probes (at the end).

    The demonstrations' sequences come first (``_encode``: the loss on the response); then
    ``round(policy.probe_rate * len(problems))`` probes (``recipe.acpo.testbed.probes``: the loss on the forecast
    value only). With ``probe_rate`` 0 they are ``_encode``'s, and nothing else is drawn.
    """
    sequences, loss_starts = _encode(tokenizer, problems, demonstrations)
    count = round(policy.probe_rate * len(problems))
    if not count:
        return sequences, loss_starts, 0
    from recipe.acpo.testbed.probes import draw_probes

    probes = draw_probes(tokenizer, problems, demonstrations, sequences, loss_starts, count, policy.probe_cue, seed)
    return sequences + [p.ids for p in probes], loss_starts + [p.loss_start for p in probes], count


def held_out_problems(task: TaskSpec, count: int, seed: int) -> list[StepProblem]:
    """The ``rl``-pool problems a build with ``seed`` measures its policy on."""
    return generate(count, task, seed=seed + 1_000_003, pool="rl")


def _batch(sequences: list[list[int]], prompt_lengths: list[int], rows: list[int], pad_id: int) -> tuple[Any, ...]:
    import torch

    width = max(len(sequences[r]) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids = torch.tensor(sequences[r])
        input_ids[i, : len(ids)] = ids
        attention_mask[i, : len(ids)] = 1
        labels[i, prompt_lengths[r] : len(ids)] = ids[prompt_lengths[r] :]
    return input_ids, attention_mask, labels


def sample_responses(
    model: Any, tokenizer: Any, prompts: Sequence[str], temperature: float, max_new_tokens: int = 80, batch: int = 64
) -> list[str]:
    """Responses to ``prompts`` (user messages): greedy when ``temperature`` is 0, else plain sampling (no top-k/p)."""
    import torch

    tokenizer.padding_side = "left"
    responses: list[str] = []
    for first in range(0, len(prompts), batch):
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
            for p in prompts[first : first + batch]
        ]
        encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature else {}
        sampling.setdefault("do_sample", False)
        with torch.no_grad():
            out = model.generate(
                **encoded,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **sampling,
            )
        responses += tokenizer.batch_decode(out[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
    return responses


def score(problems: Sequence[StepProblem], responses: Sequence[str]) -> tuple[float, int, dict[str, int]]:
    """(accuracy, unparsable responses, wrong responses per first wrong step index) of ``responses``."""
    right, unparsable, first_wrong = 0, 0, {}
    for problem, response in zip(problems, responses):
        if answer_of(response) == problem.answer:
            right += 1
            continue
        check = check_steps(response, start=problem.start)
        if not check.parsed:
            unparsable += 1
        key = "none" if check.first_wrong is None else str(check.first_wrong)
        first_wrong[key] = first_wrong.get(key, 0) + 1
    return right / max(len(problems), 1), unparsable, dict(sorted(first_wrong.items()))


def build_policy(
    out_dir: str | Path,
    seed: int = 0,
    task: TaskSpec | None = None,
    policy: PolicySpec | None = None,
    log: Callable[[str], None] = _print_now,
) -> BuildReport:
    """Train and save the testbed policy to ``out_dir``; returns (and writes to ``testbed_build.json``) its report."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    from recipe.acpo.testbed.forecast import TEMPLATE_CUE, forecast_table, format_forecast

    task = task or TaskSpec()
    policy = policy or PolicySpec()
    started = time.monotonic()
    torch.set_num_threads(policy.num_threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    problems = generate(policy.sft_problems, task, seed=seed, pool="policy")
    held_out = held_out_problems(task, policy.eval_problems, seed)
    demonstrations = [
        demonstration(p, policy.hasty_rate, policy.slip_rate, seed, policy.hasty_relation) for p in problems
    ]
    tokenizer = train_tokenizer(
        [text for p, response in zip(problems, demonstrations) for text in (p.prompt, response)],
        policy.vocab_size,
        policy.max_position_embeddings,
        policy.split_digits,
    )
    sequences, prompt_lengths, num_probes = training_sequences(tokenizer, problems, demonstrations, policy, seed)
    log(
        f"tokenizer: {len(tokenizer)} tokens; {len(problems)} fine-tuning problems"
        + (f" and {num_probes} probes (cue {policy.probe_cue!r})" if num_probes else "")
        + f", {max(map(len, sequences))} tokens at most"
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=policy.hidden_size,
        intermediate_size=policy.hidden_size * 4,
        num_hidden_layers=policy.num_layers,
        num_attention_heads=policy.num_heads,
        num_key_value_heads=policy.num_heads,
        max_position_embeddings=policy.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config)
    num_parameters = sum(p.numel() for p in model.parameters())
    log(f"model: Llama, {num_parameters / 1e6:.2f}M parameters; {policy.sft_steps} fine-tuning steps")
    optimizer = torch.optim.AdamW(model.parameters(), lr=policy.lr, weight_decay=policy.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (
            min(1.0, (step + 1) / policy.warmup_steps)
            * 0.5
            * (1 + math.cos(math.pi * min(step, policy.sft_steps) / policy.sft_steps))
        ),
    )
    order = torch.Generator().manual_seed(seed)
    permutation: list[int] = []
    model.train()
    loss_ema = float("nan")
    for step in range(policy.sft_steps):
        if len(permutation) < policy.batch_size:
            permutation += torch.randperm(len(sequences), generator=order).tolist()
        rows, permutation = permutation[: policy.batch_size], permutation[policy.batch_size :]
        input_ids, attention_mask, labels = _batch(sequences, prompt_lengths, rows, tokenizer.pad_token_id)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        loss_ema = loss.item() if math.isnan(loss_ema) else 0.9 * loss_ema + 0.1 * loss.item()
        if (step + 1) % 50 == 0 or step + 1 == policy.sft_steps:
            log(f"  step {step + 1}/{policy.sft_steps}  loss {loss_ema:.4f}  {time.monotonic() - started:.0f}s")
    train_seconds = time.monotonic() - started

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    pin_tokenizer_class(out)
    GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    ).save_pretrained(out)

    # Measured with the tokenizer as verl will load it from the folder, not the in-memory one.
    saved_tokenizer = AutoTokenizer.from_pretrained(out)
    if _encode(saved_tokenizer, problems[:64], demonstrations[:64])[0] != sequences[:64]:
        raise RuntimeError(f"{out}: AutoTokenizer does not give the ids the policy was trained on")
    model.eval()
    prompts = [p.prompt for p in held_out]
    greedy, _, _ = score(held_out, sample_responses(model, saved_tokenizer, prompts, temperature=0.0))
    sampled_responses = sample_responses(model, saved_tokenizer, prompts, temperature=1.0)
    sampled, unparsable, first_wrong = score(held_out, sampled_responses)
    cue_emitted = sum(policy.probe_cue in response for response in sampled_responses)
    forecast = {
        cue: forecast_table(model, saved_tokenizer, held_out, sampled_responses, cue)
        for cue in dict.fromkeys((policy.probe_cue, TEMPLATE_CUE))
    }
    report = BuildReport(
        out_dir=str(out),
        seed=seed,
        num_parameters=num_parameters,
        train_seconds=round(train_seconds, 1),
        final_loss=round(loss_ema, 4),
        eval_problems=len(held_out),
        greedy_accuracy=greedy,
        sampled_accuracy=sampled,
        sampled_unparsable=unparsable,
        sampled_hasty_line_share=round(hasty_line_share(sampled_responses), 4),
        sampled_first_wrong_step=first_wrong,
        task=asdict(task),
        policy=asdict(policy),
        probe_examples=num_probes,
        sampled_cue_emitted=cue_emitted,
        forecast=forecast,
    )
    (out / REPORT_FILE).write_text(json.dumps(asdict(report), indent=1) + "\n", encoding="utf-8")
    log(
        f"held-out accuracy on {len(held_out)} problems: greedy {100 * greedy:.1f}%, temperature 1.0 "
        f"{100 * sampled:.1f}% ({100 * report.sampled_hasty_line_share:.0f}% of its lines hasty); "
        f"wrong sampled responses by first wrong step {first_wrong} "
        f"({unparsable} unparsable); {time.monotonic() - started:.0f}s in all"
    )
    log(
        f"the probe cue {policy.probe_cue!r} written unprompted in {cue_emitted} of {len(sampled_responses)} "
        "temperature-1.0 responses"
    )
    for cue, table in forecast.items():
        log(format_forecast(cue, table))
    log(f"example (temperature 1.0): {held_out[0].prompt!r} -> {sampled_responses[0]!r}")
    return report
