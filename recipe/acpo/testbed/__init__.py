"""The CPU testbed: verifiable multi-step arithmetic and a small warm-started policy.

What RL does on it, measured: docs/learning.md.

- the task and its data files: ``recipe.acpo.testbed.task`` (data_source ``arithmetic_steps``), its step checker
  ``recipe.acpo.testbed.step_check``;
- the policy: ``build_policy`` (``recipe.acpo.testbed.policy``), a ~0.5M-parameter Llama with its own byte-level BPE
  tokenizer, fine-tuned offline on demonstrations whose lines are careful or hasty (``demonstrations``);
- the verl settings: ``recipe/acpo/config/testbed/arithmetic_steps.yaml`` (``+testbed=arithmetic_steps`` on any
  recipe config), composed into ``acpo_cpu_testbed_stage1`` / ``acpo_cpu_testbed_stage2`` / ``grpo_cpu_testbed``.

Command line: ``python -m recipe.acpo.testbed {build,data} OUT_DIR``.
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
