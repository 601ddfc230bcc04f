"""recipe.acpo.reward and recipe.acpo.reward_manager (§7): answer extraction, math-verify in worker processes
with a per-item time limit, and the ``acpo`` reward manager in verl 0.9.1's reward loop."""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib
import random
import string
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from recipe.acpo.reward import (
    REWARD_EMPTY_GROUND_TRUTH_FRAC,
    REWARD_NO_ANSWER_FRAC,
    REWARD_TIMEOUT_FRAC,
    VerifierPool,
    VerifierSettings,
    compute_score,
    extract_answer,
    get_scorer,
    reward_fraction_metrics,
)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
# Keeps sympy busy for minutes (it evaluates the tower); interruptible Python code, so the in-worker timer stops it.
SLOW_ANSWER = "9^{9^{9}}"
SHORT_LIMIT_S = 1.0
# Process start, pipe round trips and a loaded 2-core CI machine.
SLACK_S = 2.0

# (response, ground truth, score, no_answer)
CASES: list[tuple[str, Any, float, bool]] = [
    (r"6 times 7 is $\boxed{42.0}$.", "42", 1.0, False),
    ("Three of four.\nAnswer: 3/4", "0.75", 1.0, False),
    (r"Answer: $\frac{1}{2}$", "0.5", 1.0, False),
    (r"so the probability is \boxed{\frac{1}{2}}", "0.5", 1.0, False),
    (r"Answer: $-\frac{3}{4}$", "-0.75", 1.0, False),
    (r"Answer: \{2, 1\}", r"\{1,2\}", 1.0, False),
    (r"\boxed{\{1, 2, 3\}}", r"\{1,2\}", 0.0, False),
    ("Answer: [1, 3)", "[1,3)", 1.0, False),
    ("Answer: (1, 3)", "[1,3)", 0.0, False),
    (r"\boxed{(-\infty, 2]}", r"(-\infty,2]", 1.0, False),
    ("Answer: -7", "-7", 1.0, False),
    ("Answer: 7", "-7", 0.0, False),
    (r"\boxed{-12}", "-12", 1.0, False),
    ("**Answer:** 42", "42", 1.0, False),
    ("Answer: 27", 27.0, 1.0, False),  # AMC ground truths are floats
    ("Answer: 41", "42", 0.0, False),
    ("Answer: 41\nNo wait.\nAnswer: 42", "42", 1.0, False),
    ("\\boxed{41}\nAnswer: 42", "42", 1.0, False),
    (r"First \boxed{41}, then \boxed{42}", "42", 1.0, False),
    (r"\boxed{42} and then \boxed{43", "42", 1.0, False),
    ("I am not sure what the result is.", "42", 0.0, True),
    ("Answer: ???", "42", 0.0, True),
    ("", "42", 0.0, True),
]


def garbage(n_chars: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "".join(rng.choices(string.printable + "{}\\$^_" * 8, k=n_chars))


@pytest.fixture(scope="module")
def warm_scorer() -> Any:
    """The default process-wide scorer with its workers started, so that timings exclude process start."""
    scorer = get_scorer(VerifierSettings())
    assert scorer.score("Answer: 1", "1").score == 1.0
    return scorer


# ---------------------------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------------------------


def test_the_last_answer_line_wins_over_earlier_lines_and_boxes() -> None:
    assert extract_answer("Answer: 1\n\\boxed{2}\nAnswer: $3$.") == "3"


def test_the_last_balanced_box_is_used_without_an_answer_line() -> None:
    assert extract_answer(r"\boxed{\frac{1}{2}} and \boxed{x^{2}}") == "x^{2}"
    assert extract_answer(r"\boxed{7} then a cut-off \boxed{\frac{1}{") == "7"


def test_no_answer_line_and_no_box_gives_none() -> None:
    assert extract_answer("The result is 42.") is None
    assert extract_answer("Answer:   ") is None


def test_only_the_tail_of_a_long_response_is_searched() -> None:
    assert extract_answer("Answer: 5\n" + "x" * 10_000) is None
    assert extract_answer("x" * 50_000 + "\nAnswer: 5") == "5"


# ---------------------------------------------------------------------------------------------------------------
# Scoring table
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("response", "ground_truth", "score", "no_answer"), CASES)
def test_scores_the_tricky_cases(
    warm_scorer: Any, response: str, ground_truth: Any, score: float, no_answer: bool
) -> None:
    result = compute_score("math_dapo", response, ground_truth, extra_info={"index": "x"})
    assert result["score"] == score
    assert result["acc"] == score
    assert result["no_answer"] is no_answer
    assert result["timeout"] is False


