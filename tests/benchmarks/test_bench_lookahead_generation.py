"""benchmarks/bench_lookahead_generation.py: the prefixes a step continues, and both generators agreeing on a policy."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_lookahead_generation.py"
_SPEC = importlib.util.spec_from_file_location("bench_lookahead_generation", _PATH)
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)

NEWLINE = 9


def test_prefixes_start_at_the_prompt_and_after_each_inner_newline_once_each() -> None:
    prompts = [[1, 2], [1, 2], [3]]
    responses = [[5, NEWLINE, 6, NEWLINE], [5, NEWLINE, 7], [NEWLINE, 8]]
    prefixes = [p.tolist() for p in bench.line_start_prefixes(prompts, responses, {NEWLINE})]
    # The final newline of the first response starts no step; the second response shares its first two prefixes.
    assert prefixes == [[1, 2], [1, 2, 5, NEWLINE], [3], [3, NEWLINE]]


def test_both_generators_give_the_same_tokens_on_a_testbed_policy(tiny_policy: Path) -> None:
    figures = bench.main(["--policy", str(tiny_policy), "--problems", "2", "--samples", "2", "--repeats", "1"])
    assert figures["same"] == 1.0
    assert figures["prefixes"] >= 2  # the two prompts at least
    assert figures["generate"] > 0 and figures["greedy_generate"] > 0


def test_a_folder_without_a_policy_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        bench.main(["--policy", str(tmp_path)])
