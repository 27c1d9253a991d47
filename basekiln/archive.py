"""Debian archive metadata, trusted from the signature down.

`InRelease` is verified with gpgv against the archive keyring; each `Packages` index
must match the sha256 its verified `Release` lists; each `.deb`'s sha256 then comes from
that index. Nothing unverified is ever parsed for its content.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import lzma
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
from debian.deb822 import Release

from basekiln import _http
from basekiln._gpgv import verify_clearsigned
from basekiln.cache import Cache
from basekiln.config import ArchiveConfig
from basekiln.errors import FetchError, TrustError

log = logging.getLogger(__name__)

# gzip first: Debian serves it beside xz, and it decompresses about five times faster,
# which is most of a warm lock's time.
INDEX_FORMATS = (
    ("Packages.gz", gzip.decompress),
    ("Packages.xz", lzma.decompress),
    ("Packages", bytes),
)


@dataclass(frozen=True)
class ReleaseRecord:
    """One verified InRelease, as the lockfile records it."""

    archive: str
    suite: str
    url: str
    sha256: str
    date: str

    @property
    def timestamp(self) -> int:
        return int(parsedate_to_datetime(self.date).timestamp())


@dataclass(frozen=True)
class BinaryPackage:
    """One stanza of a verified Packages index (relations kept raw, parsed lazily)."""

    name: str
    version: str
    architecture: str
    filename: str
    sha256: str
    size: int
    source: str
    source_version: str
    depends: str
    pre_depends: str
    provides: str
    priority: str
    archive: str
    suite: str


@dataclass(frozen=True)
class SuiteIndex:
    release: ReleaseRecord
    packages: tuple[BinaryPackage, ...]


def load_suite(
    http: httpx.Client,
    cache: Cache,
    archive_name: str,
    archive: ArchiveConfig,
    suite: str,
    components: list[str],
    architecture: str,
    attempts: int,
) -> SuiteIndex:
    """Fetch and verify one suite's InRelease, then its Packages indexes."""
    signed, url = _fetch_first(http, archive.mirrors, f"dists/{suite}/InRelease", attempts)
    what = url
    text = verify_clearsigned(signed, Path(archive.keyring), what).decode("utf-8")
    release = Release(text)
    _check_release_identity(release, suite, what)
    _check_valid_until(release, what)

    record = ReleaseRecord(
        archive=archive_name,
        suite=suite,
        url=url,
        sha256=hashlib.sha256(signed).hexdigest(),
        date=str(release["Date"]),
    )
    packages: list[BinaryPackage] = []
    for component in components:
        raw = _fetch_index(http, cache, archive, suite, release, component, architecture, attempts)
        packages.extend(parse_packages(raw, archive_name, suite))
    return SuiteIndex(release=record, packages=tuple(packages))


def _check_release_identity(release: Release, suite: str, what: str) -> None:
    # A validly signed InRelease of another suite (a replay) must not stand in for this one.
    names = {str(release.get("Suite", "")), str(release.get("Codename", ""))}
    if suite not in names:
        raise TrustError(
            f"{what}: signed Release names suite/codename {sorted(names)}, not {suite!r}; "
            "the mirror is serving the wrong suite"
        )


def _check_valid_until(release: Release, what: str) -> None:
    valid_until = release.get("Valid-Until")
    if not valid_until:
        return
    expiry = parsedate_to_datetime(str(valid_until))
    if expiry < datetime.now(UTC):
        raise TrustError(
            f"{what}: Release expired at {valid_until} (Valid-Until); the mirror is stale "
            "or replaying old metadata, try another mirror"
        )


