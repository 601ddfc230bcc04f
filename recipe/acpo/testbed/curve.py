"""Held-out accuracy against training step, read from verl's metrics JSONL files and plotted with matplotlib.

verl's file logger (``trainer.logger=[...,file]``, path in ``VERL_FILE_LOGGER_PATH``) writes one JSON line per step;
the steps that ran validation (``trainer.test_freq``) carry ``val-core/<data_source>/acc/mean@<n>``. Several files
(Stage 1, then Stage 2, whose step count restarts) are laid end to end.

``python -m recipe.acpo.testbed.curve OUT.png STAGE1.jsonl [STAGE2.jsonl ...]`` writes the plot and prints the points.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from data_prep.cli import module_parser

_VAL_ACC = re.compile(r"^val-core/(?P<source>[^/]+)/acc/mean@\d+$")


def read_rows(path: str | Path) -> list[dict]:
    """The ``data`` dict of every line of a verl metrics JSONL file (blank or broken lines are skipped)."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line)["data"])
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return rows


def accuracy_points(paths: Sequence[str | Path]) -> dict[str, list[tuple[int, float]]]:
    """Per data_source, (step counted over all files in order, validation accuracy) for every validated step."""
    points: dict[str, list[tuple[int, float]]] = {}
    offset = 0
    for path in paths:
        rows = read_rows(path)
        last = 0
        for row in rows:
            step = int(row.get("training/global_step", row.get("step", 0)) or 0)
            last = max(last, step)
            for key, value in row.items():
                match = _VAL_ACC.match(key)
                if match and isinstance(value, int | float):
                    points.setdefault(match["source"], []).append((offset + step, float(value)))
        offset += last
    return points


def plot_accuracy(out: str | Path, paths: Sequence[str | Path], title: str = "held-out accuracy") -> Path:
    """Write the accuracy-against-step plot of ``paths`` to ``out`` (a PNG); stage boundaries are marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for source, series in accuracy_points(paths).items():
        steps, values = zip(*series)
        axes.plot(steps, [100 * v for v in values], marker="o", label=source)
    offset = 0
    for path in list(paths)[:-1]:
        offset += max((int(r.get("training/global_step", 0) or 0) for r in read_rows(path)), default=0)
        axes.axvline(offset, color="grey", linestyle=":", label="next stage")
    axes.set_xlabel("training step")
    axes.set_ylabel("accuracy (%)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=100)
    plt.close(figure)
    return target


def main(argv: Sequence[str] | None = None) -> None:
    parser = module_parser("recipe.acpo.testbed.curve", __doc__)
    parser.add_argument("out", help="the PNG to write")
    parser.add_argument("metrics", nargs="+", help="verl metrics JSONL files, in training order")
    parser.add_argument("--title", default="held-out accuracy", help="plot title")
    args = parser.parse_args(argv)
    missing = [path for path in args.metrics if not Path(path).is_file()]
    if missing:
        parser.exit(2, f"error: no such metrics file: {', '.join(missing)}\n")
    for source, series in accuracy_points(args.metrics).items():
        print(f"{source}: " + ", ".join(f"step {step} {100 * value:.1f}%" for step, value in series))
    print(f"wrote {plot_accuracy(args.out, args.metrics, args.title)}")


if __name__ == "__main__":
    main()
