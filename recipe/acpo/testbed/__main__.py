"""``python -m recipe.acpo.testbed {build,data,forecast} DIR``: the CPU testbed's policy, RL data, forecasts.

``build`` trains the testbed policy (a ~0.5M-parameter Llama with its own tokenizer, fine-tuned on step-by-step
solutions some of whose lines are hasty and slip; deterministic for a seed; about 3 minutes on 2 cores) into a
Hugging Face folder and prints its held-out accuracy; ``data`` writes the RL train and validation parquet files of
the task (data_source arithmetic_steps); ``forecast`` measures how well a built policy forecasts its final answer
from prefixes of its own responses after a cue (``recipe.acpo.testbed.forecast``).

Example: ``python -m recipe.acpo.testbed build /tmp/testbed/policy &&
python -m recipe.acpo.testbed data /tmp/testbed/data --num-train 512 --num-val 64``
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from data_prep.cli import module_parser
from data_prep.schema import DataError
from recipe.acpo.testbed.task import add_task_arguments, task_spec, write_dataset

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_parser() -> argparse.ArgumentParser:
    from recipe.acpo.testbed.demonstrations import HASTY_RELATIONS
    from recipe.acpo.testbed.policy import PolicySpec

    parser = module_parser("recipe.acpo.testbed", __doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    default = PolicySpec()
    build = commands.add_parser("build", help="train the policy into OUT_DIR (a Hugging Face model folder)")
    build.add_argument("out_dir", help="folder to write (created if missing)")
    build.add_argument("--seed", type=int, default=0, help="seed of the problems, tokenizer, weights and order")
    build.add_argument("--sft-steps", type=int, default=default.sft_steps, help="fine-tuning steps (%(default)s)")
    build.add_argument(
        "--hasty-rate",
        type=float,
        default=default.hasty_rate,
        help="share of the demonstrations' lines written hastily (%(default)s; 0: reference solutions only)",
    )
    build.add_argument(
        "--slip-rate",
        type=float,
        default=default.slip_rate,
        help="share of hasty lines whose result is off by 1 or 2 (%(default)s)",
    )
    build.add_argument(
        "--hasty-relation",
        choices=HASTY_RELATIONS,
        default=default.hasty_relation,
        help="the sign a hasty line writes before its result (%(default)s; '=' builds the second policy of "
        "docs/learning.md)",
    )
    build.add_argument(
        "--probe-rate",
        type=float,
        default=default.probe_rate,
        help="probe examples per demonstration mixed into fine-tuning: a demonstration's first lines, the probe cue "
        "and the final value those lines commit to, the loss on the value only; they teach the policy to forecast "
        "its answer from any prefix, as ACPO's attribution asks (%(default)s: none, the build as without the "
        "option; 1: as many probes as demonstrations)",
    )
    build.add_argument(
        "--probe-cue",
        default=default.probe_cue,
        help="the text a probe puts before the forecast value; use it, with ' {answer}', as ACPO's "
        "answer_template with a policy built with probes (%(default)r)",
    )
    build.add_argument("--hidden-size", type=int, default=default.hidden_size, help="model width (%(default)s)")
    build.add_argument("--num-layers", type=int, default=default.num_layers, help="model depth (%(default)s)")
    build.add_argument(
        "--eval-problems", type=int, default=default.eval_problems, help="held-out problems measured (%(default)s)"
    )
    build.add_argument("--threads", type=int, default=default.num_threads, help="torch threads (%(default)s)")
    add_task_arguments(build)
    data = commands.add_parser("data", help="write the RL train/val parquet files into OUT_DIR")
    data.add_argument("out_dir", help="folder for the parquet files")
    data.add_argument("--num-train", type=int, default=1024, help="training problems (%(default)s)")
    data.add_argument("--num-val", type=int, default=128, help="validation problems (%(default)s)")
    data.add_argument("--seed", type=int, default=0, help="random seed (%(default)s)")
    add_task_arguments(data)
    forecast = commands.add_parser(
        "forecast", help="measure a built policy's greedy forecast of its answer after a cue, by operations left"
    )
    forecast.add_argument("policy_dir", help="a folder written by build")
    forecast.add_argument(
        "--cue",
        action="append",
        help="the text before the forecast value (repeatable; default: the folder's probe cue and 'Answer:')",
    )
    forecast.add_argument(
        "--eval-problems", type=int, default=None, help="held-out problems sampled (default: the build's count)"
    )
    forecast.add_argument(
        "--seed", type=int, default=None, help="seed of the problems and samples (default: the build's)"
    )
    return parser


def forecast_command(args: argparse.Namespace) -> None:
    """``forecast``: print each cue's forecast table (recipe.acpo.testbed.forecast) and the whole result as JSON."""
    import json
    from pathlib import Path

    from recipe.acpo.testbed.forecast import TEMPLATE_CUE, forecast_policy, format_forecast
    from recipe.acpo.testbed.policy import REPORT_FILE

    cues = args.cue
    if not cues:
        report = json.loads((Path(args.policy_dir) / REPORT_FILE).read_text(encoding="utf-8"))
        cues = list(dict.fromkeys((report["policy"].get("probe_cue", "Answer now:"), TEMPLATE_CUE)))
    result = forecast_policy(args.policy_dir, cues, args.eval_problems, args.seed)
    for cue in cues:
        print(f"{cue!r} written in {result['cue_emitted'][cue]} of {result['eval_problems']} responses")
        print(format_forecast(cue, result["forecast"][cue]))
    print(json.dumps(result))


def main(argv: Sequence[str] | None = None) -> None:
    from dataclasses import replace

    from recipe.acpo.testbed.policy import PolicySpec, build_policy

    parser = build_parser()
    args = parser.parse_args(argv)
    for rate in ("hasty_rate", "slip_rate"):
        if args.command == "build" and not 0.0 <= getattr(args, rate) <= 1.0:
            parser.error(f"--{rate.replace('_', '-')} must lie in [0, 1], got {getattr(args, rate)}")
    if args.command == "build" and not 0.0 <= args.probe_rate < float("inf"):
        parser.error(f"--probe-rate must be a number >= 0, got {args.probe_rate}")
    if args.command == "build" and not args.probe_cue.strip():
        parser.error(f"--probe-cue must be non-empty, got {args.probe_cue!r}")
    if args.command == "forecast":
        forecast_command(args)
        return
    try:
        task = task_spec(args)
        if args.command == "data":
            train, val = write_dataset(args.out_dir, args.num_train, args.num_val, task, args.seed)
            print(f"wrote {train}" + (f" and {val}" if val else ""))
            return
        policy = replace(
            PolicySpec(),
            sft_steps=args.sft_steps,
            hasty_rate=args.hasty_rate,
            slip_rate=args.slip_rate,
            hasty_relation=args.hasty_relation,
            probe_rate=args.probe_rate,
            probe_cue=args.probe_cue,
            hidden_size=args.hidden_size,
            num_layers=args.num_layers,
            eval_problems=args.eval_problems,
            num_threads=args.threads,
        )
        report = build_policy(args.out_dir, seed=args.seed, task=task, policy=policy)
    except DataError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(f"wrote the testbed policy to {report.out_dir}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
