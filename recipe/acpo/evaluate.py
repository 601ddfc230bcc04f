"""Acc@k of a model on math benchmarks, through verl's own validation path.

``python -m recipe.acpo.evaluate --model PATH --data BENCH.parquet [...]`` samples ``k`` responses per problem
(``actor_rollout_ref.rollout.val_kwargs.n = k``) by running the recipe's entry point with
``trainer.val_only=True``, scores them with the recipe's reward, and has verl dump every generation with its
score (``trainer.validation_data_dir``). The results table is computed from that dump, one row per benchmark
(``data_source``) and the macro average over benchmarks:

- Acc@k: the mean accuracy over the k samples of a problem, averaged over the problems (the paper's metric);
- Pass@k: the fraction of problems with at least one correct sample (reported alongside).

A sample's accuracy is its ``acc`` field when the scorer reports one (verl's convention), else its score; it must
lie in [0, 1]. A sample that verl failed to produce counts as wrong, as in verl's own validation metrics.

``--model`` is a Hugging Face folder or a verl checkpoint (``global_step_N/actor``, ``global_step_N`` or the
checkpoint root, whose latest step is used); a checkpoint is first merged into a temporary Hugging Face folder
with ``python -m recipe.acpo.merge``.

The benchmark's ``data_source`` does not reach verl's dump on its own, so the run's reward manager is wrapped
(``recipe.acpo.eval_reward_manager``) to add it to each sample's reward extra info; scoring is unchanged.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from recipe.acpo.validation_run import entry_point_command, hydra_string, validation_only_overrides

DEFAULT_K = 8
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 1.0
DEFAULT_MAX_PROMPT_LENGTH = 1024
DEFAULT_MAX_RESPONSE_LENGTH = 3072
GPU_CONFIG_NAME = "acpo_trainer"
CPU_CONFIG_NAME = "acpo_cpu"
DATA_SOURCE_FIELD = "data_source"
TAGGING_MANAGER_NAME = "DataSourceTaggingRewardManager"
REQUIRED_COLUMNS = ("data_source", "prompt", "reward_model")
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model.safetensors.index.json")
_GLOBAL_STEP = re.compile(r"^global_step_(\d+)$")


class EvaluationError(RuntimeError):
    """The evaluation cannot run or its output is inconsistent; the message names the file or setting."""


# --------------------------------------------------------------------------------------------------------------
# Inputs: benchmark files and the model
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchmarkFile:
    """A benchmark parquet and how many problems it holds per ``data_source``."""

    path: Path
    problems_per_source: dict[str, int]


def inspect_benchmark(path: str | os.PathLike[str]) -> BenchmarkFile:
    """Check that ``path`` is a parquet in verl's RL schema and count its problems per ``data_source``."""
    import pyarrow.parquet as pq

    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise EvaluationError(f"benchmark file not found: {file}")
    try:
        table = pq.read_table(file, columns=None)
    except Exception as err:  # pyarrow raises several types for a file that is not parquet
        raise EvaluationError(f"benchmark file {file} is not a readable parquet file: {err}") from err
    missing = [column for column in REQUIRED_COLUMNS if column not in table.column_names]
    if missing:
        raise EvaluationError(
            f"benchmark file {file} lacks the column(s) {missing}; verl's RL schema needs {list(REQUIRED_COLUMNS)} "
            "(write it with `python -m data_prep.benchmarks`)"
        )
    if table.num_rows == 0:
        raise EvaluationError(f"benchmark file {file} has no rows")
    sources = table.column(DATA_SOURCE_FIELD).to_pylist()
    counts: dict[str, int] = defaultdict(int)
    for row, source in enumerate(sources):
        if not isinstance(source, str) or not source:
            raise EvaluationError(f"benchmark file {file}, row {row}: data_source is {source!r}, expected a name")
        counts[source] += 1
    return BenchmarkFile(path=file, problems_per_source=dict(counts))


def is_hf_model_folder(path: Path) -> bool:
    """A Hugging Face model folder: ``config.json`` and weights."""
    return (path / "config.json").is_file() and any(any(path.glob(pattern)) for pattern in _WEIGHT_PATTERNS)


