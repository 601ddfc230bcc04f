"""Running a step of a validation tool (verl's validation pass, the checkpoint merge before it) as a child process.

The evaluation and the pass-rate pre-pass run their commands the same way:

- the command is printed as a shell line (``+ python -m ...``, :func:`shell_line`), which can be pasted to rerun it;
- every line the child prints (stdout and stderr) is echoed to the console and appended to the tool's log, so that
  a failure can still be read after the console has scrolled away; a non-zero exit is an error naming the log;
- Ctrl-C reaches the child: verl's entry point shuts its own Ray cluster down on SIGINT (``recipe.acpo.main_acpo``),
  so the tool forwards the signal and waits for it rather than leave the child and its cluster orphaned.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from recipe.acpo.validation.command import ValidationRunError

__all__ = ["RunFailedError", "run_logged", "shell_line"]


class RunFailedError(ValidationRunError):
    """A step's command exited with a non-zero status; the message names the step, the status and the log."""

    def __init__(self, what: str, returncode: int, log_file: Path) -> None:
        super().__init__(f"{what} failed with exit status {returncode}; see {log_file}")
        self.returncode = returncode
        self.log_file = log_file


def shell_line(command: Sequence[str]) -> str:
    """``command`` as the shell line the tools print before running it: ``+ `` and the quoted words."""
    return "+ " + " ".join(shlex.quote(part) for part in command)


def run_logged(
    command: Sequence[str], env: Mapping[str, str], log_file: Path, what: str, cwd: Path | None = None
) -> None:
    """Run ``command`` (in ``cwd``), echoing its output to the console and appending it to ``log_file``.

    Raises:
        RunFailedError: the command exited with a non-zero status (``what`` names the step in the message).
        KeyboardInterrupt: Ctrl-C, once the child, sent SIGINT in turn, has exited.
    """
    print(shell_line(command), flush=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("a", encoding="utf-8") as log:
        log.write(shell_line(command) + "\n")
        log.flush()
        process = subprocess.Popen(
            list(command),
            env=dict(env),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        assert process.stdout is not None
        try:
            for line in process.stdout:
                sys.stdout.write(line)
                log.write(line)
            returncode = process.wait()
        except KeyboardInterrupt:
            # The child shuts its own Ray cluster down on SIGINT: wait for it rather than leave it orphaned.
            process.send_signal(signal.SIGINT)
            process.wait()
            raise
    if returncode != 0:
        raise RunFailedError(what, returncode, log_file)
