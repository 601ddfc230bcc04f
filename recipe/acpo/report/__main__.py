"""``python -m recipe.acpo.report RUN_DIR -o report.html``: build the static HTML report of a run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from recipe.acpo.report.build import DEFAULT_PAGE_SIZE, build_report

DESCRIPTION = """\
Build one self-contained HTML file (no network needed; open it from disk) from what an ACPO run leaves:

  metrics  verl's file logger output (trainer.logger=[console,file]; the path is VERL_FILE_LOGGER_PATH, by default
           <VERL_FILE_LOGGER_ROOT or .>/<project>/<experiment>.jsonl), lines {"step": N, "data": {...}}.
           Found as RUN_DIR/metrics.jsonl, else the newest such *.jsonl under RUN_DIR.
  dump     the step dump (acpo.dump.enable=True; acpo.dump.dir, by default <trainer.default_local_dir>/acpo_dump),
           files step_<global_step>.jsonl. Found as RUN_DIR/acpo_dump, else the shallowest folder under RUN_DIR
           holding step_*.jsonl files.

--metrics and --dump override the discovery (RUN_DIR may then be omitted). A run without a dump gets the plots
only; empty, truncated or malformed lines are skipped and counted in the report's header.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recipe.acpo.report",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", nargs="?", type=Path, help="the run's output folder (searched for both inputs)")
    parser.add_argument("-o", "--output", type=Path, help="the HTML file to write [RUN_DIR/report.html]")
    parser.add_argument("--metrics", type=Path, help="verl's metrics JSONL (overrides discovery)")
    parser.add_argument("--dump", type=Path, help="the folder of step_*.jsonl dump files (overrides discovery)")
    parser.add_argument("--page-size", type=int, default=DEFAULT_PAGE_SIZE, help="responses per page [%(default)s]")
    parser.add_argument("--title", help="the page title [ACPO run report: <run folder name>]")
    args = parser.parse_args(argv)
    if args.run_dir is None and args.metrics is None and args.dump is None:
        parser.error("give RUN_DIR, or --metrics and/or --dump")
    if args.page_size < 1:
        parser.error("--page-size must be >= 1")
    output = args.output or (args.run_dir or Path(".")) / "report.html"
    try:
        summary = build_report(output, args.run_dir, args.metrics, args.dump, args.page_size, args.title)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"metrics: {summary.metrics_file or 'none'} ({summary.metrics_steps} steps, {summary.plots} plots)")
    print(f"dump:    {summary.dump_dir or 'none'} ({summary.responses} responses)")
    skipped = summary.metrics_skipped_lines + summary.dump_skipped_lines
    if skipped:
        print(f"skipped {skipped} empty, truncated or malformed lines", file=sys.stderr)
    if summary.first_wrong_marked:
        print(f"first wrong equation marked in {summary.first_wrong_marked} responses")
    print(f"report:  {output.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
