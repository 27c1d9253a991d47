"""Static image tests on small layouts written with basekiln.oci."""

from __future__ import annotations

from pathlib import Path

from basekiln.imagetest import (
    check_file,
    check_metadata,
    command_argv,
    image_files,
    judge_command,
    read_file,
    resolve,
)
from basekiln.oci import FileEntry, read_image, write_image
from basekiln.recipe import CommandTest, FileTest, MetadataTest


def _image(tmp_path: Path):  # type: ignore[no-untyped-def]
    lower = [
        FileEntry("bin", kind="dir", mode=0o755),
        FileEntry("bin/sh", b"#!", 0o755),
        FileEntry("usr", kind="dir", mode=0o755),
        FileEntry("usr/lib", kind="dir"),
        FileEntry("lib", kind="symlink", target="usr/lib"),
        FileEntry("usr/lib/os-release", b"ID=debian\n"),
        FileEntry("home", kind="dir"),
        FileEntry("home/u", kind="dir", mode=0o700, uid=7),
    ]
    upper = [FileEntry("bin/.wh.sh")]
    write_image(tmp_path, [lower, upper], config={"config": {"User": "7", "Env": ["A=1"]}})
    return read_image(tmp_path)


def test_whiteouts_symlinks_and_file_checks(tmp_path: Path) -> None:
    image = _image(tmp_path)
    files = image_files(image)
    assert "/bin/sh" not in files
    assert resolve(files, "/lib/os-release") is not None

    def read(path: str) -> bytes:
        return read_file(image, path)

    assert check_file(files, FileTest(name="no shell", path="/bin/sh", present=False), read).passed
    assert check_file(files, FileTest(name="home", path="/home/u", mode="0700", uid=7), read).passed
    wrong = check_file(files, FileTest(name="home", path="/home/u", uid=0), read)
    assert not wrong.passed and "owner uid is 7" in wrong.detail
    assert check_file(
        files, FileTest(name="os", path="/lib/os-release", contains="debian"), read
    ).passed


def test_metadata_checks(tmp_path: Path) -> None:
    image = _image(tmp_path)
    assert check_metadata(image.config, MetadataTest(name="m", user="7", env={"A": "1"})).passed
    failed = check_metadata(image.config, MetadataTest(name="m", user="0"))
    assert not failed.passed and "user is '7'" in failed.detail


def test_command_judgement_and_argv() -> None:
    test = CommandTest(name="id", command=["/bin/id", "-u"], stdout="^0$")
    assert command_argv(2, test)[-2:] == ["/bin/id", "-u"]
    assert judge_command(test, 0, "0\n", "").passed
    failed = judge_command(test, 1, "65532\n", "oops")
    assert not failed.passed and "exit code 1" in failed.detail and "65532" in failed.detail
