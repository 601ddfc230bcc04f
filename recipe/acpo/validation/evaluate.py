"""Acc@k of a model on math benchmarks, through verl's own validation path.

``python -m recipe.acpo.evaluate --model PATH --data BENCH.parquet [...]`` samples ``k`` responses per problem
(``actor_rollout_ref.rollout.val_kwargs.n = k``) by running the recipe's entry point with
``trainer.val_only=True``, scores them with the recipe's reward, and has verl dump every generation with its
score (``trainer.validation_data_dir``). The results table is computed from that dump, one row per benchmark
(``data_source``) and the macro average over benchmarks:

- Acc@k: the mean accuracy over the k samples of a problem, averaged over the problems (the paper's metric);
- Pass@k: the fraction of problems with at least one correct sample (reported alongside).

A sample's accuracy is its ``acc`` field when the scorer reports one (verl's convention), else its score; it must
lie in [0, 1], and the sample is correct above 0 (the rule the pass-rate pre-pass uses too). A sample that verl failed
to produce counts as wrong, as in verl's own validation metrics.

``--model`` is a Hugging Face folder or a verl checkpoint (``global_step_N/actor``, ``global_step_N`` or the
checkpoint root, whose latest step is used); a checkpoint is first merged into a temporary Hugging Face folder
with ``python -m recipe.acpo.merge``.

The benchmark's ``data_source`` does not reach verl's dump on its own, so the run's reward manager is wrapped
(``recipe.acpo.validation.tagging_reward_manager``) to add it to each sample's reward extra info; scoring is unchanged.

The parts: ``recipe.acpo.validation.acc_at_k`` (the benchmark files and the table),
``recipe.acpo.validation.eval_plan`` (the model located, the merge and validation commands), and what the
evaluation shares with the pass-rate pre-pass: ``recipe.acpo.validation.command`` (the validation pass),
``recipe.acpo.validation.runner`` (the steps run and logged) and ``recipe.acpo.validation.generations`` (the dump read
back, the correctness rule). This module runs them and is the command line, run as ``python -m recipe.acpo.evaluate``
(the path README and ``examples/`` name).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from recipe.acpo.checkpoints import find_verl_actor_checkpoint, is_hf_model_folder
from recipe.acpo.validation.acc_at_k import (
    EvaluationError,
    EvaluationResult,
    compute_table,
    inspect_benchmark,
    read_verl_reported,
)
from recipe.acpo.validation.command import ValidationRunError
from recipe.acpo.validation.eval_plan import (
    CPU_CONFIG_NAME,
    GPU_CONFIG_NAME,
    build_validation_command,
    plan_evaluation,
    sampling_settings,
)
from recipe.acpo.validation.generations import read_generations
from recipe.acpo.validation.runner import run_logged, shell_line

# Public names of the tool, importable from here as before its parts were split out.
__all__ = [
    "EvaluationError",
    "EvaluationResult",
    "build_parser",
    "build_validation_command",
    "compute_table",
    "evaluate",
    "find_verl_actor_checkpoint",
    "inspect_benchmark",
    "main",
]

DEFAULT_K = 8
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 1.0
DEFAULT_MAX_PROMPT_LENGTH = 1024
DEFAULT_MAX_RESPONSE_LENGTH = 3072


def evaluate(args: argparse.Namespace) -> EvaluationResult | None:
    """Run the evaluation the parsed command line describes; None for a dry run."""
    work_dir = Path(tempfile.mkdtemp(prefix="acpo_eval_"))
    try:
        plan = plan_evaluation(args, work_dir)
        if args.dry_run:
            for command in (plan.merge, plan.validate):
                if command:
                    print(shell_line(command))
            return None
        plan.output_dir.mkdir(parents=True, exist_ok=True)
        # Files of an earlier run in the same folder must never be read as this run's.
        shutil.rmtree(plan.dump_dir, ignore_errors=True)
        for stale in (plan.metrics_file, plan.log_file, *(plan.output_dir / f"results.{x}" for x in ("md", "json"))):
            stale.unlink(missing_ok=True)
        started = time.monotonic()
        if plan.merge:
            run_logged(plan.merge, plan.env, plan.log_file, "merging the verl checkpoint")
            if not is_hf_model_folder(plan.model):
                raise EvaluationError(f"the merge tool wrote no Hugging Face model to {plan.model}")
        run_logged(plan.validate, plan.env, plan.log_file, "verl validation")
        expected = {source: n for bench in plan.benchmarks for source, n in bench.problems_per_source.items()}
        generations = read_generations(plan.dump_dir)
        result = compute_table(generations.samples, args.k, expected, where=str(generations.file))
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
            **sampling_settings(args),
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
    except ValidationRunError as err:
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
