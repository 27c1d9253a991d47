"""Thin wrapper around buildctl: argv construction, progress parsing, and running."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from basekiln._run import CommandError, run, run_streaming
from basekiln.errors import BuildError

_STEP = re.compile(r"^#(\d+) (?:\[(?P<stage>[^\]]+)\] )?(?P<what>.*)$")
_DONE = re.compile(r"^#(\d+) DONE ")
_VERSION = re.compile(r"BuildKit:\s+\S+\s+(v\S+)")


@dataclass(frozen=True)
class Endpoint:
    """How to reach one buildkitd: an address and optional client TLS files."""

    address: str
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    def global_args(self) -> list[str]:
        args = ["--addr", self.address]
        for flag, value in (
            ("--tlscacert", self.tls_ca),
            ("--tlscert", self.tls_cert),
            ("--tlskey", self.tls_key),
        ):
            if value:
                args += [flag, value]
        return args


@dataclass(frozen=True)
class NamedImage:
    """An OCI layout passed to the build as a named context, by digest."""

    name: str
    layout: Path
    digest: str


def build_argv(
    endpoint: Endpoint,
    context: Path,
    output: Path,
    epoch: int,
    named: list[NamedImage],
    build_args: Mapping[str, str],
    frontend_opts: Mapping[str, str],
    platform: str,
    annotations: Mapping[str, str],
    compression: str = "gzip",
) -> list[str]:
    """The buildctl command for one deterministic build into an OCI layout directory."""
    output_opts = [
        "type=oci",
        f"dest={output}",
        "tar=false",
        "rewrite-timestamp=true",
        "oci-mediatypes=true",
        f"compression={compression}",
    ]
    output_opts += [f"annotation-manifest.{k}={v}" for k, v in sorted(annotations.items())]
    argv = [
        "buildctl",
        *endpoint.global_args(),
        "build",
        "--progress",
        "plain",
        "--frontend",
        "dockerfile.v0",
        # A fresh local sandbox has no cache anyway; a remote daemon's must not be used.
        "--no-cache",
        "--local",
        f"context={context}",
        "--local",
        f"dockerfile={context}",
        "--opt",
        f"platform={platform}",
        "--opt",
        f"build-arg:SOURCE_DATE_EPOCH={epoch}",
        # No attest:* options: BuildKit's own attestations carry times and ids, and
        # buildctl adds none unless asked (build.py checks the index holds no more).
        "--output",
        ",".join(_csv_quote(o) for o in output_opts),
    ]
    for key, value in sorted(build_args.items()):
        argv += ["--opt", f"build-arg:{key}={value}"]
    for key, value in sorted(frontend_opts.items()):
        argv += ["--opt", f"{key}={value}"]
    for image in named:
        argv += [
            "--oci-layout",
            f"{image.name}={image.layout}",
            "--opt",
            f"context:{image.name}=oci-layout://{image.name}@{image.digest}",
        ]
    return argv


def _csv_quote(field: str) -> str:
    # buildctl parses --output as CSV: quote fields holding commas or quotes.
    if "," in field or '"' in field:
        return '"' + field.replace('"', '""') + '"'
    return field


def build(
    argv: list[str],
    timeout: float,
    on_line: Callable[[str], None],
    log_path: Path | None = None,
) -> None:
    """Run a build, keeping its whole log in `log_path` (if given), whatever the outcome.

    A failure is reported as the step that failed and what it printed, not as the
    whole log: that stays in the file the message names.
    """
    lines: list[str] = []

    def collect(line: str) -> None:
        lines.append(line)
        on_line(line)

    try:
        run_streaming(argv, timeout=timeout, on_line=collect)
    except CommandError as exc:
        _write_log(log_path, lines)
        summary = failure_summary(lines)
        if summary is None:
            raise BuildError(f"the build failed: {exc.message}") from exc
        where = f"\nThe whole log: {log_path}" if log_path else ""
        raise BuildError(f"the build failed {summary}{where}") from exc
    _write_log(log_path, lines)


def _write_log(path: Path | None, lines: list[str]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


_FAILED_STEP = re.compile(r"^ > (\[[^\]]+\])")
_OUTPUT_TIME = re.compile(r"^\d+\.\d+ ")
_STEP_ERROR = re.compile(r"^#\d+ ERROR: (.*)$")


def failure_summary(lines: list[str]) -> str | None:
    """`at STEP: output... error` from buildctl's plain progress (pure), if it has one.

    BuildKit closes a failed run with the step's name and the last lines it printed
    between two `------` rules; the `#N ERROR:` line says how it ended.
    """
    step, output, error = None, [], None
    inside = False
    for line in lines:
        if inside:
            if line.startswith("------"):
                inside = False
                continue
            output.append(_OUTPUT_TIME.sub("", line))
        elif match := _FAILED_STEP.match(line):
            step, output, inside = match.group(1), [], True
        elif match := _STEP_ERROR.match(line):
            error = match.group(1)
        elif line.startswith("error: failed to solve: ") and error is None:
            error = line.removeprefix("error: failed to solve: ")
    if step is None and error is None:
        return None
    said = "".join(f"\n  {text}" for text in output[-15:])
    return f"at {step or 'solve'}:{said}\n  {error or 'no error line'}"


def step_started(line: str) -> str | None:
    """The description of a step when `line` announces one (pure; for progress)."""
    match = _STEP.match(line)
    if not match or _DONE.match(line):
        return None
    what = match.group("what")
    if what.startswith(
        (
            "DONE",
            "CACHED",
            "ERROR",
            "sha256:",
            "extracting",
            "exporting",
            "writing",
            "naming",
            "resolving",
            "transferring",
            "load",
            "...",
        )
    ):
        return None
    stage = match.group("stage")
    return f"[{stage}] {what}" if stage else what


def step_done(line: str) -> bool:
    return bool(_DONE.match(line))


def ping(endpoint: Endpoint, timeout: float = 10) -> None:
    run(["buildctl", *endpoint.global_args(), "debug", "workers"], timeout=timeout)


def server_version(endpoint: Endpoint) -> str:
    """The daemon's BuildKit version, as `buildctl debug info` reports it."""
    out = run(["buildctl", *endpoint.global_args(), "debug", "info"], timeout=30)
    return parse_version(out.stdout.decode("utf-8", errors="replace"))


def parse_version(info: str) -> str:
    match = _VERSION.search(info)
    if match is None:
        raise BuildError(f"could not read the BuildKit version from:\n{info}")
    return match.group(1)
