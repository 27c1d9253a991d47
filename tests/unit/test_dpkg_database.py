"""The dpkg database basekiln writes for images whose dpkg and apt must work."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

from basekiln.assemble import read_packages
from basekiln.cache import Cache
from basekiln.dpkg_database import (
    database_files,
    info_name,
    is_dropped,
    registered,
    status_paragraph,
    trigger_interests,
)
from basekiln.lockfile import LockedPackage
from basekiln.recipe import Recipe

CONTROL = b"""Package: libdemo1
Version: 1.0-1
Architecture: amd64
Multi-Arch: same
Maintainer: Demo <demo@example.invalid>
Description: a demo library
 with a long description
"""


def _tar(members: dict[str, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _deb(control: dict[str, bytes], data: dict[str, bytes | None]) -> bytes:
    members = [
        ("debian-binary", b"2.0\n"),
        ("control.tar.gz", _tar({f"./{k}": v for k, v in control.items()})),
        ("data.tar.gz", _tar(data)),
    ]
    out = b"!<arch>\n"
    for name, blob in members:
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(blob):<10}`\n"
        out += header.encode() + blob + (b"\n" if len(blob) % 2 else b"")
    return out


def _locked(name: str, sha256: str) -> LockedPackage:
    return LockedPackage(
        name=name,
        version="1.0-1",
        architecture="amd64",
        platform="linux/amd64",
        sha256=sha256,
        size=1,
        filename=f"pool/{name}.deb",
        source=name,
        source_version="1.0-1",
        archive="debian",
        suite="bookworm",
        depends_on=[],
        dependencies_followed=True,
    )


def test_partial_packages_are_not_registered() -> None:
    recipe = Recipe.model_validate(
        {
            "name": "demo",
            "packages": [
                "whole",
                {"name": "alone", "dependencies": False},
                {"name": "some", "paths": ["/etc/x"]},
            ],
        }
    )
    packages = [_locked(n, "a" * 64) for n in ("whole", "alone", "some", "pulled-in")]
    assert [p.name for p in registered(recipe, packages)] == ["whole", "pulled-in"]


def test_drops_match_whole_names_and_shell_wildcards() -> None:
    drop = ["usr/share/doc", "usr/lib/gconv/IBM*"]
    assert is_dropped("usr/share/doc", drop)
    assert is_dropped("usr/share/doc/demo/copyright", drop)
    assert not is_dropped("usr/share/docs", drop)
    assert is_dropped("usr/lib/gconv/IBM1390.so", drop)
    assert not is_dropped("usr/lib/gconv/libIBM.so", drop)
    assert not is_dropped("usr/lib/gconv", drop)


def test_status_is_unpacked_with_conffiles_after_the_description() -> None:
    paragraph = status_paragraph(CONTROL, [("/etc/demo.conf", "0" * 32)]).decode()
    lines = paragraph.rstrip("\n").splitlines()
    assert lines[:2] == ["Package: libdemo1", "Status: install ok unpacked"]
    assert lines[-2:] == ["Conffiles:", f" /etc/demo.conf {'0' * 32}"]
    assert paragraph.endswith("\n\n")
    assert info_name(CONTROL, "libdemo1") == "libdemo1:amd64"
    assert info_name(CONTROL.replace(b"Multi-Arch: same\n", b""), "libdemo1") == "libdemo1"


def test_trigger_interests_keep_their_await_mode() -> None:
    triggers = b"# comment\ninterest-noawait /usr/lib/demo\ninterest ldconfig\nactivate x\n"
    assert trigger_interests(triggers, "demo") == [
        ("/usr/lib/demo", "demo/noawait"),
        ("ldconfig", "demo"),
    ]


def test_database_files_are_what_dpkg_unpack_leaves(tmp_path: Path) -> None:
    conf = b"setting = 1\n"
    deb = _deb(
        {
            "control": CONTROL,
            "md5sums": b"aa  usr/lib/libdemo.so.1\nbb  usr/share/doc/libdemo1/copyright\n",
            "conffiles": b"/etc/demo.conf\n",
            "postinst": b"#!/bin/sh\nexit 0\n",
            "triggers": b"interest-noawait /usr/lib/demo\n",
        },
        {
            "./": None,
            "./etc/": None,
            "./etc/demo.conf": conf,
            "./usr/lib/libdemo.so.1": b"\x7fELF",
            "./usr/share/doc/libdemo1/copyright": b"(c)",
        },
    )
    sha = hashlib.sha256(deb).hexdigest()
    cache = Cache(tmp_path / "cache")
    cache.path(sha).parent.mkdir(parents=True, exist_ok=True)
    cache.path(sha).write_bytes(deb)
    recipe = Recipe.model_validate({"name": "demo", "drop": ["/usr/share/doc"]})

    locked = [_locked("libdemo1", sha)]
    files = {f.path: f for f in database_files(recipe, locked, read_packages(cache, locked))}

    assert sorted(files) == [
        "info/libdemo1:amd64.conffiles",
        "info/libdemo1:amd64.list",
        "info/libdemo1:amd64.md5sums",
        "info/libdemo1:amd64.postinst",
        "info/libdemo1:amd64.triggers",
        "status",
        "triggers/File",
    ]
    assert files["info/libdemo1:amd64.list"].content == (
        b"/.\n/etc\n/etc/demo.conf\n/usr/lib/libdemo.so.1\n"
    )
    assert files["info/libdemo1:amd64.md5sums"].content == b"aa  usr/lib/libdemo.so.1\n"
    assert files["info/libdemo1:amd64.postinst"].mode == 0o755
    md5 = hashlib.md5(conf, usedforsecurity=False).hexdigest()
    assert f" /etc/demo.conf {md5}\n".encode() in files["status"].content
    assert files["triggers/File"].content == b"/usr/lib/demo libdemo1/noawait\n"
