"""The CPU testbed: verifiable multi-step arithmetic, a small warm-started policy, and the marks that say whether step
credit finds the slip. Everything of the testbed lives here; what RL does on it, measured: docs/learning.md.

- ``task``: the problems and their RL parquet files (data_source ``arithmetic_steps``; ``python -m
  recipe.acpo.testbed.task --output-dir DIR`` or ``python -m recipe.acpo.testbed data DIR``);
- ``step_check``: reads the equations of a response and finds its first wrong one;
- ``slips``: the slip step (the step holding the first wrong equation) and the most blamed step (the most negative
  A_attr), the one definition the report, the oracle judge and the benchmarks use;
- ``demonstrations``: the fine-tuning solutions, whose lines are careful or hasty (and then sometimes slip);
- ``probes``: optional fine-tuning examples that teach the policy to forecast its answer from a prefix;
- ``tokenizer`` and ``policy``: ``build_policy``, a ~0.5M-parameter Llama with its own byte-level BPE tokenizer,
  fine-tuned offline;
- ``forecast``: how well a built policy forecasts its final answer from a prefix (what ACPO's judge needs);
- ``curve``: held-out accuracy by step, read back from a run's validation metrics;
- the verl settings: ``recipe/acpo/config/testbed/arithmetic_steps.yaml`` (``+testbed=arithmetic_steps`` on any
  recipe config), composed into ``acpo_cpu_testbed_stage1`` / ``acpo_cpu_testbed_stage2`` / ``grpo_cpu_testbed``.

Command line: ``python -m recipe.acpo.testbed {build,data,forecast} DIR``.
"""

from typing import Any

__all__ = ["BuildReport", "PolicySpec", "build_policy"]


def __getattr__(name: str) -> Any:
    # The policy builder imports torch and transformers; the task's data command (``python -m
    # recipe.acpo.testbed.task``) and the step checker need neither, so the builder loads on first use.
    if name in __all__:
        from recipe.acpo.testbed import policy

        return getattr(policy, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
