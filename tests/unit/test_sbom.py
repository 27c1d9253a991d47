"""The syft output parser, the SBOM/lockfile cross-check and the lockfile chain."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from basekiln import _syft
from basekiln._run import Completed
from basekiln._syft import DebPackage, parse_deb_purl, parse_spdx_debs
from basekiln.errors import ExitCode, LockfileError, ToolError
from basekiln.lockfile import (
    LockedPackage,
    Lockfile,
    ParentRef,
    RecipeRef,
    file_sha256,
    load_lock_chain,
    lockfile_path,
    write_lockfile,
)
from basekiln.sbom import (
    SbomError,
    SbomMismatchError,
    compare_packages,
    cross_check,
    locked_union,
    read_sbom,
)

# Captured from syft 1.18.1 scanning tests.fixtures.images.write_dpkg_image with two
# packages (libfake1, fake-data), trimmed to the fields the parser reads plus a CPE.
_STATUS_D = "acquired package info from DPKG DB: /var/lib/dpkg/status.d/"
_IMAGE_DIGEST = "sha256:47b08792752f0979ced7da8f1e208a10f2c252dc987da30767ff911cbdbd9b61"
CAPTURED_SPDX: dict[str, Any] = {
    "spdxVersion": "SPDX-2.3",
    "SPDXID": "SPDXRef-DOCUMENT",
    "name": "registry.example/basekiln/fake",
    "creationInfo": {
        "licenseListVersion": "3.25",
        "creators": ["Organization: Anchore, Inc", "Tool: syft-1.18.1"],
        "created": "2026-12-03T18:23:28Z",
    },
    "packages": [
        {
            "name": "fake-data",
            "SPDXID": "SPDXRef-Package-deb-fake-data-0019f8ac19259d71",
            "versionInfo": "2024a-0+deb12u1",
            "sourceInfo": _STATUS_D + "fake-data, /var/lib/dpkg/status.d/fake-data.md5sums",
            "externalRefs": [
                {
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": (
                        "pkg:deb/debian/fake-data@2024a-0%2Bdeb12u1?arch=all&distro=debian-12"
                    ),
                },
                {
                    "referenceCategory": "SECURITY",
                    "referenceType": "cpe23Type",
                    "referenceLocator": (
                        "cpe:2.3:a:fake-data:fake-data:2024a-0\\+deb12u1:*:*:*:*:*:*:*"
                    ),
                },
            ],
        },
        {
            "name": "libfake1",
            "SPDXID": "SPDXRef-Package-deb-libfake1-6bce3789a6a7fe07",
            "versionInfo": "1:2.3+dfsg-4~deb12u1",
            "sourceInfo": _STATUS_D + "libfake1, /var/lib/dpkg/status.d/libfake1.md5sums",
            "externalRefs": [
                {
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": (
                        "pkg:deb/debian/libfake1@1:2.3%2Bdfsg-4~deb12u1?arch=amd64"
                        "&distro=debian-12&upstream=fake%402.3%2Bdfsg-4~deb12u1"
                    ),
                },
                {
                    "referenceCategory": "SECURITY",
                    "referenceType": "cpe23Type",
                    "referenceLocator": (
                        "cpe:2.3:a:libfake1:libfake1:1\\:2.3\\+dfsg-4\\~deb12u1:*:*:*:*:*:*:*"
                    ),
                },
            ],
        },
        {
            "name": "registry.example/basekiln/fake",
            "SPDXID": "SPDXRef-DocumentRoot-Image-registry.example-basekiln-fake",
            "versionInfo": _IMAGE_DIGEST,
            "externalRefs": [
                {
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": (
                        f"pkg:oci/registry.example/basekiln/fake@{_IMAGE_DIGEST}?arch="
                    ),
                }
            ],
        },
    ],
}

# The same image without /etc/os-release: syft names no distro, so it gives no deb purls.
CAPTURED_SPDX_NO_OS_RELEASE: dict[str, Any] = {
    "spdxVersion": "SPDX-2.3",
    "creationInfo": {"creators": ["Organization: Anchore, Inc", "Tool: syft-1.18.1"]},
    "packages": [
        {
            "name": "fake-data",
            "SPDXID": "SPDXRef-Package-deb-fake-data-0019f8ac19259d71",
            "versionInfo": "2024a-0+deb12u1",
            "externalRefs": [CAPTURED_SPDX["packages"][0]["externalRefs"][1]],
        },
        {
            "name": "libfake1",
            "SPDXID": "SPDXRef-Package-deb-libfake1-6bce3789a6a7fe07",
            "versionInfo": "1:2.3+dfsg-4~deb12u1",
            "externalRefs": [CAPTURED_SPDX["packages"][1]["externalRefs"][1]],
        },
    ],
}

LIBFAKE = DebPackage("libfake1", "1:2.3+dfsg-4~deb12u1", "amd64")
FAKE_DATA = DebPackage("fake-data", "2024a-0+deb12u1", "all")


def locked(name: str, version: str, architecture: str = "amd64") -> LockedPackage:
    return LockedPackage(
        name=name,
        version=version,
        architecture=architecture,
        platform="linux/amd64",
        sha256=(name.encode().hex() * 64)[:64],
        size=1024,
        filename=f"pool/main/{name[0]}/{name}/{name}_{version}_{architecture}.deb",
        source=name,
        source_version=version,
        archive="debian",
        suite="bookworm",
        depends_on=[],
        dependencies_followed=True,
    )


def lockfile(
    name: str, packages: Sequence[LockedPackage], parent: ParentRef | None = None
) -> Lockfile:
    return Lockfile(
        recipe=RecipeRef(name=name, path=f"recipes/{name}.yaml", sha256="a" * 64),
        parent=parent,
        platforms=["linux/amd64"],
        source_date_epoch=1_700_000_000,
        mirrors={"debian": ["http://deb.debian.org/debian"]},
        releases=[],
        packages=list(packages),
    )


# -- the parser, on captured output ---------------------------------------------------


def test_parse_spdx_finds_the_debian_packages_and_nothing_else() -> None:
    debs = parse_spdx_debs(CAPTURED_SPDX)

    assert debs.packages == (FAKE_DATA, LIBFAKE)
    assert debs.unidentified == ()
    assert debs.tool == "syft-1.18.1"


def test_parse_spdx_reports_dpkg_entries_without_purls() -> None:
    debs = parse_spdx_debs(CAPTURED_SPDX_NO_OS_RELEASE)

    assert debs.packages == ()
    assert debs.unidentified == ("fake-data 2024a-0+deb12u1", "libfake1 1:2.3+dfsg-4~deb12u1")


def test_parse_spdx_of_an_empty_document() -> None:
    assert parse_spdx_debs({}).packages == ()


@pytest.mark.parametrize(
    ("purl", "expected"),
    [
        ("pkg:deb/debian/libc6@2.36-9%2Bdeb12u9?arch=amd64&distro=debian-12", "2.36-9+deb12u9"),
        ("pkg:deb/debian/x@1%3A2.0-1?arch=amd64", "1:2.0-1"),
        ("pkg:deb/debian/x@1:2.0-1?arch=amd64#sub/path", "1:2.0-1"),
    ],
)
def test_parse_deb_purl_decodes_versions(purl: str, expected: str) -> None:
    parsed = parse_deb_purl(purl)

    assert parsed is not None
    assert parsed.version == expected
    assert parsed.architecture == "amd64"


def test_parse_deb_purl_ignores_other_types_and_malformed_purls() -> None:
    assert parse_deb_purl("pkg:oci/static@sha256%3Aabc") is None
    assert parse_deb_purl("pkg:deb/debian/no-version?arch=amd64") is None


def test_parse_version() -> None:
    output = b'{"application": "syft", "version": "1.18.1", "gitCommit": "5e16e50"}'

    assert _syft.parse_version(output) == "1.18.1"
    with pytest.raises(ToolError, match="unexpected"):
        _syft.parse_version(b"syft 1.18.1")


# -- the wrapper's command line, without running syft ---------------------------------


class Recorder:
    def __init__(self) -> None:
        self.argv: list[str] = []
        self.env: Mapping[str, str] = {}

    def __call__(
        self, argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None
    ) -> Completed:
        self.argv, self.env = list(argv), dict(env or {})
        return Completed(tuple(argv), 0, b"", "")


def test_scan_of_a_layout_is_offline_and_writes_both_formats(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    recorder = Recorder()
    monkeypatch.setattr(_syft, "run", recorder)

    _syft.scan(
        _syft.oci_dir_source(tmp_path / "layout"),
        tmp_path / "a.spdx.json",
        tmp_path / "a.cdx.json",
        platform="linux/amd64",
    )

    assert recorder.argv[1:3] == ["scan", f"oci-dir:{tmp_path / 'layout'}"]
    assert f"spdx-json={tmp_path / 'a.spdx.json'}" in recorder.argv
    assert f"cyclonedx-json={tmp_path / 'a.cdx.json'}" in recorder.argv
    assert recorder.argv[recorder.argv.index("--platform") + 1] == "linux/amd64"
    assert recorder.env["SYFT_CHECK_FOR_APP_UPDATE"] == "false"
    assert "SYFT_REGISTRY_INSECURE_USE_HTTP" not in recorder.env


def test_scan_of_a_registry_passes_http_and_ca_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    recorder = Recorder()
    monkeypatch.setattr(_syft, "run", recorder)

    _syft.scan(
        _syft.registry_source("127.0.0.1:5000/static@sha256:" + "0" * 64),
        tmp_path / "a.spdx.json",
        tmp_path / "a.cdx.json",
        insecure_http=True,
        ca_file=tmp_path / "ca.pem",
    )

    assert recorder.argv[2] == "registry:127.0.0.1:5000/static@sha256:" + "0" * 64
    assert recorder.env["SYFT_REGISTRY_INSECURE_USE_HTTP"] == "true"
    assert recorder.env["SYFT_REGISTRY_CA_CERT"] == str(tmp_path / "ca.pem")


# -- reading an SBOM ------------------------------------------------------------------


def test_read_sbom(tmp_path: Path) -> None:
    spdx = tmp_path / "sbom.spdx.json"
    spdx.write_text(json.dumps(CAPTURED_SPDX))

    sbom = read_sbom(spdx, tmp_path / "sbom.cdx.json")

    assert sbom.packages == (FAKE_DATA, LIBFAKE)
    assert sbom.tool == "syft-1.18.1"


def test_read_sbom_explains_an_image_without_os_release(tmp_path: Path) -> None:
    spdx = tmp_path / "sbom.spdx.json"
    spdx.write_text(json.dumps(CAPTURED_SPDX_NO_OS_RELEASE))

    with pytest.raises(SbomError, match="os-release") as caught:
        read_sbom(spdx, tmp_path / "sbom.cdx.json")
    assert "libfake1" in caught.value.message


def test_read_sbom_rejects_a_broken_document(tmp_path: Path) -> None:
    spdx = tmp_path / "sbom.spdx.json"
    spdx.write_text("{not json")

    with pytest.raises(SbomError, match="not a readable SPDX"):
        read_sbom(spdx, tmp_path / "sbom.cdx.json")


# -- the cross-check ------------------------------------------------------------------


def test_cross_check_passes_when_everything_matches() -> None:
    lock = [
        locked("libfake1", "1:2.3+dfsg-4~deb12u1"),
        locked("fake-data", "2024a-0+deb12u1", "all"),
    ]

    check = cross_check([LIBFAKE, FAKE_DATA], lock)

    assert check.ok
    assert check.matched == (FAKE_DATA, LIBFAKE)
    assert check.problems() == []


def test_cross_check_names_a_missing_package() -> None:
    lock = [
        locked("libfake1", "1:2.3+dfsg-4~deb12u1"),
        locked("fake-data", "2024a-0+deb12u1", "all"),
    ]

    with pytest.raises(SbomMismatchError) as caught:
        cross_check([LIBFAKE], lock)

    assert caught.value.exit_code == ExitCode.FAILURE
    assert [p.name for p in caught.value.check.missing] == ["fake-data"]
    assert "missing: fake-data 2024a-0+deb12u1 (all)" in caught.value.message


def test_cross_check_names_an_extra_package() -> None:
    intruder = DebPackage("netcat-openbsd", "1.219-1", "amd64")

    with pytest.raises(SbomMismatchError) as caught:
        cross_check([LIBFAKE, intruder], [locked("libfake1", "1:2.3+dfsg-4~deb12u1")])

    assert caught.value.check.extra == (intruder,)
    assert "extra: netcat-openbsd 1.219-1 (amd64) is in the SBOM but not locked" in str(
        caught.value
    )


def test_cross_check_names_a_version_mismatch() -> None:
    with pytest.raises(SbomMismatchError) as caught:
        cross_check([LIBFAKE], [locked("libfake1", "1:2.3+dfsg-3")])

    (mismatch,) = caught.value.check.mismatched
    assert mismatch.found == (LIBFAKE,)
    assert "libfake1 is locked at 1:2.3+dfsg-3 (amd64) but the SBOM has 1:2.3+dfsg-4~deb12u1" in (
        caught.value.message
    )


def test_cross_check_treats_another_architecture_as_a_mismatch() -> None:
    check = compare_packages([LIBFAKE], [locked("libfake1", LIBFAKE.version, "arm64")])

    assert not check.ok
    assert len(check.mismatched) == 1


def test_cross_check_reports_every_difference_at_once() -> None:
    found = [LIBFAKE, DebPackage("bash", "5.2.15-2+b7", "amd64")]
    lock = [locked("libfake1", "0.9-1"), locked("tzdata", "2024a-0+deb12u1", "all")]

    check = compare_packages(found, lock)

    assert len(check.problems()) == 3
    assert [p.split(":")[0] for p in check.problems()] == ["missing", "version", "extra"]


def test_a_package_listed_twice_is_extra_once_matched() -> None:
    twice = [LIBFAKE, DebPackage("libfake1", "1:2.3+dfsg-3", "amd64")]

    check = compare_packages(twice, [locked("libfake1", LIBFAKE.version)])

    assert check.matched == (LIBFAKE,)
    assert check.extra == (DebPackage("libfake1", "1:2.3+dfsg-3", "amd64"),)


# -- the lockfile chain ---------------------------------------------------------------


def write_chain(tmp_path: Path) -> tuple[Path, Lockfile]:
    static = lockfile("static", [locked("base-files", "12.4+deb12u5")])
    write_lockfile(lockfile_path(tmp_path, "static"), static)
    parent = ParentRef(
        recipe="static", lockfile_sha256=file_sha256(lockfile_path(tmp_path, "static"))
    )
    base = lockfile("base", [locked("libc6", "2.36-9+deb12u9")], parent)
    write_lockfile(lockfile_path(tmp_path, "base"), base)
    return tmp_path, base


def test_load_lock_chain_and_union(tmp_path: Path) -> None:
    lockfiles_dir, base = write_chain(tmp_path)

    chain = load_lock_chain(lockfiles_dir, base)

    assert [lock.recipe.name for lock in chain] == ["base", "static"]
    assert [p.name for p in locked_union(chain, "linux/amd64")] == ["base-files", "libc6"]


def test_load_lock_chain_notices_a_changed_parent(tmp_path: Path) -> None:
    lockfiles_dir, base = write_chain(tmp_path)
    changed = lockfile("static", [locked("base-files", "12.4+deb12u6")])
    write_lockfile(lockfile_path(lockfiles_dir, "static"), changed)

    with pytest.raises(LockfileError, match="changed since 'base' was locked"):
        load_lock_chain(lockfiles_dir, base)


def test_locked_union_refuses_two_pins_of_one_package() -> None:
    child = lockfile("child", [locked("libc6", "2.36-9+deb12u9")])
    parent = lockfile("parent", [locked("libc6", "2.36-9+deb12u7")])

    with pytest.raises(LockfileError, match="libc6 is locked at"):
        locked_union([child, parent], "linux/amd64")
