"""recipe.acpo.validation.runner: how the evaluation and the pass-rate pre-pass run their steps (console and log)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from recipe.acpo.validation.command import ValidationRunError
from recipe.acpo.validation.runner import RunFailedError, run_logged, shell_line

CHILD = "import os, sys; print('out', os.getcwd()); print('err', file=sys.stderr); sys.exit(int(sys.argv[1]))"


def test_the_childs_output_goes_to_the_console_and_after_its_shell_line_to_the_log(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    command = [sys.executable, "-c", CHILD, "0"]
    log = tmp_path / "logs" / "run.log"
    run_logged(command, os.environ, log, "the child", cwd=tmp_path)
    lines = log.read_text().splitlines()
    assert lines[0] == shell_line(command) and lines[0].startswith("+ ") and "'import os" in lines[0]
    assert sorted(lines[1:]) == ["err", f"out {tmp_path}"]  # stderr joins stdout, in the child's folder
    assert f"out {tmp_path}" in capfd.readouterr().out


def test_a_failed_step_is_an_error_naming_the_step_the_status_and_the_log(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_text("an earlier step\n")
    with pytest.raises(RunFailedError, match=re.escape(f"the child failed with exit status 3; see {log}")) as failure:
        run_logged([sys.executable, "-c", CHILD, "3"], os.environ, log, "the child")
    assert isinstance(failure.value, ValidationRunError) and failure.value.returncode == 3
    assert log.read_text().startswith("an earlier step\n+ ")  # appended
