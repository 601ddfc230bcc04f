"""recipe.acpo.testbed.probes: a probe forecasts what the written lines commit to, its loss is on the value only,
and a build without probes fine-tunes on exactly the demonstrations' sequences."""

from __future__ import annotations

from typing import Any

import pytest

from acpo_core.attribution import answer_value_span
from recipe.acpo.testbed.__main__ import main
from recipe.acpo.testbed.demonstrations import demonstration
from recipe.acpo.testbed.forecast import forecast_table
from recipe.acpo.testbed.policy import PolicySpec, _batch, _encode, answer_of, training_sequences
from recipe.acpo.testbed.probes import committed_value, cuts, draw_probes, probe_example
from recipe.acpo.testbed.task import StepProblem, TaskSpec, generate
from recipe.acpo.testbed.tokenizer import train_tokenizer

PROBLEMS = generate(300, TaskSpec(), seed=3, pool="policy")
DEMONSTRATIONS = [demonstration(p, 0.4, 0.5, seed=0) for p in PROBLEMS]
SLIPPED = StepProblem(start=13, operations=(("add", 7), ("add", 4), ("add", 4)))
SLIPPED_RESPONSE = "First, 13 + 7 = 20.\nQuick, 20 + 4 ~ 23.\nThen, 23 + 4 = 27.\nAnswer: 27"
CUE = "Answer now:"


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    texts = [text for p, d in zip(PROBLEMS, DEMONSTRATIONS) for text in (p.prompt, d)]
    return train_tokenizer([*texts, SLIPPED.prompt, SLIPPED_RESPONSE], 512, 256, split_digits=False)


def test_the_forecast_follows_the_written_slip_not_the_ground_truth() -> None:
    assert SLIPPED.answer == 28
    forecasts = [committed_value(SLIPPED, SLIPPED_RESPONSE[:end]) for end in cuts(SLIPPED_RESPONSE)]
    # Line starts 0..3 (the last one opens the Answer line), then the complete response.
    assert forecasts == [(28, 3), (28, 2), (27, 1), (27, 0), (27, 0)]


def test_on_demonstrations_the_forecast_is_the_truth_before_any_slip_and_the_answer_after_the_last() -> None:
    for problem, response in zip(PROBLEMS, DEMONSTRATIONS):
        ends = cuts(response)
        assert len(ends) == len(problem.operations) + 2 and ends[-1] == len(response)
        values = [committed_value(problem, response[:end])[0] for end in ends]  # type: ignore[index]
        assert values[0] == problem.answer and values[-2:] == [answer_of(response)] * 2


def test_a_probe_is_the_prompt_the_prefix_ids_and_the_cue_and_its_loss_is_on_the_value_tokens_only(
    tokenizer: Any,
) -> None:
    (sequence,), (prompt_length,) = _encode(tokenizer, [SLIPPED], [SLIPPED_RESPONSE])
    end = cuts(SLIPPED_RESPONSE)[2]  # after the slip
    probe = probe_example(tokenizer, SLIPPED, SLIPPED_RESPONSE, sequence, prompt_length, end, CUE)
    assert probe.value == 27 and probe.remaining == 1
    prefix_length = len(tokenizer(SLIPPED_RESPONSE[:end], add_special_tokens=False)["input_ids"])
    # The response's own ids cut at the line start, then "Answer now: 27" tokenised on its own.
    head = prompt_length + prefix_length
    assert probe.ids[:head] == sequence[:head]
    answer = tokenizer(f"{CUE} 27", add_special_tokens=False)["input_ids"]
    assert probe.ids[head:] == answer and tokenizer.decode(probe.ids[probe.loss_start :]) == " 27"
    # The same value span as attribution's value-only scoring of the template "Answer now: {answer}".
    start, stop = answer_value_span(tokenizer, "27", CUE + " {answer}")
    assert (probe.loss_start - head, len(answer)) == (start, stop)
    _, _, labels = _batch([probe.ids], [probe.loss_start], [0], tokenizer.pad_token_id)
    scored = [n for n, label in enumerate(labels[0].tolist()) if label != -100]
    assert scored == list(range(probe.loss_start, len(probe.ids)))
    assert labels[0, : probe.loss_start].eq(-100).all()


def test_a_probe_at_the_complete_response_has_no_end_of_sequence_token_and_forecasts_its_answer(
    tokenizer: Any,
) -> None:
    (sequence,), (prompt_length,) = _encode(tokenizer, [SLIPPED], [SLIPPED_RESPONSE])
    probe = probe_example(tokenizer, SLIPPED, SLIPPED_RESPONSE, sequence, prompt_length, len(SLIPPED_RESPONSE), CUE)
    assert probe.value == 27 and tokenizer.eos_token_id not in probe.ids[prompt_length:]
    assert probe.ids[: len(sequence) - 1] == sequence[:-1]


def test_a_probe_cuts_only_at_a_line_start_or_the_end(tokenizer: Any) -> None:
    (sequence,), (prompt_length,) = _encode(tokenizer, [SLIPPED], [SLIPPED_RESPONSE])
    with pytest.raises(ValueError, match="line start"):
        probe_example(tokenizer, SLIPPED, SLIPPED_RESPONSE, sequence, prompt_length, 5, CUE)


def test_without_probes_the_training_sequences_are_the_demonstrations_as_today(tokenizer: Any) -> None:
    today = _encode(tokenizer, PROBLEMS, DEMONSTRATIONS)
    assert training_sequences(tokenizer, PROBLEMS, DEMONSTRATIONS, PolicySpec(), seed=0) == (*today, 0)
    sequences, starts, count = training_sequences(
        tokenizer, PROBLEMS, DEMONSTRATIONS, PolicySpec(probe_rate=0.5), seed=0
    )
    # Probes come after the demonstrations, which are unchanged; drawing them is deterministic in the seed.
    assert count == 150 and (sequences[:300], starts[:300]) == today and len(sequences) == 450
    again = draw_probes(tokenizer, PROBLEMS, DEMONSTRATIONS, *today, 150, CUE, seed=0)
    assert [p.ids for p in again] == sequences[300:]
    assert {p.remaining for p in again} == {0, 1, 2, 3}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"probe_rate": -0.5}, "probe_rate"),
        ({"probe_rate": float("nan")}, "probe_rate"),
        ({"probe_cue": ""}, "probe_cue"),
        ({"probe_cue": "  "}, "probe_cue"),
    ],
)
def test_bad_probe_options_are_refused(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PolicySpec(**spec)


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--probe-rate", "-1"], "--probe-rate must be a number >= 0, got -1.0"), (["--probe-cue", ""], "--probe-cue")],
)
def test_the_command_line_refuses_bad_probe_options(
    argv: list[str], message: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["build", str(tmp_path / "policy"), *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "policy").exists()


def test_the_forecast_table_counts_every_cut_by_operations_left(tokenizer: Any) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    problems, responses = [*PROBLEMS[:20], SLIPPED], [*DEMONSTRATIONS[:20], SLIPPED_RESPONSE]
    table = forecast_table(model, tokenizer, problems, responses, CUE)
    assert list(table) == ["3", "2", "1", "0", "full"]
    assert table["full"]["n"] == table["0"]["n"] == table["1"]["n"] == table["2"]["n"] == len(problems)
    assert table["3"]["n"] == sum(len(p.operations) == 3 for p in problems)
    assert all(0.0 <= row["committed"] <= 1.0 and 0.0 <= row["truth"] <= 1.0 for row in table.values())
