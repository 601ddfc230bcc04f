"""The ACPO recipe's entry point: ``python -m recipe.acpo.main_acpo [--config-name NAME] key=value ...``.

Configs live in ``recipe/acpo/config`` (``acpo_trainer``: verl's ``ppo_trainer`` + the ``acpo:`` block, GRPO unless a
stage is added; ``acpo_stage1`` / ``acpo_stage2``: the two ACPO stages; ``acpo_cpu*``: the same on the CPU). Without
``--config-name`` the run is ACPO Stage 1 (``acpo_stage1``); ``--help`` lists the configs and the main keys. Before Ray
starts, ``recipe.acpo.preflight`` checks the run (the ``acpo:`` block, the data files, the model path, the CPU
preset, flash-attn for a ``flash_attention_2`` model, the micro-batch sizes, the reward manager) and stops with a
message naming the file or key at fault.

Ray is then started (its temporary folder is ``ray_kwargs.ray_init._temp_dir``), every worker importing the CPU plugin
(the ``verl_cpu`` package) when ``trainer.device=cpu`` (``VERL_USE_EXTERNAL_MODULES`` / ``VERL_PLATFORM`` in the
runtime environment), and shut down at the end, on an error and on Ctrl-C or SIGTERM, so that no process is left
behind.

``ACPOTaskRunner`` mirrors verl's ``TaskRunnerV1.run``; ``build_trainer`` is the single place that picks the
trainer class it builds, and hands ACPO's trainer the ``acpo:`` block that the checks parsed.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from pprint import pprint
from typing import Any

import hydra
import ray
from omegaconf import DictConfig, OmegaConf

from acpo_core.config import ACPOConfig
from recipe.acpo.config_search_path import CONFIG_DIR
from recipe.acpo.gc_freeze import GC_FREEZE_ENV, freeze_startup_objects, gc_freeze_enabled
from recipe.acpo.preflight import (
    SetupError,
    check_acpo_block,
    check_acpo_trainer,
    check_attention_backend,
    check_data_files,
    check_device,
    check_micro_batch_sizes,
    check_model_path,
    check_reward_manager,
    check_rollout_seed,
    check_trainer_mode,
)

RECIPE_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG_NAME = "acpo_stage1"
# Config files that are not runs of their own (included by the others).
_INCLUDED_CONFIGS = frozenset({"agent_loops"})
# The keys most runs set, with what they take.
MAIN_KEYS: dict[str, str] = {
    "actor_rollout_ref.model.path": "a local Hugging Face model folder (or a hub id)",
    "data.train_files": "train parquet(s) in verl's RL schema (python -m data_prep.cli)",
    "data.val_files": "validation parquet(s)",
    "trainer.total_training_steps": "length of the run (the stage length for acpo_stage1)",
    "trainer.default_local_dir": "checkpoint folder (Stage 2 starts from Stage 1's)",
    "trainer.n_gpus_per_node / trainer.nnodes": "training workers",
    "actor_rollout_ref.rollout.n": "responses per prompt (the GRPO group)",
    "algorithm.adv_estimator": "acpo (the stage configs) or grpo (the plain baseline)",
    "actor_rollout_ref.model.override_config.attn_implementation": (
        "flash_attention_2 (verl's default; needs flash-attn) or sdpa (with actor_rollout_ref.model."
        "use_remove_padding=False; add the key with +)"
    ),
    "acpo.<key>": "the algorithm's settings (docs/algorithm.md; validated before Ray starts)",
    "ray_kwargs.ray_init._temp_dir": "Ray's temporary folder (a private one on a shared machine)",
}


# ----------------------------------------------------------------------------------------------------------------
# Ray
# ----------------------------------------------------------------------------------------------------------------


def activate_cpu_plugin() -> dict[str, str]:
    """Select the CPU platform in this process; return the variables that load the plugin in every Ray worker."""
    from verl_cpu import activate

    return activate()


def worker_env_vars(cpu_run: bool) -> dict[str, str]:
    """Environment of every Ray worker: the recipe importable, the launcher's ``ACPO_GC_FREEZE``
    (:mod:`recipe.acpo.gc_freeze`), checked, and on CPU runs the CPU plugin loaded by verl."""
    python_path = os.pathsep.join(p for p in (str(RECIPE_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {"PYTHONPATH": python_path}
    try:
        env[GC_FREEZE_ENV] = "1" if gc_freeze_enabled(os.environ) else "0"
    except ValueError as err:
        raise SetupError(str(err)) from err
    if cpu_run:
        env.update(activate_cpu_plugin())
    return env


def _drop_none(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in mapping.items() if value is not None}


def ray_init_kwargs(config: DictConfig, env_vars: Mapping[str, str]) -> dict[str, Any]:
    """``ray.init`` arguments: ``ray_kwargs.ray_init`` with verl's runtime environment and ``env_vars`` merged in."""
    from verl.trainer.constants_ppo import get_ppo_ray_runtime_env

    init = OmegaConf.to_container(config.ray_kwargs.get("ray_init", {}), resolve=True)
    runtime_env = OmegaConf.to_container(
        OmegaConf.merge(get_ppo_ray_runtime_env(config), init.pop("runtime_env", None) or {}), resolve=True
    )
    runtime_env = _drop_none(runtime_env)
    runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **env_vars}
    kwargs = _drop_none(init)
    if kwargs.get("_temp_dir"):
        temp_dir = Path(os.path.expanduser(kwargs["_temp_dir"])).resolve()
        temp_dir.mkdir(parents=True, exist_ok=True)
        kwargs["_temp_dir"] = str(temp_dir)
    kwargs["runtime_env"] = runtime_env
    return kwargs