def test_calls_from_threads_give_the_same_scores_as_from_the_main_thread(warm_scorer: Any) -> None:
    main_thread = [compute_score("math_dapo", response, truth) for response, truth, _, _ in CASES]
    with ThreadPoolExecutor(max_workers=4) as threads:
        from_threads = list(threads.map(lambda case: compute_score("math_dapo", case[0], case[1]), CASES))
    assert from_threads == main_thread
    assert [result["score"] for result in from_threads] == [case[2] for case in CASES]


def test_fifty_kilobytes_of_garbage_score_zero_quickly(warm_scorer: Any) -> None:
    for seed in range(3):
        text = garbage(50_000, seed)
        start = time.monotonic()
        result = compute_score("math_dapo", text, "42")
        assert time.monotonic() - start < 1.0
        assert result["score"] == 0.0
        assert result["timeout"] is False


def test_a_right_answer_after_fifty_kilobytes_of_garbage_still_counts(warm_scorer: Any) -> None:
    assert compute_score("math_dapo", garbage(50_000) + "\nAnswer: 42", "42")["score"] == 1.0


def test_an_answer_longer_than_any_final_answer_is_not_verified(warm_scorer: Any) -> None:
    start = time.monotonic()
    result = compute_score("math_dapo", "Answer: " + "1+" * 1000 + "1", "2001")
    assert time.monotonic() - start < 1.0
    assert (result["score"], result["no_answer"], result["timeout"]) == (0.0, True, False)


def test_an_answer_that_keeps_the_verifier_busy_times_out_within_the_limit(warm_scorer: Any) -> None:
    start = time.monotonic()
    result = compute_score("math_dapo", f"Answer: {SLOW_ANSWER}", "1", verify_time_limit_s=SHORT_LIMIT_S)
    elapsed = time.monotonic() - start
    assert (result["score"], result["timeout"], result["no_answer"]) == (0.0, True, False)
    assert SHORT_LIMIT_S * 0.9 <= elapsed < SHORT_LIMIT_S + SLACK_S
    # The worker survived its timeout and keeps scoring.
    assert compute_score("math_dapo", "Answer: 2", "2", verify_time_limit_s=SHORT_LIMIT_S)["score"] == 1.0


def test_a_timeout_from_a_thread_is_the_same_timeout(warm_scorer: Any) -> None:
    with ThreadPoolExecutor(max_workers=1) as thread:
        result = thread.submit(
            compute_score, "math_dapo", f"Answer: {SLOW_ANSWER}", "1", verify_time_limit_s=SHORT_LIMIT_S
        ).result()
    assert (result["score"], result["timeout"]) == (0.0, True)


def test_a_batch_is_verified_in_parallel_across_workers(warm_scorer: Any) -> None:
    scorer = get_scorer(VerifierSettings(verify_time_limit_s=SHORT_LIMIT_S))
    assert scorer.pool is warm_scorer.pool and scorer.pool.num_workers == 2
    pairs = [(f"Answer: {SLOW_ANSWER}", "1"), (f"Answer: {SLOW_ANSWER}", "2"), ("Answer: 3", "3"), ("x", "4")]
    start = time.monotonic()
    results = scorer.score_batch(pairs)
    elapsed = time.monotonic() - start
    assert [(r.score, r.timeout, r.no_answer) for r in results] == [
        (0.0, True, False),
        (0.0, True, False),
        (1.0, False, False),
        (0.0, False, True),
    ]
    # Two slow items on two workers end together, not one after the other.
    assert elapsed < 2 * SHORT_LIMIT_S


