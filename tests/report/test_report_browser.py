"""The report rendered by a real browser (headless Chromium): the DOM it produces, not the HTML we wrote.

The page writes ``data-report-ready`` on <html> when its script finished and ``data-script-error`` when any script
failed; ``#browser`` carries ``data-matching`` (responses passing the filters) and ``data-rendered`` (on this page).
Filters and the page are set through the URL hash. Needs Debian's ``chromium`` (``.ci/run`` installs it); where it
is absent the tests are skipped, except under ``ACPO_REQUIRE_BROWSER=1`` (CI), where that is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

from recipe.acpo.report import build_report
from recipe.acpo.step_dump import write_step_records

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and os.environ.get("ACPO_REQUIRE_BROWSER") == "1":
    raise RuntimeError("ACPO_REQUIRE_BROWSER=1 but no chromium on PATH: apt-get install -y chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium (Debian package 'chromium') not installed")


@dataclass
class RenderedDom:
    """What the browser's DOM holds: element counts by class, and the attributes the page sets."""

    classes: dict[str, int] = field(default_factory=dict)
    tags: dict[str, int] = field(default_factory=dict)
    html_attrs: dict[str, str] = field(default_factory=dict)
    browser_attrs: dict[str, str] = field(default_factory=dict)
    response_classes: list[str] = field(default_factory=list)


class _DomReader(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.dom = RenderedDom()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.dom.tags[tag] = self.dom.tags.get(tag, 0) + 1
        if tag == "html":
            self.dom.html_attrs = values
        if values.get("id") == "browser":
            self.dom.browser_attrs = values
        classes = values.get("class", "").split()
        for name in classes:
            self.dom.classes[name] = self.dom.classes.get(name, 0) + 1
        if "response" in classes:
            self.dom.response_classes.append(values["class"])


def dump_dom(page: Path, fragment: str = "") -> RenderedDom:
    """Load the page (optionally with #fragment) in headless Chromium and read the DOM it dumps."""
    url = page.resolve().as_uri() + (f"#{fragment}" if fragment else "")
    command = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--dump-dom", url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    reader = _DomReader()
    reader.feed(done.stdout)
    return reader.dom


def render(page: Path, fragment: str = "") -> RenderedDom:
    """:func:`dump_dom` of a page whose script ran to its end without an error."""
    dom = dump_dom(page, fragment)
    assert "data-script-error" not in dom.html_attrs, dom.html_attrs.get("data-script-error")
    assert dom.html_attrs.get("data-report-ready") == "1", "the page's script did not finish"
    return dom


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for p in sorted(path.glob("step_*.jsonl")) for line in p.read_text().splitlines()]


def test_browser_renders_every_response_with_its_steps_and_plots(fake_run) -> None:
    run = fake_run(steps=2, per_step=5)
    dump_dir = run / "ckpt" / "acpo_dump"
    records = _records(dump_dir)
    # Text that would end the data <script> or inject markup if it were not escaped.
    records[0]["tokens"][0] = "</script><b>bold</b>"
    write_step_records([r for r in records if r["global_step"] == 1], str(dump_dir), 1)
    summary = build_report(run / "report.html", run)
    dom = render(run / "report.html")
    assert dom.browser_attrs["data-matching"] == dom.browser_attrs["data-rendered"] == "10"
    assert dom.classes["response"] == 10
    assert dom.classes["step"] == sum(len(r["steps"]) for r in records)
    assert dom.classes["tok"] == sum(len(r["tokens"]) for r in records)
    assert dom.classes["marker"] == sum(sum(r["marker_boundary"]) for r in records)
    assert dom.classes.get("correct", 0) >= 5 and dom.classes.get("wrong", 0) >= 5
    assert "b" not in dom.tags  # the injected <b> stayed text
    assert summary.plots > 0