def find_verl_actor_checkpoint(path: Path) -> Path | None:
    """The ``global_step_N/actor`` folder that ``path`` designates, or None when it is no verl checkpoint.

    Accepted: the actor folder itself, a ``global_step_N`` folder, or the checkpoint root
    (``trainer.default_local_dir``, with ``latest_checkpointed_iteration.txt`` or ``global_step_*`` folders), whose
    latest step is taken.
    """
    if path.name == "actor" and _GLOBAL_STEP.match(path.parent.name):
        return path
    if _GLOBAL_STEP.match(path.name) and (path / "actor").is_dir():
        return path / "actor"
    latest_file = path / "latest_checkpointed_iteration.txt"
    if latest_file.is_file():
        step = latest_file.read_text().strip()
        candidate = path / f"global_step_{step}" / "actor"
        if candidate.is_dir():
            return candidate
    steps = sorted(
        (int(match.group(1)), child)
        for child in (path.iterdir() if path.is_dir() else [])
        if (match := _GLOBAL_STEP.match(child.name)) and (child / "actor").is_dir()
    )
    return steps[-1][1] / "actor" if steps else None


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


# --------------------------------------------------------------------------------------------------------------
# The results table
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchmarkResult:
    """One row of the results table."""

    benchmark: str
    problems: int
    problems_in_data: int | None
    samples: int
    missing_samples: int
    acc_at_k: float
    pass_at_k: float


@dataclass
class EvaluationResult:
    """The table (one row per benchmark, then the macro average) and the settings that produced it."""

    k: int
    rows: list[BenchmarkResult]
    average_acc_at_k: float
    average_pass_at_k: float
    settings: dict[str, Any] = field(default_factory=dict)
    verl_reported: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "benchmarks": [asdict(row) for row in self.rows],
            "average": {"acc_at_k": self.average_acc_at_k, "pass_at_k": self.average_pass_at_k},
            "settings": self.settings,
            "verl_reported": self.verl_reported,
        }

    def to_markdown(self) -> str:
        k = self.k
        lines = [
            f"| Benchmark | Problems | Acc@{k} (%) | Pass@{k} (%) |",
            "|---|---:|---:|---:|",
        ]
        for row in self.rows:
            lines.append(f"| {row.benchmark} | {row.problems} | {100 * row.acc_at_k:.2f} | {100 * row.pass_at_k:.2f} |")
        lines.append(
            f"| **Average** | {sum(row.problems for row in self.rows)} | **{100 * self.average_acc_at_k:.2f}** "
            f"| {100 * self.average_pass_at_k:.2f} |"
        )
        return "\n".join(lines) + "\n"


def read_generations(dump_dir: Path) -> list[dict[str, Any]]:
    """The samples verl dumped to ``trainer.validation_data_dir`` (one JSONL file for a validation-only run)."""
    files = sorted(dump_dir.glob("*.jsonl"))
    if len(files) != 1:
        raise EvaluationError(
            f"expected exactly one generations file in {dump_dir} from a validation-only run, found "
            f"{[f.name for f in files]}"
        )
    samples = []
    with files[0].open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    samples.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise EvaluationError(f"{files[0]}:{line_number}: not JSON: {err}") from err
    if not samples:
        raise EvaluationError(f"{files[0]} holds no samples")
    return samples


def sample_accuracy(sample: dict[str, Any], where: str) -> float:
    """A dumped sample's accuracy: its ``acc`` when the scorer reported one, else its score, in [0, 1]."""
    value = sample.get("acc")
    if value is None:
        value = sample.get("score")
    if isinstance(value, bool):
        value = float(value)
    if not isinstance(value, int | float) or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise EvaluationError(
            f"{where}: accuracy {value!r} is not a number in [0, 1]; the scorer must report 'acc' or a 0/1 score"
        )
    return float(value)