def test_a_worker_stuck_past_its_limit_is_killed_and_replaced() -> None:
    # Without the in-worker timer (as on a platform without SIGALRM) only the parent's hard kill stops the item.
    pool = VerifierPool(1, kill_grace_s=0.5, use_alarm=False)
    try:
        assert pool.submit("1", "1", 5.0).result().correct
        (stuck_pid,) = pool.worker_pids()
        start = time.monotonic()
        outcome = pool.submit("1", SLOW_ANSWER, SHORT_LIMIT_S).result()
        elapsed = time.monotonic() - start
        assert outcome.status == "timeout"
        assert SHORT_LIMIT_S + 0.5 <= elapsed < SHORT_LIMIT_S + 0.5 + SLACK_S
        assert not pathlib.Path(f"/proc/{stuck_pid}").exists()
        after = pool.submit("2", "2", 5.0).result()
        assert after.status == "ok" and after.correct
        (replacement_pid,) = pool.worker_pids()
        assert replacement_pid != stuck_pid
    finally:
        pool.shutdown()
    assert not pathlib.Path(f"/proc/{replacement_pid}").exists()


def test_workers_die_with_a_killed_parent(tmp_path: pathlib.Path) -> None:
    # Ray kills reward-loop actors with SIGKILL: their verifier workers must not outlive them.
    script = textwrap.dedent(
        """
        import os, signal, time
        from recipe.acpo.reward import VerifierPool
        if __name__ == "__main__":
            pool = VerifierPool(2)
            assert pool.submit("1", "1", 5.0).result().correct
            deadline = time.monotonic() + 60
            while len(pool.worker_pids()) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            print(" ".join(map(str, pool.worker_pids())), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    (tmp_path / "parent.py").write_text(script)
    run = subprocess.run(
        [sys.executable, str(tmp_path / "parent.py")],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == -9, run.stderr
    worker_pids = [int(pid) for pid in run.stdout.split()]
    assert len(worker_pids) == 2
    deadline = time.monotonic() + 10
    while any(pathlib.Path(f"/proc/{pid}").exists() for pid in worker_pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in worker_pids if pathlib.Path(f"/proc/{pid}").exists()]


def test_a_ground_truth_math_verify_cannot_read_is_logged(warm_scorer: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="recipe.acpo.reward"):
        result = compute_score("math_dapo", "Answer: 1", "???")
    assert result["score"] == 0.0
    assert any("ground truth" in record.getMessage() and "???" in record.getMessage() for record in caplog.records)


def test_a_forkserver_pool_verifies_like_a_spawn_pool() -> None:
    pool = VerifierPool(1, start_method="forkserver")
    try:
        outcomes = [pool.submit(truth, answer, 5.0).result() for truth, answer in [("0.5", r"\frac{1}{2}"), ("2", "3")]]
    finally:
        pool.shutdown()
    assert [(outcome.status, outcome.correct) for outcome in outcomes] == [("ok", True), ("ok", False)]


def test_a_shut_down_pool_fails_loudly_instead_of_scoring_zero() -> None:
    pool = VerifierPool(1)
    pool.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit("1", "1", 1.0)


def test_settings_reject_a_non_positive_time_limit() -> None:
    with pytest.raises(ValueError, match="verify_time_limit_s"):
        VerifierSettings.from_mapping({"verify_time_limit_s": 0})
    assert VerifierSettings.from_mapping({"overlong_buffer_cfg": None, "verify_workers": 3}).verify_workers == 3


# ---------------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------------


def test_step_metrics_are_the_fractions_of_timeouts_and_missing_answers() -> None:
    infos = [
        {"score": 1.0, "timeout": False, "no_answer": False},
        {"score": 0.0, "timeout": True, "no_answer": False},
        {"score": 0.0, "timeout": False, "no_answer": True},
        {"score": 0.0, "timeout": False, "no_answer": True},
    ]
    assert reward_fraction_metrics(infos) == {
        REWARD_TIMEOUT_FRAC: 0.25,
        REWARD_NO_ANSWER_FRAC: 0.5,
        REWARD_EMPTY_GROUND_TRUTH_FRAC: 0.0,
    }
    assert REWARD_TIMEOUT_FRAC == "acpo/reward_timeout_frac"
    assert REWARD_NO_ANSWER_FRAC == "acpo/reward_no_answer_frac"


def test_an_empty_ground_truth_is_warned_once_per_value_and_counted(
    warm_scorer: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import recipe.acpo.reward.scorer as scorer_module

    monkeypatch.setattr(scorer_module, "_WARNED", set())  # earlier tests may have warned about these values
    with caplog.at_level(logging.WARNING, logger="recipe.acpo.reward.scorer"):
        results = [warm_scorer.score("Answer: 4", truth) for truth in ["  ", "  ", None, "  ", None]]
    assert [(r.score, r.empty_ground_truth) for r in results] == [(0.0, True)] * 5
    warnings = [r.getMessage() for r in caplog.records if "empty ground truth" in r.getMessage()]
    assert len(warnings) == 2 and any("'  '" in w for w in warnings) and any("None" in w for w in warnings)
    infos = [r.as_dict() for r in results] + [warm_scorer.score("Answer: 4", "4").as_dict()]
    assert reward_fraction_metrics(infos)[REWARD_EMPTY_GROUND_TRUTH_FRAC] == pytest.approx(5 / 6)


def test_step_metrics_read_verl_transfer_queue_extra_fields() -> None:
    extra_fields = [
        {"reward_extra_info": {"timeout": True, "no_answer": False}, "turns": 1},
        {"reward_extra_info": {"timeout": False, "no_answer": False}},
    ]
    assert reward_fraction_metrics(extra_fields) == {
        REWARD_TIMEOUT_FRAC: 0.5,
        REWARD_NO_ANSWER_FRAC: 0.0,
        REWARD_EMPTY_GROUND_TRUTH_FRAC: 0.0,
    }


def test_step_metrics_name_the_row_scored_by_another_reward() -> None:
    with pytest.raises(KeyError, match="row 1"):
        reward_fraction_metrics([{"timeout": False, "no_answer": False}, {"score": 1.0, "acc": 1.0}])


# ---------------------------------------------------------------------------------------------------------------
# verl 0.9.1 integration (real verl objects)
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    from recipe.acpo.offline_models import save_qwen25_tokenizer

    return pathlib.Path(save_qwen25_tokenizer(tmp_path_factory.mktemp("qwen25_tokenizer")))


@pytest.fixture(scope="module")
def verl_base_config(tokenizer_dir: pathlib.Path) -> Any:
    """verl's own packaged ``ppo_trainer`` config, with the tokenizer as the model path."""
    import verl
    from hydra import compose, initialize_config_dir

    config_dir = pathlib.Path(verl.__file__).parent / "trainer" / "config"
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return compose(config_name="ppo_trainer", overrides=[f"actor_rollout_ref.model.path={tokenizer_dir}"])


def with_overrides(config: Any, overrides: dict[str, Any]) -> Any:
    """A copy of ``config`` with dotted keys set (new keys allowed, as Hydra's ``+key=value``)."""
    from omegaconf import OmegaConf, open_dict

    copy = OmegaConf.create(OmegaConf.to_container(config))
    with open_dict(copy):
        for key, value in overrides.items():
            OmegaConf.update(copy, key, value, force_add=True)
    return copy


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir: pathlib.Path) -> Any:
    from verl.utils import hf_tokenizer

    return hf_tokenizer(str(tokenizer_dir))


