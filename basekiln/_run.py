"""The one runner every external command goes through."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
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


def run_streaming(
    argv: Sequence[str],
    *,
    timeout: float,
    on_line: Callable[[str], None],
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Completed:
    """Run a command, handing each stderr line to `on_line` as it arrives.

    For long commands whose progress a person follows (buildctl). The process runs in
    its own session and is killed with its children on timeout or interruption.
    """
    program = which(argv[0])
    if program is None:
        raise CommandError(f"{argv[0]} is not installed; run `make setup`", argv, None, "")
    full = [program, *argv[1:]]
    log.debug("run: %s", " ".join(full))
    proc = subprocess.Popen(
        full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=None if env is None else dict(env),
        cwd=cwd,
        start_new_session=True,
    )
    timer = threading.Timer(timeout, _kill_group, args=(proc,))
    timer.start()
    tail: collections.deque[str] = collections.deque(maxlen=200)
    stdout_chunks: list[bytes] = []
    reader = threading.Thread(
        target=lambda: stdout_chunks.append(proc.stdout.read() if proc.stdout else b"")
    )
    reader.start()
    try:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            tail.append(line)
            on_line(line)
        proc.wait()
    except BaseException:
        _kill_group(proc)
        raise
    finally:
        timer.cancel()
        reader.join()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    stderr = "\n".join(tail)
    if proc.returncode != 0:
        why = (
            f"did not finish within {timeout:.0f}s"
            if proc.returncode in (-9, 137)
            else f"failed with exit code {proc.returncode}"
        )
        raise CommandError(
            f"{argv[0]} {why}: {' '.join(full)}\n{_tail(stderr)}", full, proc.returncode, stderr
        )
    return Completed(tuple(full), proc.returncode, b"".join(stdout_chunks), stderr)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