def problem_id(sample: dict[str, Any], where: str) -> str:
    """The problem a dumped sample answers: verl keys samples ``{uid}_{session}_{index}``."""
    key = sample.get("uid")
    if not isinstance(key, str) or not key:
        raise EvaluationError(f"{where}: no 'uid' key in the dumped sample")
    parts = key.rsplit("_", 2)
    return parts[0] if len(parts) == 3 else key


def compute_table(
    samples: Sequence[dict[str, Any]],
    k: int,
    expected_problems: dict[str, int] | None = None,
    where: str = "generations",
) -> EvaluationResult:
    """Acc@k and Pass@k per ``data_source`` from dumped samples, and their macro average over benchmarks.

    Each problem is scored over ``k`` samples: one missing from the dump counts as wrong. With
    ``expected_problems`` (problems per data source in the input files) the rows follow the input's order, a
    benchmark without any dumped sample is an error, and one with fewer problems than its file (verl dropped
    overlong prompts) gets a warning; each row records both counts.
    """
    if k < 1:
        raise EvaluationError(f"k must be >= 1, got {k}")
    per_problem: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for index, sample in enumerate(samples):
        location = f"{where}, sample {index}"
        source = sample.get(DATA_SOURCE_FIELD)
        if not isinstance(source, str) or not source:
            raise EvaluationError(
                f"{location}: no '{DATA_SOURCE_FIELD}' in the dumped sample; the run's reward manager must be "
                f"recipe.acpo.eval_reward_manager.{TAGGING_MANAGER_NAME} (set by this tool)"
            )
        per_problem[source][problem_id(sample, location)].append(sample_accuracy(sample, location))

    names = list(expected_problems) if expected_problems else sorted(per_problem)
    missing_sources = [name for name in names if name not in per_problem]
    if missing_sources:
        raise EvaluationError(f"no generation was dumped for benchmark(s) {missing_sources}")
    unexpected = sorted(set(per_problem) - set(names))
    if unexpected:
        raise EvaluationError(f"the dump holds samples of data sources {unexpected} that no input file has")

    rows = []
    for name in names:
        problems = per_problem[name]
        over = {pid: len(accs) for pid, accs in problems.items() if len(accs) > k}
        if over:
            raise EvaluationError(f"benchmark {name}: more than k={k} samples for problems {over}")
        acc = [sum(accs) / k for accs in problems.values()]
        passed = [any(a > 0 for a in accs) for accs in problems.values()]
        samples_seen = sum(len(accs) for accs in problems.values())
        rows.append(
            BenchmarkResult(
                benchmark=name,
                problems=len(problems),
                problems_in_data=expected_problems[name] if expected_problems else None,
                samples=samples_seen,
                missing_samples=len(problems) * k - samples_seen,
                acc_at_k=sum(acc) / len(acc),
                pass_at_k=sum(passed) / len(passed),
            )
        )
        if expected_problems and len(problems) != expected_problems[name]:
            print(
                f"warning: benchmark {name}: {len(problems)} problems evaluated, {expected_problems[name]} in the "
                "input (overlong prompts filtered by data.filter_overlong_prompts?)",
                file=sys.stderr,
            )
    return EvaluationResult(
        k=k,
        rows=rows,
        average_acc_at_k=sum(row.acc_at_k for row in rows) / len(rows),
        average_pass_at_k=sum(row.pass_at_k for row in rows) / len(rows),
    )


def read_verl_reported(metrics_file: Path, sources: Iterable[str], k: int) -> dict[str, float]:
    """verl's own mean@k per benchmark (``val-core/<source>/acc/mean@k``, else ``reward``) from its file logger."""
    if not metrics_file.is_file():
        return {}
    logged: dict[str, Any] = {}
    for line in metrics_file.read_text(encoding="utf-8").splitlines():
        if line.strip():
            logged.update(json.loads(line).get("data", {}))
    reported = {}
    for source in sources:
        for key in (f"val-core/{source}/acc/mean@{k}", f"val-core/{source}/reward/mean@{k}"):
            if isinstance(logged.get(key), int | float):
                reported[source] = float(logged[key])
                break
    return reported


# --------------------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------------------