BATCH_RESPONSES = [r"So $\boxed{42.0}$.", "Answer: 3/4", "I give up.", f"Answer: {SLOW_ANSWER}"]
BATCH_TRUTHS = ["42", "0.75", "7", "1"]


@pytest.fixture(scope="module")
def rollout_batch(tokenizer: Any) -> Any:
    """A verl ``DataProto`` as the reward loop receives it: right-padded responses after the prompts."""
    return rollout_batch_of(tokenizer)


def rollout_batch_of(tokenizer: Any) -> Any:
    import numpy as np
    import torch
    from verl import DataProto

    prompt = torch.tensor(tokenizer("What is 6 times 7?").input_ids)
    encoded = [tokenizer(text + tokenizer.eos_token, add_special_tokens=False).input_ids for text in BATCH_RESPONSES]
    width = max(len(ids) for ids in encoded)
    response_ids = torch.full((len(encoded), width), tokenizer.pad_token_id)
    response_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, ids in enumerate(encoded):
        response_ids[row, : len(ids)] = torch.tensor(ids)
        response_mask[row, : len(ids)] = 1
    prompts = prompt.unsqueeze(0).repeat(len(encoded), 1)
    return DataProto.from_dict(
        tensors={
            "prompts": prompts,
            "responses": response_ids,
            "attention_mask": torch.cat([torch.ones_like(prompts), response_mask], dim=1),
        },
        non_tensors={
            "data_source": np.array(["math_dapo"] * len(encoded), dtype=object),
            "reward_model": np.array([{"ground_truth": truth, "style": "rule"} for truth in BATCH_TRUTHS]),
        },
    )


