"""The CPU testbed: verifiable multi-step arithmetic and a small warm-started policy.

What RL does on it, measured: docs/learning.md.

- the task and its data files: ``data_prep.arithmetic_steps`` (data_source ``arithmetic_steps``), its step checker
  ``data_prep.step_check``;
- the policy: ``build_policy`` (``recipe.acpo.testbed.policy``), a ~0.5M-parameter Llama with its own byte-level BPE
  tokenizer, fine-tuned offline on demonstrations whose lines are careful or hasty (``demonstrations``);
- the verl settings: ``recipe/acpo/config/testbed/arithmetic_steps.yaml`` (``+testbed=arithmetic_steps`` on any
  recipe config), composed into ``acpo_cpu_testbed_stage1`` / ``acpo_cpu_testbed_stage2`` / ``grpo_cpu_testbed``.

Command line: ``python -m recipe.acpo.testbed {build,data} OUT_DIR``.
"""

from recipe.acpo.testbed.policy import BuildReport, PolicySpec, build_policy

__all__ = ["BuildReport", "PolicySpec", "build_policy"]