@contextmanager
def ray_session(init_kwargs: Mapping[str, Any]) -> Iterator[None]:
    """Ray for the duration of the run: shut down on exit, error, Ctrl-C and SIGTERM (no process left behind)."""

    def _terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    started_here = not ray.is_initialized()
    try:
        if started_here:
            ray.init(**init_kwargs)
        # Installed after ray.init, which sets a SIGTERM handler of its own that ends the driver without cleanup.
        previous_sigterm = signal.signal(signal.SIGTERM, _terminate)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous_sigterm)
    finally:
        if started_here and ray.is_initialized():
            ray.shutdown()


# ----------------------------------------------------------------------------------------------------------------
# The task runner
# ----------------------------------------------------------------------------------------------------------------


def build_trainer(config: DictConfig, acpo_config: ACPOConfig) -> Any:
    """The trainer the task runner trains with; the one place that picks its class (the hook for a subclass).

    ``algorithm.adv_estimator=acpo`` builds ACPO's trainer (which brings its own actor worker) with ``acpo_config``,
    the ``acpo:`` block :func:`prepare` parsed; anything else builds verl's synchronous V1 trainer.
    """
    from recipe.acpo.advantage_estimator import ACPO_ADV_ESTIMATOR

    if config.algorithm.adv_estimator == ACPO_ADV_ESTIMATOR:
        from recipe.acpo.acpo_trainer import ACPOTrainer

        return ACPOTrainer(config=config, acpo_config=acpo_config)
    from verl.trainer.ppo.v1 import PPOTrainerSync

    return PPOTrainerSync(config=config)


def build_agent_loop_manager(config: DictConfig, trainer: Any) -> Any:
    """verl's TransferQueue agent-loop manager (or ``rollout.agent.agent_loop_manager_class``), as TaskRunnerV1 does,
    with seeded sampling and prompt polling installed on it and the trainer's replay buffer."""
    from verl.trainer.ppo.v1 import AgentLoopManagerTQ
    from verl.utils.import_utils import load_class_from_fqn

    from recipe.acpo.replay_poll import poll_promptly
    from recipe.acpo.seeding import seed_rollouts

    manager_fqn = config.actor_rollout_ref.rollout.get("agent", {}).get("agent_loop_manager_class")
    manager_cls = load_class_from_fqn(manager_fqn, "AgentLoopManager") if manager_fqn else AgentLoopManagerTQ
    manager = manager_cls.create(
        config=config,
        llm_client=trainer.get_llm_client(),
        teacher_client=trainer.get_teacher_client(),
        reward_loop_worker_handles=trainer.get_reward_handles(),
    )
    # Seeded rollouts: every prompt row submitted for generation names its random stream, and batches come back in
    # submission order (recipe/acpo/seeding.py). The trainer notices finished generation within 0.1 s rather than
    # at verl's next 2 s poll (recipe/acpo/replay_poll.py).
    if getattr(trainer, "replay_buffer", None) is not None:
        poll_promptly(trainer.replay_buffer)
    return seed_rollouts(trainer, manager)


