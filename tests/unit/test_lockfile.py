"""The lockfile format: canonical bytes, integrity, and the errors a person sees."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from basekiln import lockfile as lockfile_module
from basekiln.errors import ExitCode, LockfileError
from basekiln.lockfile import (
    LockedPackage,
    LockedRelease,
    Lockfile,
    RecipeRef,
    canonical_bytes,
    read_lockfile,
    write_lockfile,
)


def package(name: str, version: str = "1.0", platform: str = "linux/amd64") -> LockedPackage:
    return LockedPackage(
        name=name,
        version=version,
        architecture="amd64",
        platform=platform,
        sha256=hashlib.sha256(f"{name} {version}".encode()).hexdigest(),
        size=1234,
        filename=f"pool/main/{name[0]}/{name}/{name}_{version}_amd64.deb",
        source=name,
        source_version=version,
        archive="debian",
        suite="bookworm",
        depends_on=[],
        dependencies_followed=True,
    )


def sample(packages: list[LockedPackage] | None = None) -> Lockfile:
    return Lockfile(
        recipe=RecipeRef(name="static", path="recipes/static.yaml", sha256="a" * 64),
        parent=None,
        platforms=["linux/amd64"],
        source_date_epoch=1717408800,
        mirrors={"debian": ["http://deb.debian.org/debian"]},
        releases=[
            LockedRelease(
                archive="debian",
                suite="bookworm",
                url="http://deb.debian.org/debian/dists/bookworm/InRelease",
                sha256="b" * 64,
                date="Sat, 01 Jun 2024 10:00:00 UTC",
            )
        ],
        packages=packages if packages is not None else [package("netbase"), package("tzdata")],
    )


def with_integrity(body: dict[str, Any]) -> bytes:
    """Serialise `body` as basekiln would, integrity included, to test checks after it."""
    dump = (json.dumps(body, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()
    body = {**body, "integrity": "sha256:" + hashlib.sha256(dump).hexdigest()}
    return (json.dumps(body, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


def test_canonical_bytes_are_stable_and_order_independent() -> None:
    forwards = sample([package("netbase"), package("tzdata"), package("base-files")])
    backwards = sample([package("base-files"), package("tzdata"), package("netbase")])
    data = canonical_bytes(forwards)
    assert data == canonical_bytes(forwards)
    assert data == canonical_bytes(backwards)
    assert data.endswith(b"}\n")
    parsed = json.loads(data)
    assert list(parsed) == sorted(parsed)
    assert [p["name"] for p in parsed["packages"]] == ["base-files", "netbase", "tzdata"]
    assert parsed["integrity"].startswith("sha256:")


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "static.lock.json"
    lock = sample()
    assert write_lockfile(path, lock) is True
    assert write_lockfile(path, lock) is False  # same bytes: left alone
    assert read_lockfile(path) == lock
    assert path.read_bytes() == canonical_bytes(read_lockfile(path))


def test_integrity_catches_a_hand_edit(tmp_path: Path) -> None:
    path = tmp_path / "static.lock.json"
    write_lockfile(path, sample())
    path.write_text(path.read_text().replace('"version": "1.0"', '"version": "1.1"', 1))
    with pytest.raises(LockfileError) as caught:
        read_lockfile(path)
    assert caught.value.exit_code is ExitCode.INPUT
    assert f"{path}: integrity is " in caught.value.message
    assert "edited by hand" in caught.value.message


def test_bad_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "static.lock.json"
    path.write_text('{\n  "lockfile_version": 1,\n  "recipe": \n}\n')
    with pytest.raises(LockfileError, match=rf"^{path}:4: not valid JSON"):
        read_lockfile(path)


def test_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "static.lock.json"
    path.write_text("[]\n")
    with pytest.raises(LockfileError, match="not a lockfile object"):
        read_lockfile(path)


def test_missing_lockfile_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(LockfileError, match="no lockfile; run `basekiln lock static`"):
        read_lockfile(tmp_path / "static.lock.json")


def test_schema_errors_name_each_field(tmp_path: Path) -> None:
    body = json.loads(canonical_bytes(sample()))
    del body["integrity"]
    body["packages"][0]["sha256"] = "not-a-digest"
    del body["source_date_epoch"]
    body["surprise"] = True
    path = tmp_path / "static.lock.json"
    path.write_bytes(with_integrity(body))
    with pytest.raises(LockfileError) as caught:
        read_lockfile(path)
    message = caught.value.message
    assert message.startswith(f"{path}: ")
    assert "packages.0.sha256: String should match pattern" in message
    assert "source_date_epoch: Field required" in message
    assert "surprise: Extra inputs are not permitted" in message


def test_unsupported_version(tmp_path: Path) -> None:
    body = json.loads(canonical_bytes(sample()))
    del body["integrity"]
    body["lockfile_version"] = 99
    path = tmp_path / "static.lock.json"
    path.write_bytes(with_integrity(body))
    with pytest.raises(LockfileError, match="lockfile_version 99 is not supported"):
        read_lockfile(path)


def test_atomic_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "lockfiles" / "static.lock.json"
    write_lockfile(path, sample())
    assert sorted(p.name for p in path.parent.iterdir()) == ["static.lock.json"]
    assert path.stat().st_mode & 0o777 == 0o644


def test_failed_write_keeps_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "static.lock.json"
    write_lockfile(path, sample())
    before = path.read_bytes()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(lockfile_module.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_lockfile(path, sample([package("netbase", "2.0")]))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["static.lock.json"]


def test_whitespace_edit_is_refused_as_not_canonical(tmp_path: Path) -> None:
    path = tmp_path / "x.lock.json"
    write_lockfile(path, sample())
    text = path.read_text()
    path.write_text(text.replace('\n  "', '\n    "', 1))
    with pytest.raises(LockfileError, match="not in canonical form"):
        read_lockfile(path)