def test_the_acpo_manager_is_in_the_registry_the_v1_reward_loop_uses() -> None:
    from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls
    from verl.trainer.ppo.reward import resolve_reward_manager_cls

    from recipe.acpo.reward_manager import ACPORewardManager

    assert get_reward_manager_cls("acpo") is ACPORewardManager
    by_import = {
        "reward": {
            "reward_manager": {
                "source": "importlib",
                "name": "ACPORewardManager",
                "module": {"path": "pkg://recipe.acpo.reward_manager"},
            }
        }
    }
    from omegaconf import OmegaConf

    assert resolve_reward_manager_cls(OmegaConf.create(by_import)) is ACPORewardManager


@pytest.mark.e2e  # starts verl, a fresh interpreter or a training run: slow on 2 cores
def test_a_fresh_verl_process_finds_acpo_through_verl_use_external_modules() -> None:
    # What a Ray reward-loop worker is: a new interpreter that only imports verl.
    probe = (
        "import verl\n"
        "from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls\n"
        "print(get_reward_manager_cls('acpo').__module__)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "VERL_USE_EXTERNAL_MODULES": "recipe.acpo.reward_manager"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "recipe.acpo.reward_manager"


def test_verl_reward_loop_worker_scores_a_batch_with_the_acpo_manager(
    warm_scorer: Any, verl_base_config: Any, rollout_batch: Any
) -> None:
    from verl.experimental.reward_loop import RewardLoopWorker
    from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

    from recipe.acpo.reward_manager import ACPORewardManager

    config = with_overrides(
        verl_base_config,
        {
            "reward.reward_manager.source": "importlib",
            "reward.reward_manager.name": "ACPORewardManager",
            "reward.reward_manager.module.path": "pkg://recipe.acpo.reward_manager",
            "reward.reward_kwargs.verify_time_limit_s": SHORT_LIMIT_S,
        },
    )
    data = rollout_batch

    async def score() -> tuple[Any, list[dict[str, Any]], dict[str, Any]]:
        worker = RewardLoopWorker(config)  # built inside the event loop, as in a Ray async actor
        batch = await worker.compute_score_batch(data)  # verl's batch path (colocated reward)
        single = await worker.compute_score(data[0:1])  # verl's streaming path (one sample from the agent loop)
        return worker.reward_manager, batch, single

    manager, outputs, single = asyncio.run(score())
    assert isinstance(manager, ACPORewardManager) and isinstance(manager, RewardManagerBase)
    assert manager.settings.verify_time_limit_s == SHORT_LIMIT_S
    assert [output["reward_score"] for output in outputs] == [1.0, 1.0, 0.0, 0.0]
    infos = [output["reward_extra_info"] for output in outputs]
    assert [(info["no_answer"], info["timeout"]) for info in infos] == [
        (False, False),
        (False, False),
        (True, False),
        (False, True),
    ]
    assert single == outputs[0]
    assert reward_fraction_metrics(infos) == {
        REWARD_TIMEOUT_FRAC: 0.25,
        REWARD_NO_ANSWER_FRAC: 0.25,
        REWARD_EMPTY_GROUND_TRUTH_FRAC: 0.0,
    }
    # verl puts each score on the last response token.
    rm_scores = ACPORewardManager.assemble_rm_scores(data, [output["reward_score"] for output in outputs])
    last_token = data.batch["attention_mask"][:, data.batch["prompts"].shape[1] :].sum(dim=1) - 1
    assert rm_scores.sum(dim=1).tolist() == [1.0, 1.0, 0.0, 0.0]
    assert rm_scores[0, last_token[0]] == 1.0


def test_manager_score_batch_matches_per_sample_scores(
    warm_scorer: Any, verl_base_config: Any, tokenizer: Any, rollout_batch: Any
) -> None:
    from recipe.acpo.reward_manager import ACPORewardManager

    config = with_overrides(verl_base_config, {"reward.reward_kwargs.verify_time_limit_s": SHORT_LIMIT_S})

    async def score() -> list[dict[str, Any]]:
        manager = ACPORewardManager(config, tokenizer, compute_score=None)
        return await manager.score_batch(rollout_batch)

    outputs = asyncio.run(score())
    assert [output["reward_score"] for output in outputs] == [1.0, 1.0, 0.0, 0.0]
    assert [output["reward_extra_info"]["pred"] for output in outputs] == ["42.0", "3/4", "", SLOW_ANSWER]


def test_the_agent_loops_scoring_gives_the_managers_result_for_every_response(
    warm_scorer: Any, verl_base_config: Any, tokenizer: Any
) -> None:
    """What the recipe's agent loop hands verl as ``reward_score`` equals what the reward manager would return."""
    from recipe.acpo.reward_manager import ACPORewardManager, agent_loop_scorer, score_response

    config = with_overrides(
        verl_base_config,
        {"reward.reward_kwargs.verify_time_limit_s": SHORT_LIMIT_S, "reward.reward_kwargs.score_in_agent_loop": True},
    )
    scorer = agent_loop_scorer(config)
    assert scorer is not None and scorer.settings.verify_time_limit_s == SHORT_LIMIT_S
    encoded = [tokenizer(text + tokenizer.eos_token, add_special_tokens=False).input_ids for text in BATCH_RESPONSES]

    async def score() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        in_loop = [
            await score_response(scorer, tokenizer, ids, {"ground_truth": truth})
            for ids, truth in zip(encoded, BATCH_TRUTHS)
        ]
        manager = ACPORewardManager(config, tokenizer, compute_score=None)
        return in_loop, await manager.score_batch(rollout_batch_of(tokenizer))

    in_loop, by_manager = asyncio.run(score())
    assert [output["reward_score"] for output in in_loop] == [1.0, 1.0, 0.0, 0.0]
    assert in_loop == by_manager


def test_scoring_in_the_agent_loop_is_off_unless_set_and_refuses_a_non_boolean(verl_base_config: Any) -> None:
    from recipe.acpo.reward_manager import agent_loop_scorer, score_response, scores_in_agent_loop

    assert not scores_in_agent_loop(verl_base_config) and agent_loop_scorer(verl_base_config) is None
    assert scores_in_agent_loop(with_overrides(verl_base_config, {"reward.reward_kwargs.score_in_agent_loop": True}))
    with pytest.raises(ValueError, match=r"reward\.reward_kwargs\.score_in_agent_loop='yes' must be true or false"):
        scores_in_agent_loop(with_overrides(verl_base_config, {"reward.reward_kwargs.score_in_agent_loop": "yes"}))
    # A row without a ground truth is a data error, named as such (a bad response only scores 0).
    with pytest.raises(ValueError, match=r"no reward_model\.ground_truth \(reward_model=\{'style': 'rule'\}\)"):
        asyncio.run(score_response(get_scorer(VerifierSettings()), None, [1, 2], {"style": "rule"}))


def test_verl_naive_manager_runs_compute_score_as_a_custom_reward_function(
    warm_scorer: Any, verl_base_config: Any, rollout_batch: Any
) -> None:
    # verl's naive manager calls the function on an executor thread: the SIGALRM limitation in action.
    from verl.experimental.reward_loop import RewardLoopWorker

    config = with_overrides(
        verl_base_config,
        {
            "reward.custom_reward_function.path": "pkg://recipe.acpo.reward",
            "reward.custom_reward_function.name": "compute_score",
            "reward.custom_reward_function.reward_kwargs": {"verify_time_limit_s": SHORT_LIMIT_S},
        },
    )
    assert config.reward.reward_manager.name == "naive"

    async def score() -> list[dict[str, Any]]:
        return await RewardLoopWorker(config).compute_score_batch(rollout_batch)

    outputs = asyncio.run(score())
    assert [output["reward_score"] for output in outputs] == [1.0, 1.0, 0.0, 0.0]
    assert [output["reward_extra_info"]["timeout"] for output in outputs] == [False, False, False, True]
