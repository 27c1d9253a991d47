"""diffoscope, when it is installed: a deep diff of differing files for the compare report.

basekiln does not depend on diffoscope. Without it, the report says that diffoscope was
not available and carries basekiln's own findings only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from basekiln._run import CommandError, run, which

log = logging.getLogger(__name__)

MAX_FILES = 20
TIMEOUT_SECONDS = 120.0
MAX_REPORT_BYTES = 200_000
MAX_OUTPUT_CHARS = 20_000
STDERR_CHARS = 2_000


@dataclass(frozen=True)
class FilePair:
    """Two extracted copies of one differing file; `label` names it in the report."""

    label: str
    a: Path
    b: Path


@dataclass(frozen=True)
class Output:
    """What diffoscope said about one pair of files."""

    label: str
    text: str
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "text": self.text, "error": self.error}


@dataclass(frozen=True)
class DiffoscopeResult:
    """Whether diffoscope ran, why not if it did not, and its output per file."""

    available: bool
    note: str
    outputs: tuple[Output, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "available": self.available,
            "note": self.note,
            "outputs": [output.to_json() for output in self.outputs],
        }


def is_available() -> bool:
    return which("diffoscope") is not None


def not_run(note: str) -> DiffoscopeResult:
    return DiffoscopeResult(available=is_available(), note=note)


def diff_files(
    pairs: Sequence[FilePair], *, max_files: int = MAX_FILES, timeout: float = TIMEOUT_SECONDS
) -> DiffoscopeResult:
    """Run diffoscope on at most `max_files` pairs; never fails the comparison itself."""
    if not is_available():
        return DiffoscopeResult(
            available=False,
            note="diffoscope was not available (not on PATH); install it for a byte-level "
            "view of the differing files",
        )
    if not pairs:
        return DiffoscopeResult(available=True, note="no differing regular files to show")

    chosen = pairs[:max_files]
    outputs = tuple(_diff_pair(pair, timeout) for pair in chosen)
    note = f"diffoscope ran on {len(chosen)} of {len(pairs)} differing files"
    if len(pairs) > max_files:
        note += f" (capped at {max_files})"
    return DiffoscopeResult(available=True, note=note, outputs=outputs)


def _diff_pair(pair: FilePair, timeout: float) -> Output:
    argv = ["diffoscope", "--text", "-", "--max-report-size", str(MAX_REPORT_BYTES)]
    try:
        done = run([*argv, str(pair.a), str(pair.b)], timeout=timeout, check=False)
    except CommandError as exc:
        log.warning("diffoscope failed on %s: %s", pair.label, exc.message)
        return Output(pair.label, "", error=exc.message)
    names = {str(pair.a): f"A:{pair.label}", str(pair.b): f"B:{pair.label}"}
    return interpret(pair.label, done.returncode, done.stdout, done.stderr, names)


def interpret(
    label: str,
    returncode: int,
    stdout: bytes,
    stderr: str,
    names: dict[str, str] | None = None,
) -> Output:
    """Turn one diffoscope run into an `Output`: 0 is no difference, 1 a difference."""
    text = stdout.decode("utf-8", errors="replace")
    for temp_path, shown in (names or {}).items():
        text = text.replace(temp_path, shown)
    text = trim(text, MAX_OUTPUT_CHARS)

    if returncode == 0:
        return Output(label, text or "diffoscope found no difference")
    if returncode == 1:
        return Output(label, text)
    tail = trim(stderr.strip(), STDERR_CHARS)
    return Output(label, text, error=f"diffoscope exited with code {returncode}: {tail}")


def trim(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[… {len(text) - limit} more characters left out]"
