"""Shared fixtures: a signed test archive, a mirror serving it, and throwaway projects."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from basekiln.cache import sha256_file
from basekiln.cli import cli
from tests.fixtures.archive import ArchiveTree, SigningKey, default_suites
from tests.fixtures.httpserver import ArchiveServer

BASEKILN = Path(sys.executable).parent / "basekiln"

STATIC_RECIPE = """\
name: static
description: files a static program reads, nothing else
packages:
  - {name: base-files, dependencies: false}
  - netbase
  - {name: tzdata, dependencies: false}
  - media-types
  - name: ca-certificates
    dependencies: false
"""

BASE_RECIPE = """\
name: base
parent: static
packages:
  - libc6
  - libssl3
"""


@pytest.fixture(scope="session")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SigningKey]:
    """The key the test archive is signed with (its public half is the keyring)."""
    key = SigningKey.generate(
        tmp_path_factory.mktemp("gpg-archive"), "basekiln test archive <archive@basekiln.invalid>"
    )
    yield key
    key.close()


@pytest.fixture(scope="session")
def rogue_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SigningKey]:
    """A key nobody trusts, for signatures that must be refused."""
    key = SigningKey.generate(
        tmp_path_factory.mktemp("gpg-rogue"), "not the archive <rogue@basekiln.invalid>"
    )
    yield key
    key.close()


@pytest.fixture(scope="session")
def archive_template(
    tmp_path_factory: pytest.TempPathFactory, signing_key: SigningKey
) -> ArchiveTree:
    """The default archive, built and signed once per session; tests get copies."""
    base = tmp_path_factory.mktemp("archive-template")
    tree = ArchiveTree(base / "root", signing_key, default_suites(), deb_cache=base / "debs")
    tree.publish()
    return tree


@pytest.fixture
def archive(archive_template: ArchiveTree, tmp_path: Path) -> ArchiveTree:
    """This test's own copy of the archive, free to change and publish again."""
    return archive_template.copy_to(tmp_path / "archive")


@pytest.fixture
def server(archive: ArchiveTree) -> Iterator[ArchiveServer]:
    """A mirror serving this test's archive: `<url>/debian`, `<url>/debian-security`."""
    with ArchiveServer(archive.root) as served:
        yield served


@dataclass(frozen=True)
class Project:
    """A throwaway basekiln checkout: basekiln.toml, recipes/ and lockfiles/."""

    root: Path

    @property
    def recipes(self) -> Path:
        return self.root / "recipes"

    @property
    def lockfiles(self) -> Path:
        return self.root / "lockfiles"

    @property
    def cache(self) -> Path:
        override = os.environ.get("BASEKILN_CACHE")
        return Path(override) if override else self.root / ".cache" / "basekiln"

    def write_recipe(self, name: str, text: str) -> Path:
        path = self.recipes / f"{name}.yaml"
        path.write_text(textwrap.dedent(text))
        return path

    def lockfile(self, name: str) -> Path:
        return self.lockfiles / f"{name}.lock.json"

    def lock_data(self, name: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.lockfile(name).read_text())
        return data

    def locked_versions(self, name: str) -> dict[str, str]:
        return {p["name"]: p["version"] for p in self.lock_data(name)["packages"]}

    def cached(self) -> dict[str, Path]:
        folder = self.cache / "sha256"
        return {p.name: p for p in folder.iterdir()} if folder.is_dir() else {}

    def cli(self, *args: str) -> Result:
        """Run `basekiln ARGS` in-process, from the project's root."""
        previous = Path.cwd()
        os.chdir(self.root)
        try:
            return CliRunner().invoke(cli, list(args), catch_exceptions=False)
        finally:
            os.chdir(previous)

    def subprocess(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run the installed `basekiln` entry point, as a user would."""
        return subprocess.run(
            [str(BASEKILN), *args],
            cwd=cwd or self.root,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def assert_no_leftovers(self) -> None:
        """No temporary lockfile, and every cache entry is exactly the bytes its name says."""
        if self.lockfiles.is_dir():
            temporary = [p.name for p in self.lockfiles.iterdir() if p.name.startswith(".")]
            assert temporary == []
        for name, path in self.cached().items():
            assert sha256_file(path) == name, f"cache entry {path} does not match its name"


def write_project(
    root: Path,
    archives: Mapping[str, list[str]],
    keyring: Path,
    *,
    attempts: int = 3,
    parallel: int = 4,
    timeout: float = 10,
) -> Project:
    """Write basekiln.toml (archives pointing at `archives`' mirrors), recipes/ and lockfiles/."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "recipes").mkdir(exist_ok=True)
    (root / "lockfiles").mkdir(exist_ok=True)
    lines = [
        "[cache]",
        'dir = ".cache/basekiln"',
        "",
        "[fetch]",
        f"parallel = {parallel}",
        f"timeout_seconds = {timeout}",
        f"attempts = {attempts}",
    ]
    for name, mirrors in archives.items():
        lines += [
            "",
            f"[archives.{name}]",
            f"mirrors = {json.dumps(mirrors)}",
            f"keyring = {json.dumps(str(keyring))}",
        ]
    (root / "basekiln.toml").write_text("\n".join(lines) + "\n")
    return Project(root)


@pytest.fixture
def project(
    tmp_path: Path,
    server: ArchiveServer,
    archive: ArchiveTree,
    monkeypatch: pytest.MonkeyPatch,
) -> Project:
    """A project whose archives are the test mirror, with `static` and `base` recipes."""
    monkeypatch.delenv("BASEKILN_CONFIG", raising=False)
    monkeypatch.delenv("BASEKILN_CACHE", raising=False)
    mirrors = {name: [f"{server.url}/{name}"] for name in ("debian", "debian-security")}
    proj = write_project(tmp_path / "project", mirrors, archive.key.keyring)
    proj.write_recipe("static", STATIC_RECIPE)
    proj.write_recipe("base", BASE_RECIPE)
    return proj
