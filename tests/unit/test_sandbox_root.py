"""Where sandboxes live: the override, a roomy tmpfs, or the temporary directory."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from basekiln import sandbox
from basekiln.assemble import link_or_copy


def _mounts(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "mounts"
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def test_the_environment_names_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BASEKILN_SANDBOX_DIR", str(tmp_path / "mine"))
    assert sandbox.sandbox_root() == tmp_path / "mine"


def test_a_roomy_tmpfs_is_used_in_a_private_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shm = tmp_path / "shm"
    shm.mkdir()
    monkeypatch.delenv("BASEKILN_SANDBOX_DIR", raising=False)
    monkeypatch.setattr(sandbox, "MEMORY_DIR", shm)
    monkeypatch.setattr(sandbox, "MOUNTS", _mounts(tmp_path, f"tmpfs {shm} tmpfs rw,nosuid 0 0"))
    monkeypatch.setattr(sandbox, "MEMORY_MIN_FREE", 1)

    root = sandbox.sandbox_root()

    assert root == shm / "basekiln"
    assert root.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize(
    ("line", "min_free"),
    [
        ("/dev/vda {shm} ext4 rw 0 0", 1),  # not in memory
        ("tmpfs {shm} tmpfs ro 0 0", 1),  # read-only
        ("tmpfs {shm} tmpfs rw 0 0", 1 << 60),  # too small
    ],
)
def test_otherwise_the_temporary_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: str, min_free: int
) -> None:
    shm = tmp_path / "shm"
    shm.mkdir()
    monkeypatch.delenv("BASEKILN_SANDBOX_DIR", raising=False)
    monkeypatch.setattr(sandbox, "MEMORY_DIR", shm)
    monkeypatch.setattr(sandbox, "MOUNTS", _mounts(tmp_path, line.format(shm=shm)))
    monkeypatch.setattr(sandbox, "MEMORY_MIN_FREE", min_free)

    assert sandbox.sandbox_root() == Path(tempfile.gettempdir())
    assert not (shm / "basekiln").exists()


def test_a_directory_another_user_could_write_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shm = tmp_path / "shm"
    (shm / "basekiln").mkdir(parents=True, mode=0o777)
    (shm / "basekiln").chmod(0o777)
    monkeypatch.delenv("BASEKILN_SANDBOX_DIR", raising=False)
    monkeypatch.setattr(sandbox, "MEMORY_DIR", shm)
    monkeypatch.setattr(sandbox, "MOUNTS", _mounts(tmp_path, f"tmpfs {shm} tmpfs rw 0 0"))
    monkeypatch.setattr(sandbox, "MEMORY_MIN_FREE", 1)

    assert sandbox.sandbox_root() == Path(tempfile.gettempdir())


def test_the_last_mount_on_a_path_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        sandbox,
        "MOUNTS",
        _mounts(tmp_path, f"tmpfs {tmp_path} tmpfs rw 0 0", f"/dev/vda {tmp_path} ext4 rw 0 0"),
    )
    assert not sandbox.in_memory(tmp_path)


def test_a_copy_across_file_systems_keeps_the_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The second build context is copied when the sandbox directory is on another file
    # system; a maintainer script that lost its executable bit failed the build.
    script = tmp_path / "preinst"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)

    def no_link(_source: object, _target: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr("basekiln.assemble.os.link", no_link)
    link_or_copy(script, tmp_path / "copy")

    assert (tmp_path / "copy").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "copy").read_text() == "#!/bin/sh\n"