@ray.remote(num_cpus=1)
class ACPOTaskRunner:
    """Builds the trainer, the agent-loop manager and the TransferQueue, then trains (verl's TaskRunnerV1.run)."""

    def run(self, config: DictConfig, acpo_config: ACPOConfig) -> None:
        import transfer_queue as tq
        from verl.utils.logging_utils import configure_verl_logging

        configure_verl_logging()
        config.transfer_queue.enable = True
        pprint(OmegaConf.to_container(config, resolve=True))
        OmegaConf.resolve(config)

        tq.init(config.transfer_queue)
        trainer = None
        succeeded = False
        try:
            trainer = build_trainer(config, acpo_config)
            trainer.init()
            agent_loop_manager = build_agent_loop_manager(config, trainer)
            freeze_startup_objects("task runner")
            trainer.fit(agent_loop_manager)
            succeeded = True
        finally:
            try:
                tracking = getattr(trainer, "logger", None)
                if tracking is not None:
                    tracking.finish(exit_code=0 if succeeded else 1)
            finally:
                tq.close()


# ----------------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------------


def prepare(config: DictConfig) -> tuple[ACPOConfig, dict[str, Any]]:
    """Every check that can fail before Ray starts; returns the ``acpo:`` block and the ``ray.init`` arguments."""
    acpo_config = check_acpo_block(config)
    check_acpo_trainer(config, acpo_config)
    check_trainer_mode(config)
    check_rollout_seed(config)
    cpu_run = check_device(config)
    check_attention_backend(config)
    check_model_path(config)
    check_data_files(config)
    env_vars = worker_env_vars(cpu_run)
    os.environ.update(env_vars)  # the local Ray cluster started below inherits them as well

    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    auto_set_device(config)
    check_reward_manager(config)
    use_reference_policy = need_reference_policy(config)
    check_micro_batch_sizes(config, use_reference_policy)
    validate_config(config, use_reference_policy=use_reference_policy, use_critic=need_critic(config))
    return acpo_config, ray_init_kwargs(config, env_vars)


def run(config: DictConfig) -> None:
    """Check the run, start Ray, train, shut Ray down."""
    acpo_config, init_kwargs = prepare(config)
    with ray_session(init_kwargs):
        runner = ACPOTaskRunner.remote()
        ray.get(runner.run.remote(config, acpo_config))


def _config_summary(path: Path) -> str:
    """The first comment line of a config file, which says what it is."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def usage() -> str:
    """``--help``: the configs to pick with ``--config-name`` and the keys most runs set."""
    configs = sorted(p for p in CONFIG_DIR.glob("*.yaml") if p.stem not in _INCLUDED_CONFIGS)
    width = max(len(p.stem) for p in configs) + 2
    lines = [
        "usage: python -m recipe.acpo.main_acpo [--config-name NAME] key=value ...",
        "",
        f"Trains with verl 0.9.1 and the ACPO recipe. Configs (--config-name; default: {DEFAULT_CONFIG_NAME}):",
    ]
    lines += [f"  {p.stem:<{width}}{_config_summary(p)}" for p in configs]
    lines += ["", "Main keys (key=value):"]
    width = max(len(key) for key in MAIN_KEYS) + 2
    lines += [f"  {key:<{width}}{meaning}" for key, meaning in MAIN_KEYS.items()]
    lines += [
        "",
        "Show the composed config without running: --cfg job. Hydra's own options: --hydra-help.",
    ]
    return "\n".join(lines)


@hydra.main(config_path="config", config_name=DEFAULT_CONFIG_NAME, version_base=None)
def main(config: DictConfig) -> None:
    try:
        run(config)
    except SetupError as err:
        print(f"acpo: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("acpo: interrupted; Ray was shut down", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    if any(arg in ("--help", "-h") for arg in sys.argv[1:]):
        print(usage())
        sys.exit(0)
    main()
