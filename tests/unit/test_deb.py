"""The unpack guard and the .deb reader, on crafted packages."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from basekiln.deb import UnpackGuard, UnsafePackageError, control_files, iter_data, open_deb
from tests.fixtures.buildarchive import CraftedDeb, Member


def _members(*specs: tuple[str, str, str]) -> list[tarfile.TarInfo]:
    members = []
    for name, kind, target in specs:
        info = tarfile.TarInfo(name)
        if kind == "dir":
            info.type = tarfile.DIRTYPE
        elif kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, target
        elif kind == "hardlink":
            info.type, info.linkname = tarfile.LNKTYPE, target
        members.append(info)
    return members


@pytest.mark.parametrize(
    ("specs", "member", "why"),
    [
        ((("./../etc/passwd", "file", ""),), "./../etc/passwd", "'..' component"),
        ((("/etc/passwd", "file", ""),), "/etc/passwd", "absolute path"),
        (
            (("./usr/lib", "symlink", "/etc"), ("./usr/lib/x", "file", "")),
            "./usr/lib/x",
            "written through usr/lib",
        ),
        (
            (("./a/b", "symlink", "../../.."), ("./a/b/c", "file", "")),
            "./a/b/c",
            "written through a/b",
        ),
        ((("./bad", "hardlink", "../../etc/shadow"),), "./bad", "hard link"),
    ],
)
def test_guard_refuses_members_leaving_the_root(
    specs: tuple[tuple[str, str, str], ...], member: str, why: str
) -> None:
    with pytest.raises(UnsafePackageError) as caught:
        UnpackGuard().check("evil", _members(*specs))
    assert "package evil" in caught.value.message
    assert repr(member) in caught.value.message
    assert why in caught.value.message


def test_guard_accepts_ordinary_packages() -> None:
    UnpackGuard().check(
        "libc6",
        _members(
            ("./", "dir", ""),
            ("./lib64", "dir", ""),
            ("./lib64/ld-linux-x86-64.so.2", "symlink", "/lib/x86_64-linux-gnu/ld.so"),
            ("./usr/share/zoneinfo/posix", "symlink", "."),
            ("./usr/share/zoneinfo/posix/UTC", "file", ""),
            ("./usr/bin/a", "file", ""),
            ("./usr/bin/b", "hardlink", "./usr/bin/a"),
        ),
    )


def test_guard_remembers_links_across_packages() -> None:
    guard = UnpackGuard()
    guard.check("first", _members(("./opt", "symlink", "/srv")))
    with pytest.raises(UnsafePackageError, match="package second"):
        guard.check("second", _members(("./opt/file", "file", "")))


def test_a_later_directory_replaces_an_outward_link() -> None:
    UnpackGuard().check(
        "fine",
        _members(("./opt", "symlink", "/srv"), ("./opt", "dir", ""), ("./opt/file", "file", "")),
    )


def test_reads_control_and_data_of_a_crafted_deb(tmp_path: Path) -> None:
    deb_path = tmp_path / "x.deb"
    CraftedDeb(
        "hello",
        "1.0",
        members=(Member("./usr/", "dir", mode=0o755), Member("./usr/hello", data=b"hi")),
    ).build(deb_path)
    deb = open_deb(deb_path, "hello 1.0")
    assert b"Package: hello" in control_files(deb)["control"]
    names = {member.name: content for member, content in iter_data(deb)}
    assert names["./usr/hello"] == b"hi"