def _shell_line(command: Sequence[str]) -> str:
    return "+ " + " ".join(shlex.quote(part) for part in command)


def compose_run_config(config_name: str, overrides: Sequence[str]) -> Any:
    """The run's configuration as ``recipe.acpo.main_acpo`` composes it (a bad override fails here, before Ray)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    import recipe.acpo.main_acpo  # noqa: F401  (registers the search path of verl's packaged configs)

    config_dir = Path(__file__).resolve().parent / "config"
    if not (config_dir / f"{config_name}.yaml").is_file():
        raise EvaluationError(f"no config named {config_name!r} in {config_dir}")
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base=None):
            return compose(config_name=config_name, overrides=list(overrides))
    except HydraException as err:
        raise EvaluationError(f"the overrides do not compose with --config-name {config_name}: {err}") from err


def training_size_overrides(config: Any) -> list[str]:
    """verl checks the micro-batch settings even when it only validates: set those the config leaves unset to 1
    (with dynamic batch sizes verl ignores them)."""
    if config.actor_rollout_ref.actor.get("use_dynamic_bsz"):
        return []
    sections = {
        "actor_rollout_ref.actor": "ppo_micro_batch_size",
        "actor_rollout_ref.rollout": "log_prob_micro_batch_size",
        "actor_rollout_ref.ref": "log_prob_micro_batch_size",
    }
    overrides = []
    for section, key in sections.items():
        node = OmegaConf.select(config, section)
        if node is not None and node.get(key) is None and node.get(f"{key}_per_gpu") is None:
            overrides.append(f"{section}.{key}_per_gpu=1")
    return overrides


def reward_manager_overrides(config: Any) -> list[str]:
    """Overrides that put the run's own reward manager under ``acpo_eval.reward_manager`` and the tagging one in its
    place (``recipe.acpo.eval_reward_manager``: adds each sample's ``data_source`` to verl's validation dump)."""
    spec = OmegaConf.to_container(config.reward.reward_manager, resolve=True)
    if spec.get("name") == TAGGING_MANAGER_NAME:
        raise EvaluationError("reward.reward_manager already is the evaluation's tagging manager")

    def leaves(node: dict[str, Any], prefix: str) -> Iterable[str]:
        for key, value in node.items():
            if key == "_target_":
                continue
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}.{key}")
            else:
                yield f"+{prefix}.{key}=" + ("null" if value is None else hydra_string(str(value)))

    return [
        *leaves(spec, "acpo_eval.reward_manager"),
        "reward.reward_manager.source=importlib",
        f"reward.reward_manager.name={TAGGING_MANAGER_NAME}",
        "reward.reward_manager.module.path=pkg://recipe.acpo.eval_reward_manager",
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


def _run_streaming(command: Sequence[str], env: dict[str, str], log_file: Path, what: str) -> None:
    """Run ``command``, echoing its output to the console and to ``log_file``; fail naming the log."""
    print(_shell_line(command), flush=True)
    with log_file.open("a", encoding="utf-8") as log:
        log.write(_shell_line(command) + "\n")
        log.flush()
        process = subprocess.Popen(
            list(command), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        assert process.stdout is not None
        try:
            for line in process.stdout:
                sys.stdout.write(line)
                log.write(line)
            returncode = process.wait()
        except KeyboardInterrupt:
            # The child shuts its own Ray cluster down on SIGINT: wait for it rather than leave it orphaned.
            process.send_signal(signal.SIGINT)
            process.wait()
            raise
    if returncode != 0:
        raise EvaluationError(f"{what} failed with exit status {returncode}; see {log_file}")


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
        actor_dir = find_verl_actor_checkpoint(model_path)
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
        k=args.k,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_prompt_length=args.max_prompt_length,
        max_response_length=args.max_response_length,
        config_name=config_name,
        dump_dir=plan.dump_dir,
        checkpoint_dir=work_dir / "unused_checkpoints",
        config_overrides=[*reward_manager_overrides(run_config), *training_size_overrides(run_config)],
        n_gpus=n_gpus,
        nnodes=args.nnodes,
        tensor_parallel_size=args.tensor_parallel_size,
        experiment_name=args.name or model_path.name,
        extra_overrides=args.overrides,
    )
    plan.env = dict(os.environ)
    plan.env["VERL_FILE_LOGGER_PATH"] = str(plan.metrics_file)
    # The project root on the path of Ray's workers, so that `recipe.acpo` imports wherever the tool is started.
    project_root = str(Path(__file__).resolve().parents[2])
    plan.env["PYTHONPATH"] = os.pathsep.join(p for p in (project_root, plan.env.get("PYTHONPATH", "")) if p)
    return plan


def evaluate(args: argparse.Namespace) -> EvaluationResult | None:
    """Run the evaluation the parsed command line describes; None for a dry run."""
    work_dir = Path(tempfile.mkdtemp(prefix="acpo_eval_"))
    try:
        plan = plan_evaluation(args, work_dir)
        if args.dry_run:
            for command in (plan.merge, plan.validate):
                if command:
                    print(_shell_line(command))
            return None
        plan.output_dir.mkdir(parents=True, exist_ok=True)
        # Files of an earlier run in the same folder must never be read as this run's.
        shutil.rmtree(plan.dump_dir, ignore_errors=True)
        for stale in (plan.metrics_file, plan.log_file, *(plan.output_dir / f"results.{x}" for x in ("md", "json"))):
            stale.unlink(missing_ok=True)
        started = time.monotonic()
        if plan.merge:
            _run_streaming(plan.merge, plan.env, plan.log_file, "merging the verl checkpoint")
            if not is_hf_model_folder(plan.model):
                raise EvaluationError(f"the merge tool wrote no Hugging Face model to {plan.model}")
        _run_streaming(plan.validate, plan.env, plan.log_file, "verl validation")
        expected = {source: n for bench in plan.benchmarks for source, n in bench.problems_per_source.items()}
        result = compute_table(read_generations(plan.dump_dir), args.k, expected, where=str(plan.dump_dir))
        result.verl_reported = read_verl_reported(plan.metrics_file, [row.benchmark for row in result.rows], args.k)
        for row in result.rows:
            verl_value = result.verl_reported.get(row.benchmark)
            if verl_value is not None and abs(verl_value - row.acc_at_k) > 1e-6:
                print(
                    f"warning: {row.benchmark}: Acc@{args.k} from the dumped samples is {row.acc_at_k:.6f}, "
                    f"verl's own mean@{args.k} is {verl_value:.6f}",
                    file=sys.stderr,
                )
        source_file = {source: str(bench.path) for bench in plan.benchmarks for source in bench.problems_per_source}
        result.settings = {
            "model": str(Path(args.model).expanduser().resolve()),
            "merged_from_verl_checkpoint": plan.merge is not None,
            "data": {row.benchmark: source_file[row.benchmark] for row in result.rows},
            "k": args.k,
            "temperature": args.temperature,
            "top_p": args.top_p,
            "top_k": args.top_k,
            "max_prompt_length": args.max_prompt_length,
            "max_response_length": args.max_response_length,
            "config_name": plan.validate[plan.validate.index("--config-name") + 1],
            "overrides": list(args.overrides),
            "generations": str(plan.dump_dir),
            "wall_time_s": round(time.monotonic() - started, 1),
        }
        (plan.output_dir / "results.json").write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
        (plan.output_dir / "results.md").write_text(result.to_markdown(), encoding="utf-8")
        return result
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m recipe.acpo.evaluate",
        description=(
            "Acc@k (mean accuracy over k samples per problem, averaged over problems) of a model on benchmark "
            "parquets, through verl's validation path (python -m recipe.acpo.main_acpo with trainer.val_only=True). "
            "Writes OUTPUT_DIR/results.md and results.json (one row per benchmark data_source and the macro "
            "average), the generations with their scores (OUTPUT_DIR/generations/*.jsonl), verl's metrics "
            "(verl_metrics.jsonl) and the run's log (evaluate.log)."
        ),
        epilog=(
            "Examples:\n"
            "  python -m recipe.acpo.evaluate --model /models/Qwen2.5-Math-7B --data data/aime2024.parquet "
            "data/math500.parquet --n-gpus 8\n"
            "  python -m recipe.acpo.evaluate --model runs/stage2/global_step_100/actor --data data/amc2023.parquet\n"
            "  python -m recipe.acpo.evaluate --cpu --model /tmp/tiny --data test.parquet --k 2 "
            "--max-response-length 64 data.val_batch_size=8\n"
            "Every positional KEY=VALUE is a Hydra override passed on to recipe.acpo.main_acpo."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        required=True,
        help="a Hugging Face model folder, or a verl checkpoint (global_step_N/actor, global_step_N, or the "
        "checkpoint root for its latest step), which is merged into a temporary folder first",
    )
    parser.add_argument(
        "--data",
        required=True,
        nargs="+",
        metavar="PARQUET",
        help="benchmark parquet file(s) in verl's RL schema (python -m data_prep.benchmarks); each data_source is "
        "one row of the table",
    )
    parser.add_argument("--k", type=int, default=DEFAULT_K, help=f"samples per problem (default {DEFAULT_K})")
    parser.add_argument(
        "--temperature",
        type=float,
        default=DEFAULT_TEMPERATURE,
        help=f"sampling temperature (default {DEFAULT_TEMPERATURE}, the training temperature); 0 = greedy",
    )
    parser.add_argument(
        "--top-p", type=float, default=DEFAULT_TOP_P, help=f"nucleus sampling (default {DEFAULT_TOP_P})"
    )
    parser.add_argument("--top-k", type=int, default=-1, help="top-k sampling, -1 = off (default -1)")
    parser.add_argument(
        "--max-response-length",
        type=int,
        default=DEFAULT_MAX_RESPONSE_LENGTH,
        help=f"generated tokens at most per sample (default {DEFAULT_MAX_RESPONSE_LENGTH})",
    )
    parser.add_argument(
        "--max-prompt-length",
        type=int,
        default=DEFAULT_MAX_PROMPT_LENGTH,
        help=f"prompt tokens at most (default {DEFAULT_MAX_PROMPT_LENGTH})",
    )
    parser.add_argument(
        "--output-dir", default="eval_results", help="where the table, generations and log go (default eval_results)"
    )
    parser.add_argument("--name", help="experiment name in verl's logs (default: the model folder's name)")
    parser.add_argument(
        "--device",
        choices=["auto", "gpu", "cpu"],
        default="auto",
        help=f"auto (default): cpu when no CUDA device is visible; cpu composes the {CPU_CONFIG_NAME} preset",
    )
    parser.add_argument("--cpu", action="store_true", help="same as --device cpu")
    parser.add_argument(
        "--config-name",
        help=f"the recipe config to compose (default {GPU_CONFIG_NAME} on GPU, {CPU_CONFIG_NAME} on CPU)",
    )
    parser.add_argument("--n-gpus", type=int, help="GPUs per node (default: all visible; ignored on CPU)")
    parser.add_argument("--nnodes", type=int, default=1, help="nodes (default 1)")
    parser.add_argument("--tensor-parallel-size", type=int, help="vLLM tensor parallel size (default: the config's)")
    parser.add_argument("--dry-run", action="store_true", help="check the inputs and print the commands only")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Hydra overrides for recipe.acpo.main_acpo")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.k < 1:
        parser.error(f"--k must be >= 1, got {args.k}")
    if args.temperature < 0:
        parser.error(f"--temperature must be >= 0, got {args.temperature}")
    bad = [o for o in args.overrides if "=" not in o and not o.startswith("~")]
    if bad:
        parser.error(f"not a Hydra override (KEY=VALUE): {bad}")
    try:
        result = evaluate(args)
    except EvaluationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if result is not None:
        print()
        print(result.to_markdown())
        out = Path(args.output_dir).expanduser().resolve()
        print(f"results: {out / 'results.md'}, {out / 'results.json'}; generations: {out / 'generations'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
