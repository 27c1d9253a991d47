"""A grandchild's lock counts every ancestor's packages as installed, not only its parent's."""

from __future__ import annotations

from pathlib import Path

import pytest

from basekiln.archive import BinaryPackage, parse_packages
from basekiln.config import Config, FileConfig
from basekiln.errors import LockfileError
from basekiln.lock import _ancestor_locks, _installed_from
from basekiln.lockfile import (
    LockedPackage,
    Lockfile,
    ParentRef,
    RecipeRef,
    file_sha256,
    write_lockfile,
)
from basekiln.resolver import Request, Universe, resolve

INDEX = """\
Package: libc6
Version: 2.36-9
Architecture: amd64

Package: libssl3
Version: 3.0.15-1
Architecture: amd64
Depends: libc6 (>= 2.34)

Package: libstdc++6
Version: 12.2.0-14
Architecture: amd64
Depends: libc6 (>= 2.36), libgcc-s1

Package: libgcc-s1
Version: 12.2.0-14
Architecture: amd64
Depends: libc6 (>= 2.35)
"""


def universe() -> Universe:
    stanzas = []
    for n, stanza in enumerate(INDEX.strip().split("\n\n")):
        stanzas.append(stanza + f"\nFilename: pool/{n}.deb\nSize: 1\nSHA256: {n:064x}")
    return Universe(parse_packages("\n\n".join(stanzas).encode(), "debian", "bookworm"))


def locked(pkg: BinaryPackage) -> LockedPackage:
    return LockedPackage(
        name=pkg.name,
        version=pkg.version,
        architecture=pkg.architecture,
        platform="linux/amd64",
        sha256=pkg.sha256,
        size=pkg.size,
        filename=pkg.filename,
        source=pkg.source,
        source_version=pkg.source_version,
        archive=pkg.archive,
        suite=pkg.suite,
        depends_on=[],
        dependencies_followed=True,
    )


def write(config: Config, name: str, parent: str | None, packages: list[str]) -> None:
    world = universe()
    ref = None
    if parent is not None:
        parent_file = config.lockfiles_dir / f"{parent}.lock.json"
        sha = file_sha256(parent_file) if parent_file.exists() else "0" * 64
        ref = ParentRef(recipe=parent, lockfile_sha256=sha)
    lock = Lockfile(
        recipe=RecipeRef(name=name, path=f"recipes/{name}.yaml", sha256="0" * 64),
        parent=ref,
        platforms=["linux/amd64"],
        source_date_epoch=0,
        mirrors={},
        releases=[],
        packages=[locked(world.candidates(p)[0]) for p in packages],
    )
    config.lockfiles_dir.mkdir(exist_ok=True)
    write_lockfile(config.lockfiles_dir / f"{name}.lock.json", lock)


def test_the_whole_chain_counts_as_installed(tmp_path: Path) -> None:
    config = Config(root=tmp_path, file=FileConfig())
    write(config, "static", None, [])
    write(config, "base", "static", ["libc6"])
    write(config, "cc", "base", ["libgcc-s1"])

    chain = _ancestor_locks(config, ParentRef(recipe="cc", lockfile_sha256="0" * 64))
    assert [lock.recipe.name for lock in chain] == ["cc", "base", "static"]
    installed = _installed_from(chain, universe(), "linux/amd64")
    assert sorted(installed) == ["libc6", "libgcc-s1"]

    # A grandchild of base asking for libstdc++6 takes it alone: libc6 (in base, two
    # levels up) and libgcc-s1 (in cc) are already in the image.
    selected = resolve(universe(), [Request("libstdc++6")], installed)
    assert [s.package.name for s in selected] == ["libstdc++6"]
    assert _ancestor_locks(config, None) == []


def test_a_loop_in_the_chain_is_refused(tmp_path: Path) -> None:
    config = Config(root=tmp_path, file=FileConfig())
    write(config, "a", "b", [])
    write(config, "b", "a", [])  # b records a's real digest, so the walk gets round
    with pytest.raises(LockfileError, match="loops back to 'b'"):
        _ancestor_locks(config, ParentRef(recipe="b", lockfile_sha256="0" * 64))
