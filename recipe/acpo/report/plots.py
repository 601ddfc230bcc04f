"""The report's training plots: matplotlib figures of the run's metrics against step, as embedded PNG data URIs.

A panel is drawn only when the run logged at least one of its metrics; each line only when its metric exists, so a
GRPO run, a Stage-2 run (KL, no curriculum) and a run without validation all get the panels that apply to them.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass

from recipe.acpo.report.load import MetricsData

__all__ = ["PANELS", "Panel", "render_panels"]


@dataclass(frozen=True)
class Panel:
    """One plot: its title, y label and (metric key, legend label) lines. ``pattern`` adds every key it matches in
    full, labelled by its first group."""

    title: str
    ylabel: str
    lines: tuple[tuple[str, str], ...] = ()
    pattern: str | None = None
    stacked_bars: bool = False

    def present_lines(self, keys: set[str]) -> list[tuple[str, str]]:
        lines = [(key, label) for key, label in self.lines if key in keys]
        if self.pattern is not None:
            matches = (re.fullmatch(self.pattern, key) for key in sorted(keys))
            lines += [(match.string, match.group(1)) for match in matches if match]
        return lines


PANELS: tuple[Panel, ...] = (
    Panel("Reward", "mean outcome score", (("critic/score/mean", "score"), ("critic/rewards/mean", "reward"))),
    # verl's val-core/<data_source>/<metric>/mean@<n>: the mean over all samples; with n > 1 verl adds best@n, maj@n
    # and their bootstrap std, which would crowd the panel.
    Panel("Validation accuracy", "mean over samples", pattern=r"val-core/(.+/mean@\d+)"),
    Panel(
        "Entropy",
        "mean token entropy",
        (
            ("actor/entropy", "all"),
            ("acpo/curriculum/hard/entropy", "hard tier"),
            ("acpo/curriculum/normal/entropy", "normal tier"),
        ),
    ),
    Panel("Steps per response", "K", (("acpo/steps_per_response", "steps per response"),)),
    Panel("Helpful fraction", "fraction of steps", (("acpo/helpful_frac", "s > 0"),)),
    Panel(
        "Regimes",
        "fraction of steps",
        (
            ("acpo/regime1_frac", "1: helpful, important"),
            ("acpo/regime2_frac", "2: helpful, minor"),
            ("acpo/regime3_frac", "3: harmful"),
        ),
    ),
    Panel(
        "Attribution gain L_K - L_0",
        "nats",
        (("acpo/attr_gain_correct", "correct"), ("acpo/attr_gain_incorrect", "incorrect"), ("acpo/attr_gain", "all")),
    ),
    Panel("KL loss", "actor/kl_loss", (("actor/kl_loss", "kl_loss"),)),
    Panel(
        "Step time",
        "seconds",
        (
            ("timing_s/gen", "generation"),
            ("timing_s/old_log_prob", "old log-prob"),
            ("timing_s/acpo_segment", "segmentation"),
            ("timing_s/acpo_attribution", "attribution"),
            ("timing_s/acpo_dump", "dump"),
            ("timing_s/update_actor", "update"),
        ),
        stacked_bars=True,
    ),
)


def _figure_png(panel: Panel, metrics: MetricsData, lines: Sequence[tuple[str, str]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    figure, axes = plt.subplots(figsize=(4.6, 3.0), dpi=100)
    try:
        if panel.stacked_bars:
            steps = sorted({s for key, _ in lines for s in metrics.series(key)[0]})
            bottom = [0.0] * len(steps)
            for key, label in lines:
                values = [metrics.by_step[s].get(key, 0.0) for s in steps]
                axes.bar(steps, values, bottom=bottom, label=label, width=0.8)
                bottom = [b + v for b, v in zip(bottom, values)]
        else:
            for key, label in lines:
                steps, values = metrics.series(key)
                axes.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=label)
        axes.set_title(panel.title, fontsize=10)
        axes.set_xlabel("training step", fontsize=8)
        axes.set_ylabel(panel.ylabel, fontsize=8)
        axes.tick_params(labelsize=7)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        # Plain tick labels: an offset ("1e-6 + 1.19e1") hides the values of a nearly flat curve.
        formatter = ScalarFormatter(useOffset=False)
        formatter.set_scientific(False)
        axes.yaxis.set_major_formatter(formatter)
        axes.grid(alpha=0.3)
        if len(lines) > 1 or panel.pattern:
            axes.legend(fontsize=6, loc="best")
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
    finally:
        plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def render_panels(metrics: MetricsData) -> list[tuple[str, str]]:
    """(title, PNG data URI) of every panel the run has metrics for, in :data:`PANELS` order."""
    keys = metrics.keys()
    rendered: list[tuple[str, str]] = []
    for panel in PANELS:
        lines = panel.present_lines(keys)
        if lines:
            rendered.append((panel.title, _figure_png(panel, metrics, lines)))
    return rendered
