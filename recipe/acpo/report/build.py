"""Assemble the report: one self-contained static HTML file (plots as embedded PNG, data and script inline).

Nothing is fetched at view time (no CDN, no network): the file opens from disk in any browser. The response browser
(``assets/report.js``) keeps only one page of responses in the DOM, so dumps of thousands of responses stay usable.
"""

from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recipe.acpo.report.load import (
    DumpData,
    MetricsData,
    find_dump_dir,
    find_metrics_file,
    read_dump,
    read_metrics,
)
from recipe.acpo.report.plots import render_panels
from recipe.acpo.testbed.slips import annotate_first_wrong

__all__ = ["ReportSummary", "build_report"]

ASSETS = Path(__file__).with_name("assets")
DEFAULT_PAGE_SIZE = 25
# Fields the page does not need: the response text is the concatenation of the tokens.
_NOT_EMBEDDED = ("response",)


@dataclass
class ReportSummary:
    """What went into a report, for the CLI to print and tests to check."""

    output: Path
    metrics_file: Path | None
    metrics_steps: int
    metrics_skipped_lines: int
    dump_dir: Path | None
    responses: int
    dump_skipped_lines: int
    plots: int
    first_wrong_marked: int


def _finite(value: Any) -> Any:
    """The value with every non-finite float replaced by None (JSON.parse rejects NaN and Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def _percentile_scale(values: list[float], quantile: float = 0.95) -> float:
    """A robust colour-scale maximum: the quantile of the values' magnitudes (1.0 when there is none above 0)."""
    magnitudes = sorted(abs(v) for v in values if isinstance(v, int | float) and math.isfinite(v) and v != 0)
    if not magnitudes:
        return 1.0
    return magnitudes[min(int(quantile * len(magnitudes)), len(magnitudes) - 1)]


def _embedded_data(records: list[dict[str, Any]], page_size: int) -> str:
    attributed = [s.get("a_attr", 0.0) for r in records for s in r["steps"]]
    entropies = [h for r in records for h in r.get("entropy", [])]
    payload = {
        "records": [_finite({k: v for k, v in r.items() if k not in _NOT_EMBEDDED}) for r in records],
        "attr_scale": _percentile_scale(attributed),
        "entropy_scale": _percentile_scale(entropies),
        "page_size": page_size,
    }
    # Inside <script>, '<' could close the element: JSON allows it escaped.
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


def _plots_html(panels: list[tuple[str, str]], metrics: MetricsData) -> str:
    if not panels:
        reason = "no metrics file found" if metrics.path is None else "the metrics file holds no known metric"
        return f'<p class="empty">No training curves: {html.escape(reason)}.</p>'
    figures = [
        f'<figure><img alt="{html.escape(title)}" title="{html.escape(title)}" src="{uri}"></figure>'
        for title, uri in panels
    ]
    return '<div class="plots">' + "".join(figures) + "</div>"


def _summary_html(summary: ReportSummary, run_dir: Path | None) -> str:
    def code(path: Path | None) -> str:
        return f"<code>{html.escape(str(path))}</code>" if path is not None else "none found"

    parts = [f"run {code(run_dir)}"] if run_dir is not None else []
    parts.append(f"metrics {code(summary.metrics_file)} ({summary.metrics_steps} steps)")
    parts.append(f"dump {code(summary.dump_dir)} ({summary.responses} responses)")
    skipped = summary.metrics_skipped_lines + summary.dump_skipped_lines
    if skipped:
        parts.append(
            f'<span class="warn">skipped {summary.metrics_skipped_lines} metrics and '
            f"{summary.dump_skipped_lines} dump lines that were empty, truncated or malformed</span>"
        )
    if summary.first_wrong_marked:
        parts.append(f"first wrong equation marked in {summary.first_wrong_marked} responses")
    return " &middot; ".join(parts)


def build_report(
    output: Path,
    run_dir: Path | None = None,
    metrics_file: Path | None = None,
    dump_dir: Path | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
    title: str | None = None,
) -> ReportSummary:
    """Write the report of a run to ``output``; explicit ``metrics_file`` / ``dump_dir`` win over discovery.

    Raises ``FileNotFoundError`` when neither a metrics file nor a dump is found, or a given path does not exist.
    """
    for given in (run_dir, metrics_file, dump_dir):
        if given is not None and not given.exists():
            raise FileNotFoundError(f"{given} does not exist")
    if metrics_file is None and run_dir is not None:
        metrics_file = find_metrics_file(run_dir)
    if dump_dir is None and run_dir is not None:
        dump_dir = find_dump_dir(run_dir)
    if metrics_file is None and dump_dir is None:
        raise FileNotFoundError(
            f"no metrics JSONL (verl's file logger, VERL_FILE_LOGGER_PATH) and no step dump (acpo.dump) under "
            f"{run_dir}; pass --metrics FILE and/or --dump DIR"
        )
    metrics = read_metrics(metrics_file) if metrics_file is not None else MetricsData()
    dump = read_dump(dump_dir) if dump_dir is not None else DumpData()
    marked = annotate_first_wrong(dump.records)
    panels = render_panels(metrics)
    summary = ReportSummary(
        output=output,
        metrics_file=metrics_file,
        metrics_steps=len(metrics.by_step),
        metrics_skipped_lines=metrics.skipped_lines,
        dump_dir=dump_dir,
        responses=len(dump.records),
        dump_skipped_lines=dump.skipped_lines,
        plots=len(panels),
        first_wrong_marked=marked,
    )
    title = title or f"ACPO run report: {(run_dir or dump_dir or metrics_file).resolve().name}"
    no_dump = (
        "No step dump in this run (enable it with acpo.dump.enable=True)."
        if dump_dir is None
        else "The dump holds no readable response."
    )
    page = (ASSETS / "report.html").read_text(encoding="utf-8")
    replacements = {
        "{{TITLE}}": html.escape(title),
        "{{CSS}}": (ASSETS / "report.css").read_text(encoding="utf-8"),
        "{{SUMMARY}}": _summary_html(summary, run_dir),
        "{{PLOTS}}": _plots_html(panels, metrics),
        "{{NO_DUMP}}": html.escape(no_dump),
        "{{JS}}": (ASSETS / "report.js").read_text(encoding="utf-8"),
        "{{DATA}}": _embedded_data(dump.records, page_size),
    }
    # One pass: text that is filled in (a prompt, a path) is never searched for placeholders itself.
    page = re.sub(r"\{\{[A-Z_]+\}\}", lambda match: replacements[match.group(0)], page)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(page, encoding="utf-8")
    return summary
