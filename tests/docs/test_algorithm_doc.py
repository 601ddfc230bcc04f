"""docs/algorithm.md: every section mark (``§N``, ``§N.M``, ``§N-M``) cited in the project names one of its headings.

The project's files are its ``.py``, ``.yaml``, ``.sh`` and ``.md`` files outside ``tests/`` (git's view of the
checkout: tracked files and untracked ones that are not ignored; a plain directory walk without git).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "algorithm.md"
SUFFIXES = (".py", ".yaml", ".sh", ".md")
# Folders never scanned by the fallback walk: tests, caches, environments and run outputs.
SKIPPED_DIRS = {"tests", "__pycache__", "venv", "outputs", "build", "dist", "node_modules", "wandb", "checkpoints"}
TOP_SECTIONS = list(range(10))

# "§4", "§2.4", "§4-5", "§3-§4", "§2.1-3" (= §2.1 to §2.3); "§6/§8" is two citations.
CITATION = re.compile(r"§\s?(\d+)(?:\.(\d+))?(?:\s?[-–]\s?§?\s?(\d+)(?:\.(\d+))?)?")
HEADING = re.compile(r"^#{1,6}\s+§(\d+)(?:\.(\d+))?\s", re.MULTILINE)

Section = tuple[int, int | None]


def cited_sections(text: str) -> list[Section]:
    """The sections a text cites, ranges expanded: ``(N, None)`` for ``§N``, ``(N, M)`` for ``§N.M``."""
    sections: list[Section] = []
    for match in CITATION.finditer(text):
        major, minor, end_major, end_minor = (int(g) if g is not None else None for g in match.groups())
        start: Section = (major, minor)
        if end_major is None:
            sections.append(start)
        elif minor is None and end_minor is None:
            sections.extend((n, None) for n in range(major, end_major + 1))
        elif minor is not None and end_minor is None:
            # "§2.1-3": subsections 2.1 to 2.3.
            sections.extend((major, m) for m in range(minor, end_major + 1))
        else:
            sections.extend([start, (end_major, end_minor)])
    return sections


def doc_headings(text: str) -> set[Section]:
    """Headings of the doc that start with a section mark: ``## §4 ...`` -> (4, None), ``### §2.1 ...`` -> (2, 1)."""
    return {(int(major), int(minor) if minor else None) for major, minor in HEADING.findall(text)}


def _git_files() -> list[Path] | None:
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout.decode()
    except (OSError, subprocess.SubprocessError):
        return None
    return [ROOT / name for name in listed.split("\0") if name]


def _walked_files() -> Iterator[Path]:
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in SKIPPED_DIRS and not d.endswith(".egg-info")]
        yield from (Path(folder) / name for name in files)


def project_files() -> list[Path]:
    candidates = _git_files()
    if candidates is None:
        candidates = list(_walked_files())
    return sorted(
        path
        for path in candidates
        if path.suffix in SUFFIXES
        and path.is_file()
        and path.relative_to(ROOT).parts[0] != "tests"
        and not any(part.startswith(".") for part in path.relative_to(ROOT).parts)
    )


def citations() -> dict[Section, list[str]]:
    """Each cited section and where it is cited (``path:line``)."""
    found: dict[Section, list[str]] = {}
    for path in project_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            for section in cited_sections(line):
                found.setdefault(section, []).append(f"{path.relative_to(ROOT)}:{number}")
    return found


def _label(section: Section) -> str:
    return f"§{section[0]}" if section[1] is None else f"§{section[0]}.{section[1]}"


@pytest.fixture(scope="module")
def doc_text() -> str:
    assert DOC.is_file(), f"{DOC} is missing: the code's § citations refer to it"
    return DOC.read_text(encoding="utf-8")


def test_citation_parser_reads_single_sections_subsections_and_ranges() -> None:
    assert cited_sections("spec-free (§4) text") == [(4, None)]
    assert cited_sections("see §2.4 and §6/§8") == [(2, 4), (6, None), (8, None)]
    assert cited_sections("§4-5 and §3-§4") == [(4, None), (5, None), (3, None), (4, None)]
    assert cited_sections("§2.1-3") == [(2, 1), (2, 2), (2, 3)]
    assert cited_sections("§2.1-§3.2") == [(2, 1), (3, 2)]
    assert cited_sections("§0 steps 4-6, end of §9.") == [(0, None), (9, None)]
    assert cited_sections("no section here: 4-5, 2.1") == []


def test_doc_has_the_top_sections_in_order(doc_text: str) -> None:
    tops = [int(n) for n in re.findall(r"^## §(\d+)\s", doc_text, re.MULTILINE)]
    assert tops == TOP_SECTIONS
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/algorithm.md" in readme


def test_every_top_section_says_what_is_paper_and_what_is_ours(doc_text: str) -> None:
    bodies = re.split(r"^## §\d+\s.*$", doc_text, flags=re.MULTILINE)[1:]
    assert len(bodies) == len(TOP_SECTIONS)
    unmarked = [f"§{n}" for n, body in zip(TOP_SECTIONS, bodies) if "(paper)" not in body and "(ours)" not in body]
    assert not unmarked, f"sections without a (paper) or (ours) mark: {unmarked}"


def test_every_section_citation_names_a_heading_of_the_doc(doc_text: str) -> None:
    headings = doc_headings(doc_text)
    found = citations()
    # The scan must see the code's citations (acpo_core cites §1-§6 throughout), or it checks nothing.
    assert any(loc.startswith(os.path.join("acpo_core", "advantage.py")) for locs in found.values() for loc in locs)
    dangling = {
        _label(section): where[:3]
        for section, where in sorted(found.items(), key=lambda item: (item[0][0], item[0][1] or 0))
        if section not in headings
    }
    assert not dangling, f"citations with no heading in docs/algorithm.md (section: first places): {dangling}"


def test_worked_example_prints_what_the_doc_shows(doc_text: str) -> None:
    example = doc_text.split("### Worked example", 1)[1]
    code = re.search(r"```python\n(.*?)```", example, re.DOTALL)
    shown = re.search(r"```text\n(.*?)```", example, re.DOTALL)
    assert code and shown, "the worked example needs a python block and the text block of its output"
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(code.group(1), f"{DOC}:worked-example", "exec"), {"__name__": "worked_example"})
    assert output.getvalue().rstrip().splitlines() == shown.group(1).rstrip().splitlines()


# The citation styles from before docs/algorithm.md existed, which pointed at a document outside the repository.
OLD_STYLE = re.compile(r"ACPO_SPEC|\b[Ss]pec\s+§|\b[Ss]pec\s+section\s+\d")


def test_no_citation_points_outside_the_repository() -> None:
    # A tab, so that the citation rewrite (a sed on "spec" + space + "§") leaves this sample alone.
    assert OLD_STYLE.search("as in spec\t§4") and not OLD_STYLE.search("as in §4 (docs/algorithm.md)")
    stale = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in project_files()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if OLD_STYLE.search(line)
    ]
    assert not stale, f"cite docs/algorithm.md as §N instead (see the commit that rewrote the citations): {stale[:10]}"
