"""The real syft over small images: SBOMs of OCI layouts and of a loopback registry."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from basekiln import _syft
from basekiln._syft import DebPackage
from basekiln.lockfile import LockedPackage
from basekiln.oci import FileEntry, LayoutError
from basekiln.sbom import (
    Sbom,
    SbomError,
    SbomMismatchError,
    cross_check,
    generate_sbom,
    generate_sbom_from_registry,
)
from tests.fixtures.images import FakeDeb, push_layout, write_dpkg_image

pytestmark = pytest.mark.slow

LIBFAKE = FakeDeb(
    "libfake1",
    "1:2.3+dfsg-4~deb12u1",
    "amd64",
    source="fake",
    source_version="2.3+dfsg-4~deb12u1",
    depends="libc6 (>= 2.34)",
    files={"usr/lib/x86_64-linux-gnu/libfake.so.1": b"\x7fELF not really\n"},
)
FAKE_DATA = FakeDeb(
    "fake-data", "2024a-0+deb12u1", "all", files={"usr/share/fake-data/zone.tab": b"UTC\n"}
)
INTRUDER = FakeDeb("netcat-fake", "1.219-1", "amd64", files={"usr/bin/nc.fake": b"#!/bin/sh\n"})
HOSTNAME = FileEntry("etc/hostname", data=b"kiln\n")


def lock_of(deb: FakeDeb, version: str | None = None) -> LockedPackage:
    version = version or deb.version
    return LockedPackage(
        name=deb.name,
        version=version,
        architecture=deb.architecture,
        platform="linux/amd64",
        sha256="0" * 64,
        size=1,
        filename=f"pool/main/f/{deb.name}/{deb.name}_{version}_{deb.architecture}.deb",
        source=deb.source or deb.name,
        source_version=deb.source_version or version,
        archive="debian",
        suite="bookworm",
        depends_on=[],
        dependencies_followed=True,
    )


LOCKED = [lock_of(LIBFAKE), lock_of(FAKE_DATA)]


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory) -> Sbom:
    root = tmp_path_factory.mktemp("sbom")
    write_dpkg_image(root / "layout", [LIBFAKE, FAKE_DATA], extra=[HOSTNAME])
    return generate_sbom(root / "layout", root / "out", name="registry.example/fake")


def test_syft_version_is_the_pinned_one() -> None:
    assert _syft.version() == "1.18.1"


def test_sbom_of_a_layout_matches_its_lock(scanned: Sbom) -> None:
    check = cross_check(scanned.packages, LOCKED)

    assert check.matched == (
        DebPackage("fake-data", "2024a-0+deb12u1", "all"),
        DebPackage("libfake1", "1:2.3+dfsg-4~deb12u1", "amd64"),
    )
    assert scanned.tool == "syft-1.18.1"


def test_sbom_writes_spdx_and_cyclonedx(scanned: Sbom) -> None:
    spdx = json.loads(scanned.spdx_json.read_bytes())
    cyclonedx = json.loads(scanned.cyclonedx_json.read_bytes())

    assert spdx["spdxVersion"] == "SPDX-2.3"
    assert spdx["name"] == "registry.example/fake"
    assert cyclonedx["bomFormat"] == "CycloneDX"
    names = {c["name"] for c in cyclonedx["components"] if c.get("purl", "").startswith("pkg:deb")}
    assert names == {"libfake1", "fake-data"}


def test_sbom_names_a_version_the_lock_does_not_have(scanned: Sbom) -> None:
    with pytest.raises(SbomMismatchError, match=re.escape("libfake1 is locked at 1:2.3-1")):
        cross_check(scanned.packages, [lock_of(LIBFAKE, "1:2.3-1"), lock_of(FAKE_DATA)])


def test_an_unlocked_package_in_the_image_fails_the_cross_check(tmp_path: Path) -> None:
    write_dpkg_image(tmp_path / "layout", [LIBFAKE, FAKE_DATA, INTRUDER], extra=[HOSTNAME])

    sbom = generate_sbom(tmp_path / "layout", tmp_path / "out")

    with pytest.raises(SbomMismatchError) as caught:
        cross_check(sbom.packages, LOCKED)
    assert caught.value.check.extra == (DebPackage("netcat-fake", "1.219-1", "amd64"),)
    assert "extra: netcat-fake 1.219-1 (amd64)" in caught.value.message


def test_an_image_without_os_release_is_explained(tmp_path: Path) -> None:
    write_dpkg_image(tmp_path / "layout", [LIBFAKE], os_release=False)

    with pytest.raises(SbomError, match="os-release"):
        generate_sbom(tmp_path / "layout", tmp_path / "out")


def test_a_platform_the_layout_lacks_is_refused_before_scanning(tmp_path: Path) -> None:
    write_dpkg_image(tmp_path / "layout", [LIBFAKE])

    with pytest.raises(LayoutError, match="linux/arm64"):
        generate_sbom(tmp_path / "layout", tmp_path / "out", platform="linux/arm64")
    assert not (tmp_path / "out").exists()


# -- a loopback registry over plain HTTP ----------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    program = shutil.which("docker-registry") or shutil.which("registry")
    if program is None:
        pytest.skip("no docker-registry (CNCF distribution) installed")
    address = f"127.0.0.1:{_free_port()}"
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'data'}\n"
        f"http:\n  addr: {address}\n"
        "log:\n  level: error\n"
    )
    proc = subprocess.Popen(
        [program, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_for(f"http://{address}/v2/", proc)
        yield address
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _wait_for(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the registry exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    pytest.fail(f"the registry did not answer at {url}")


def test_sbom_of_an_image_in_a_plain_http_registry(registry: str, tmp_path: Path) -> None:
    write_dpkg_image(tmp_path / "layout", [LIBFAKE, FAKE_DATA], extra=[HOSTNAME])
    digest = push_layout(tmp_path / "layout", registry, "basekiln/fake", "candidate")

    sbom = generate_sbom_from_registry(
        f"{registry}/basekiln/fake@{digest}", tmp_path / "out", insecure_http=True
    )

    assert cross_check(sbom.packages, LOCKED).ok
