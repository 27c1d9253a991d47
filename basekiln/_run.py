"""The one runner every external command goes through."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from basekiln.errors import ToolError

log = logging.getLogger(__name__)

STDERR_TAIL_CHARS = 4000


@dataclass(frozen=True)
class Completed:
    """What a finished command left behind."""

    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: str


class CommandError(ToolError):
    """A command exited non-zero, timed out, or could not start."""

    def __init__(
        self, message: str, argv: Sequence[str], returncode: int | None, stderr: str
    ) -> None:
        super().__init__(message)
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr


def tools_bin() -> Path:
    """The folder `make setup` installs pinned tools into."""
    return Path(__file__).resolve().parent.parent / ".tools" / "bin"


def which(program: str) -> str | None:
    """Find a program, preferring the project's pinned tools over PATH."""
    pinned = tools_bin() / program
    if pinned.exists() and os.access(pinned, os.X_OK):
        return str(pinned)
    return shutil.which(program)


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    check: bool = True,
) -> Completed:
    """Run a command with a timeout; on failure raise with argv and stderr's tail."""
    program = which(argv[0])
    if program is None:
        raise CommandError(
            f"{argv[0]} is not installed; run `make setup` (or `basekiln doctor` to see "
            "what is missing)",
            argv,
            None,
            "",
        )
    full = [program, *argv[1:]]
    log.debug("run: %s", " ".join(full))
    try:
        proc = subprocess.run(
            full,
            input=input,
            capture_output=True,
            timeout=timeout,
            env=None if env is None else dict(env),
            cwd=cwd,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        stderr = _decode(exc.stderr)
        raise CommandError(
            f"{argv[0]} did not finish within {timeout:.0f}s: {' '.join(full)}\n{_tail(stderr)}",
            full,
            None,
            stderr,
        ) from exc
    stderr = _decode(proc.stderr)
    if check and proc.returncode != 0:
        raise CommandError(
            f"{argv[0]} failed with exit code {proc.returncode}: {' '.join(full)}\n{_tail(stderr)}",
            full,
            proc.returncode,
            stderr,
        )
    return Completed(tuple(full), proc.returncode, proc.stdout, stderr)


def _decode(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    return data.decode("utf-8", errors="replace")


def _tail(text: str) -> str:
    text = text.strip()
    if len(text) > STDERR_TAIL_CHARS:
        text = "…" + text[-STDERR_TAIL_CHARS:]
    return text
