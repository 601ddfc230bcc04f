"""What one evaluation runs (``recipe.acpo.evaluate``): the inputs checked, the model located, the commands built.

``--model`` is a Hugging Face folder or a verl checkpoint (``global_step_N/actor``, ``global_step_N`` or the
checkpoint root, whose latest step is used; ``recipe.acpo.checkpoints``); a checkpoint is first merged into a
temporary Hugging Face folder with ``python -m recipe.acpo.merge``. The validation run is
``python -m recipe.acpo.main_acpo`` in validation-only mode (``recipe.acpo.validation.command``) with the benchmark
files as validation data and the run's reward manager wrapped to tag each sample with its ``data_source``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recipe.acpo.checkpoints import CheckpointError, find_verl_actor_checkpoint, is_hf_model_folder
from recipe.acpo.validation.acc_at_k import DATA_SOURCE_FIELD, BenchmarkFile, EvaluationError, inspect_benchmark
from recipe.acpo.validation.command import (
    compose_run_config,
    entry_point_command,
    entry_point_env,
    hydra_string,
    tagging_reward_manager_overrides,
    training_size_overrides,
    validation_only_overrides,
)

GPU_CONFIG_NAME = "acpo_trainer"
CPU_CONFIG_NAME = "acpo_cpu"
# The command-line options that decide what is sampled, recorded with the results.
SAMPLING_OPTIONS = ("k", "temperature", "top_p", "top_k", "max_prompt_length", "max_response_length")


def sampling_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling options of the parsed command line (``SAMPLING_OPTIONS``), by name."""
    return {name: getattr(args, name) for name in SAMPLING_OPTIONS}


def merge_command(actor_dir: Path, target_dir: Path) -> list[str]:
    """The project's merge tool turning a verl actor checkpoint into a Hugging Face folder."""
    return [
        sys.executable,
        "-m",
        "recipe.acpo.merge",
        "--checkpoint-dir",
        str(actor_dir.parent.parent),
        "--step",
        actor_dir.parent.name.removeprefix("global_step_"),
        "--target-dir",
        str(target_dir),
    ]


def build_validation_command(
    *,
    model: Path,
    data_files: Sequence[Path],
    k: int,
    temperature: float,
    top_p: float,
    top_k: int,
    max_prompt_length: int,
    max_response_length: int,
    config_name: str,
    dump_dir: Path,
    checkpoint_dir: Path,
    config_overrides: Sequence[str],
    n_gpus: int | None,
    nnodes: int,
    tensor_parallel_size: int | None,
    experiment_name: str,
    extra_overrides: Sequence[str],
) -> list[str]:
    """``python -m recipe.acpo.main_acpo`` in validation-only mode with the benchmark files as validation data."""
    files = [str(path) for path in data_files]
    overrides = [
        # verl builds a training dataloader even when it only validates: a benchmark file serves, nothing trains.
        *validation_only_overrides(
            model=model,
            train_files=files[:1],
            val_files=files,
            k=k,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            dump_dir=dump_dir,
        ),
        f"data.max_prompt_length={max_prompt_length}",
        f"data.max_response_length={max_response_length}",
        f"trainer.default_local_dir={hydra_string(str(checkpoint_dir))}",
        "trainer.project_name=acpo_eval",
        f"trainer.experiment_name={hydra_string(experiment_name)}",
        "trainer.logger=[console,file]",
        # Hydra's own run folder (config and log of the run) beside the results, not in the current directory.
        f"hydra.run.dir={hydra_string(str(dump_dir.parent / 'hydra'))}",
    ]
    if n_gpus is not None:
        overrides += [f"trainer.n_gpus_per_node={n_gpus}", f"trainer.nnodes={nnodes}"]
    if tensor_parallel_size is not None:
        overrides.append(f"actor_rollout_ref.rollout.tensor_model_parallel_size={tensor_parallel_size}")
    # The tool's own settings last: the user's overrides were composed into them (the wrapped reward manager).
    return entry_point_command(config_name, [*overrides, *extra_overrides, *config_overrides])


def _cuda_device_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass
class RunPlan:
    """What one evaluation runs and where it writes."""

    benchmarks: list[BenchmarkFile]
    model: Path
    merge: list[str] | None
    validate: list[str]
    env: dict[str, str]
    output_dir: Path

    @property
    def dump_dir(self) -> Path:
        return self.output_dir / "generations"

    @property
    def metrics_file(self) -> Path:
        return self.output_dir / "verl_metrics.jsonl"

    @property
    def log_file(self) -> Path:
        return self.output_dir / "evaluate.log"


def plan_evaluation(args: argparse.Namespace, work_dir: Path) -> RunPlan:
    """Check the inputs and build the commands; nothing runs yet."""
    model_path = Path(args.model).expanduser().resolve()
    if not model_path.exists():
        raise EvaluationError(f"model not found: {model_path}")
    benchmarks = [inspect_benchmark(path) for path in args.data]
    seen: dict[str, Path] = {}
    for bench in benchmarks:
        for source in bench.problems_per_source:
            if source in seen:
                raise EvaluationError(
                    f"data_source {source!r} is in both {seen[source]} and {bench.path}: one data_source per benchmark"
                )
            seen[source] = bench.path

    merge = None
    if is_hf_model_folder(model_path):
        model = model_path
    else:
        try:
            actor_dir = find_verl_actor_checkpoint(model_path)
        except CheckpointError as err:
            raise EvaluationError(str(err)) from err
        if actor_dir is None:
            raise EvaluationError(
                f"{model_path} is neither a Hugging Face model folder (config.json and weights) nor a verl "
                "checkpoint (global_step_N/actor, global_step_N, or the trainer's checkpoint root)"
            )
        model = work_dir / "merged_model"
        merge = merge_command(actor_dir, model)

    device = "cpu" if args.cpu else args.device
    if device == "auto":
        device = "gpu" if _cuda_device_count() > 0 else "cpu"
    config_name = args.config_name or (CPU_CONFIG_NAME if device == "cpu" else GPU_CONFIG_NAME)
    n_gpus = args.n_gpus if args.n_gpus is not None else (None if device == "cpu" else max(_cuda_device_count(), 1))
    output_dir = Path(args.output_dir).expanduser().resolve()
    run_config = compose_run_config(config_name, args.overrides)
    plan = RunPlan(benchmarks=benchmarks, model=model, merge=merge, validate=[], env={}, output_dir=output_dir)
    plan.validate = build_validation_command(
        model=model,
        data_files=[bench.path for bench in benchmarks],
        **sampling_settings(args),
        config_name=config_name,
        dump_dir=plan.dump_dir,
        checkpoint_dir=work_dir / "unused_checkpoints",
        config_overrides=[
            *tagging_reward_manager_overrides(run_config, tags=[DATA_SOURCE_FIELD]),
            *training_size_overrides(run_config),
        ],
        n_gpus=n_gpus,
        nnodes=args.nnodes,
        tensor_parallel_size=args.tensor_parallel_size,
        experiment_name=args.name or model_path.name,
        extra_overrides=args.overrides,
    )
    plan.env = entry_point_env()
    plan.env["VERL_FILE_LOGGER_PATH"] = str(plan.metrics_file)
    return plan
