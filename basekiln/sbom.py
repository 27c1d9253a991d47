"""SBOMs of built images, and the check that they agree with the lockfiles.

syft reads the dpkg entries basekiln writes to `/var/lib/dpkg/status.d/`, so the
Debian packages it reports must be exactly the locked ones: every locked package at
its locked version and architecture, and nothing else. The lockfiles are the image's
own and its parents', since a child's lockfile lists only what it adds.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from basekiln import _syft
from basekiln._syft import DebPackage
from basekiln.errors import BasekilnError, LockfileError
from basekiln.lockfile import LockedPackage, Lockfile
from basekiln.oci import read_image

log = logging.getLogger(__name__)

SPDX_NAME = "sbom.spdx.json"
CYCLONEDX_NAME = "sbom.cdx.json"


class SbomError(BasekilnError):
    """An SBOM could not be made, or does not describe the image it should."""


class SbomMismatchError(SbomError):
    """The SBOM's Debian packages differ from the locked ones."""

    def __init__(self, check: CrossCheck, where: str = "the image") -> None:
        self.check = check
        lines = "\n".join(f"  - {problem}" for problem in check.problems())
        super().__init__(
            f"the SBOM of {where} does not match its lockfiles ({len(check.problems())} "
            f"difference(s)):\n{lines}\nThe image holds other packages than were locked; "
            "check the assembler's status.d entries, or re-lock and rebuild."
        )


@dataclass(frozen=True)
class Sbom:
    """Both SBOM documents of one image and the Debian packages they list."""

    spdx_json: Path
    cyclonedx_json: Path
    packages: tuple[DebPackage, ...]
    tool: str


@dataclass(frozen=True)
class Mismatch:
    locked: LockedPackage
    found: tuple[DebPackage, ...]


@dataclass(frozen=True)
class CrossCheck:
    """How the scanned packages compare with the locked ones."""

    matched: tuple[DebPackage, ...]
    missing: tuple[LockedPackage, ...]
    extra: tuple[DebPackage, ...]
    mismatched: tuple[Mismatch, ...]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.mismatched)

    def problems(self) -> list[str]:
        """One line per difference, for a person."""
        lines = [
            f"missing: {p.name} {p.version} ({p.architecture}) is locked but not in the SBOM"
            for p in self.missing
        ]
        lines += [
            f"version: {m.locked.name} is locked at {m.locked.version} "
            f"({m.locked.architecture}) but the SBOM has "
            + ", ".join(f"{f.version} ({f.architecture})" for f in m.found)
            for m in self.mismatched
        ]
        lines += [f"extra: {p} is in the SBOM but not locked" for p in self.extra]
        return lines


def generate_sbom(
    layout: Path,
    out_dir: Path,
    *,
    platform: str = "linux/amd64",
    name: str | None = None,
    timeout: float = _syft.SCAN_TIMEOUT,
) -> Sbom:
    """Scan the image in an OCI layout; write `sbom.spdx.json` and `sbom.cdx.json`.

    `name` (e.g. the repository the image is published to) names the document instead
    of the layout's path. The platform is checked here because syft scans the only
    image of a single-image layout whatever platform it is asked for.
    """
    image = read_image(layout, platform)
    spdx, cyclonedx = out_dir / SPDX_NAME, out_dir / CYCLONEDX_NAME
    _syft.scan(
        _syft.oci_dir_source(layout),
        spdx,
        cyclonedx,
        platform=platform,
        source_name=name,
        source_version=image.digest if name else None,
        timeout=timeout,
    )
    return read_sbom(spdx, cyclonedx)


def generate_sbom_from_registry(
    reference: str,
    out_dir: Path,
    *,
    platform: str = "linux/amd64",
    insecure_http: bool = False,
    ca_file: Path | None = None,
    timeout: float = _syft.SCAN_TIMEOUT,
) -> Sbom:
    """Scan an image in a registry (`host/repo@sha256:...`) the way `generate_sbom` does."""
    spdx, cyclonedx = out_dir / SPDX_NAME, out_dir / CYCLONEDX_NAME
    _syft.scan(
        _syft.registry_source(reference),
        spdx,
        cyclonedx,
        platform=platform,
        insecure_http=insecure_http,
        ca_file=ca_file,
        timeout=timeout,
    )
    return read_sbom(spdx, cyclonedx)


def read_sbom(spdx: Path, cyclonedx: Path) -> Sbom:
    """The Sbom for documents syft already wrote."""
    try:
        document = json.loads(spdx.read_bytes())
    except (OSError, ValueError) as exc:
        raise SbomError(f"{spdx}: not a readable SPDX JSON document ({exc})") from exc
    debs = _syft.parse_spdx_debs(document)
    if debs.unidentified:
        raise SbomError(
            f"{spdx}: syft found dpkg entries it could not name as Debian packages "
            f"({', '.join(debs.unidentified)}); it does that when the image has no "
            "os-release with ID=debian. Make sure the image has /etc/os-release "
            "(base-files provides it)."
        )
    log.info("SBOM lists %d Debian packages (%s)", len(debs.packages), debs.tool)
    return Sbom(spdx, cyclonedx, debs.packages, debs.tool)


def compare_packages(found: Iterable[DebPackage], locked: Iterable[LockedPackage]) -> CrossCheck:
    """Compare scanned packages with locked ones by name, then version and architecture."""
    by_name: dict[str, set[DebPackage]] = defaultdict(set)
    for package in found:
        by_name[package.name].add(package)

    matched: list[DebPackage] = []
    missing: list[LockedPackage] = []
    mismatched: list[Mismatch] = []
    for pkg in sorted(locked, key=lambda p: (p.name, p.architecture)):
        wanted = DebPackage(pkg.name, pkg.version, pkg.architecture)
        seen = by_name.get(pkg.name, set())
        if wanted in seen:
            matched.append(wanted)
            seen.discard(wanted)
        elif seen:
            mismatched.append(Mismatch(pkg, tuple(sorted(seen))))
            seen.clear()
        else:
            missing.append(pkg)

    extra = sorted(p for remaining in by_name.values() for p in remaining)
    return CrossCheck(tuple(matched), tuple(missing), tuple(extra), tuple(mismatched))


def cross_check(
    found: Iterable[DebPackage], locked: Iterable[LockedPackage], where: str = "the image"
) -> CrossCheck:
    """`compare_packages`, raising SbomMismatchError naming each difference."""
    check = compare_packages(found, locked)
    if not check.ok:
        raise SbomMismatchError(check, where)
    log.info("SBOM matches the lockfiles: %d packages", len(check.matched))
    return check


def locked_union(chain: Sequence[Lockfile], platform: str) -> list[LockedPackage]:
    """Every package locked for `platform` along a lockfile chain.

    A package pinned twice must be pinned identically; two pins of one name would
    leave the image's content to layer order.
    """
    union: dict[str, LockedPackage] = {}
    for lock in chain:
        for pkg in lock.packages_for(platform):
            other = union.setdefault(pkg.name, pkg)
            if (other.version, other.sha256) != (pkg.version, pkg.sha256):
                raise LockfileError(
                    f"{pkg.name} is locked at {other.version} and at {pkg.version} along the "
                    f"parent chain of {chain[0].recipe.name!r}; re-lock the child recipe"
                )
    return sorted(union.values(), key=lambda p: p.name)
