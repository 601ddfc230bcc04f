"""A static HTML report of an ACPO run: training curves and the dumped responses with their step credit.

    python -m recipe.acpo.report RUN_DIR -o report.html

See :mod:`recipe.acpo.report.__main__` for how the run's files are found.
"""

from recipe.acpo.report.build import ReportSummary, build_report

__all__ = ["ReportSummary", "build_report"]
