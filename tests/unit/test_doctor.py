"""doctor.parse_version on the --version text each tool really prints."""

from __future__ import annotations

import pytest

from basekiln.doctor import keyring_status, parse_version

SAMPLES = {
    "gpgv": (
        "gpgv (GnuPG) 2.2.40\nlibgcrypt 1.10.1\nCopyright (C) 2022 g10 Code GmbH\n",
        "2.2.40",
    ),
    "runc": (
        "runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\nspec: 1.0.2-dev\n"
        "go: go1.19.8\nlibseccomp: 2.5.4\n",
        "1.1.5+ds1",
    ),
    "buildctl": ("buildctl github.com/moby/buildkit v0.34.2 \n", "v0.34.2"),
    "buildkitd": (
        "buildkitd github.com/moby/buildkit v0.16.0 5ae7bc4b5e0ca7a1d3a1a3e8b4a3f1c9d2e6f7a8\n",
        "v0.16.0",
    ),
    "dpkg-deb": (
        "Debian 'dpkg-deb' package archive backend version 1.21.22 (amd64).\n"
        "This is free software; see the GNU General Public License version 2 or\n",
        "1.21.22",
    ),
    "mmdebstrap": ("mmdebstrap 1.3.5\n", "1.3.5"),
    "docker-registry": ("docker-registry github.com/docker/distribution 2.8.2+ds1\n", "2.8.2+ds1"),
    "syft": (
        "Application: syft\nVersion:    1.18.1\nBuildDate:  2024-12-13T18:41:10Z\n"
        "GitCommit:  5e16e5031a13f8a11057feb8544decebfc43b4ed\nGoVersion:  go1.23.4\n",
        "1.18.1",
    ),
    "cosign": (
        "  ______   ______ \n /      | /  __  \\ \ncosign: A tool for Container Signing.\n\n"
        "GitVersion:    v2.2.4\nGitCommit:     unknown\nGoVersion:     go1.22.2\n",
        "v2.2.4",
    ),
    "diffoscope": ("diffoscope 240\n", "240"),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_parse_version(name: str) -> None:
    text, expected = SAMPLES[name]
    assert parse_version(name, text) == expected


def test_a_development_build_has_no_version() -> None:
    text = "cosign: A tool for Container Signing.\n\nGitVersion:    devel\nGoVersion: go1.22\n"
    assert parse_version("cosign", text) == "unknown"
    assert parse_version("gpgv", "") == "unknown"


def test_keyring_status() -> None:
    missing = keyring_status("/nonexistent/keyring.gpg")
    assert (missing.found, missing.version) == (False, "")
    assert "debian-archive-keyring" in missing.remedy