def test_filters_and_pages_select_what_the_url_hash_asks_for(fake_run) -> None:
    run = fake_run(steps=3, per_step=4)
    records = _records(run / "ckpt" / "acpo_dump")
    build_report(run / "report.html", run, page_size=5)
    wrong = render(run / "report.html", "outcome=wrong")
    assert wrong.browser_attrs["data-matching"] == str(sum(not r["correct"] for r in records))
    assert wrong.response_classes and all("wrong" in c.split() for c in wrong.response_classes)
    step2 = render(run / "report.html", "step=2&outcome=correct")
    assert step2.browser_attrs["data-matching"] == str(sum(r["correct"] and r["global_step"] == 2 for r in records))
    last_page = render(run / "report.html", "page=3&open=11.0")
    assert (last_page.browser_attrs["data-matching"], last_page.browser_attrs["data-rendered"]) == ("12", "2")
    # open=11.0 clicked the first step of the last response: its table of steps is shown, that step's row selected.
    assert last_page.classes["selected"] == 2  # the step's box and its table row
    assert last_page.tags["tr"] == len(records[11]["steps"]) + 1


def test_thousands_of_responses_render_one_page_at_a_time(fake_run) -> None:
    run = fake_run(steps=3, per_step=1000)
    summary = build_report(run / "report.html", run)
    dom = render(run / "report.html", "page=40")
    assert summary.responses == 3000
    assert (dom.browser_attrs["data-matching"], dom.browser_attrs["data-rendered"]) == ("3000", "25")
    assert dom.classes["response"] == 25


def test_a_run_without_a_dump_renders_its_plots_and_no_responses(fake_run) -> None:
    run = fake_run(steps=2, dump=False)
    build_report(run / "report.html", run)
    dom = render(run / "report.html")
    assert dom.classes.get("response", 0) == 0 and dom.classes["plots"] == 1
    assert dom.classes["empty"] == 1  # the "no step dump" note


def test_a_script_error_is_seen_in_the_dumped_dom(fake_run) -> None:
    run = fake_run(steps=1, per_step=2)
    build_report(run / "report.html", run)
    page = (run / "report.html").read_text(encoding="utf-8")
    start = page.index('id="acpo-data">') + len('id="acpo-data">')
    (run / "broken.html").write_text(page[:start] + "{not json" + page[page.index("</script>", start) :])
    dom = dump_dom(run / "broken.html")
    assert "JSON" in dom.html_attrs.get("data-script-error", "") or "json" in dom.html_attrs["data-script-error"]
    assert "data-report-ready" not in dom.html_attrs


def test_the_first_wrong_equation_of_a_testbed_response_is_marked_on_the_page(tmp_path: Path) -> None:
    tokens = ["First", ",", " 16", " -", " 11", " =", " 5", ".\n", "Then", ",", " 5", " *", " 3", " =", " 16", ".\n"]
    tokens += ["Answer", ":", " 16"]
    steps = [
        {"start": a, "end": b, "C": c, "s": c, "u": 0.5, "w": 1.0, "regime": 1 if c > 0 else 3, "a_attr": 0.8 * c}
        for a, b, c in ((0, 8, 0.5), (8, 16, -1.5), (16, 19, -0.2))
    ]
    record = {
        "global_step": 1,
        "uid": "q",
        "data_source": "arithmetic_steps",
        "stage": 1,
        "prompt": "Start from 16.",
        "response": "".join(tokens),
        "tokens": tokens,
        "entropy": [0.5] * 19,
        "boundaries": [0, 8, 16, 19],
        "marker_boundary": [True, False],
        "score": 0.0,
        "correct": False,
        "ground_truth": "15",
        "a_base": -0.8,
        "steps": steps,
        "token_advantages": [-0.8] * 19,
    }
    write_step_records([record], str(tmp_path / "acpo_dump"), 1)
    build_report(tmp_path / "report.html", tmp_path)
    dom = render(tmp_path / "report.html")
    assert dom.classes["first-wrong"] == 5  # " 5", " *", " 3", " =", " 16" of step 2
    assert dom.classes["hit"] == 1 and "miss" not in dom.classes  # the most-blamed step is the wrong one