def _fetch_index(
    http: httpx.Client,
    cache: Cache,
    archive: ArchiveConfig,
    suite: str,
    release: Release,
    component: str,
    architecture: str,
    attempts: int,
) -> bytes:
    listed = {entry["name"]: entry for entry in release.get("SHA256", [])}
    by_hash = str(release.get("Acquire-By-Hash", "no")).lower() == "yes"
    for name, decompress in INDEX_FORMATS:
        relative = f"{component}/binary-{architecture}/{name}"
        entry = listed.get(relative)
        if entry is None:
            continue
        expected = str(entry["sha256"])
        if not cache.has(expected):
            # by-hash paths never change under us while a mirror syncs.
            path = (
                f"{component}/binary-{architecture}/by-hash/SHA256/{expected}"
                if by_hash
                else relative
            )
            data, url = _fetch_first(http, archive.mirrors, f"dists/{suite}/{path}", attempts)
            actual = hashlib.sha256(data).hexdigest()
            if actual != expected:
                raise TrustError(
                    f"{url}: sha256 is {actual} but the signed Release of {suite} lists "
                    f"{expected} for {relative}; the index was altered or the mirror is "
                    "mid-sync, try again or use another mirror"
                )
            cache.put_bytes(data, expected, url)
        compressed = cache.path(expected).read_bytes()
        if hashlib.sha256(compressed).hexdigest() != expected:
            raise TrustError(
                f"cache entry {cache.path(expected)} ({relative} of {suite}) no longer matches "
                "its sha256; it was altered after it was verified. Delete it and lock again."
            )
        return decompress(compressed)
    raise TrustError(
        f"dists/{suite}/Release lists no Packages index for {component}/binary-{architecture}; "
        "check the suite, component and architecture"
    )


def _fetch_first(
    http: httpx.Client, mirrors: list[str], relative: str, attempts: int
) -> tuple[bytes, str]:
    failures = []
    for mirror in mirrors:
        url = f"{mirror.rstrip('/')}/{relative}"
        try:
            return _http.get_bytes(http, url, attempts), url
        except (_http.NotFoundError, httpx.HTTPError) as exc:
            log.warning("%s: %s", url, exc)
            failures.append(f"{url} ({exc})")
    raise FetchError(
        f"could not fetch {relative} from any mirror: {'; '.join(failures)}; check the "
        "mirrors in basekiln.toml and the network"
    )


def parse_packages(data: bytes, archive: str, suite: str) -> list[BinaryPackage]:
    """Parse a Packages index into the fields resolution needs.

    A focused parser rather than python-debian's general deb822 reader: bookworm's main
    index has 63,000 stanzas and this is the hot path of every lock.
    """
    packages = []
    for stanza in data.decode("utf-8").split("\n\n"):
        fields = _stanza_fields(stanza)
        name = fields.get("Package")
        if not name:
            continue
        version = fields.get("Version", "")
        source, source_version = _source_of(fields.get("Source", ""), name, version)
        packages.append(
            BinaryPackage(
                name=name,
                version=version,
                architecture=fields.get("Architecture", ""),
                filename=fields.get("Filename", ""),
                sha256=fields.get("SHA256", ""),
                size=int(fields.get("Size", "0")),
                source=source,
                source_version=source_version,
                depends=fields.get("Depends", ""),
                pre_depends=fields.get("Pre-Depends", ""),
                provides=fields.get("Provides", ""),
                priority=fields.get("Priority", "optional"),
                archive=archive,
                suite=suite,
            )
        )
    return packages


_WANTED = frozenset(
    {
        "Package",
        "Version",
        "Architecture",
        "Filename",
        "SHA256",
        "Size",
        "Source",
        "Depends",
        "Pre-Depends",
        "Provides",
        "Priority",
    }
)


def _stanza_fields(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in stanza.split("\n"):
        if not line or line[0] in " \t":
            continue  # continuation lines belong to fields resolution does not read
        key, _, value = line.partition(":")
        if key in _WANTED:
            fields[key] = value.strip()
    return fields


def _source_of(raw: str, name: str, version: str) -> tuple[str, str]:
    """`Source: name (version)`, defaulting to the binary's own name and version."""
    if not raw:
        return name, version
    source, _, rest = raw.partition(" ")
    return source, rest.strip().strip("()") or version
