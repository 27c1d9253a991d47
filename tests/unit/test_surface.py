"""The attack-surface report and the budgets a build must keep, on small images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from basekiln.errors import BuildError
from basekiln.oci import FileEntry, read_image, write_image
from basekiln.recipe import Budgets
from basekiln.surface import (
    Surface,
    budget_violations,
    check_budgets,
    examine,
    format_text,
    markdown_table,
    report_command,
)

STATUS = b"""Package: dpkg
Status: install ok installed
Version: 1.21.23

Package: gone
Status: deinstall ok config-files
Version: 1.0

"""


def _dir(path: str, mode: int = 0o755) -> FileEntry:
    return FileEntry(path, kind="dir", mode=mode)


def _image(tmp_path: Path, layers: list[list[FileEntry]]) -> Path:
    layout = tmp_path / "oci"
    write_image(layout, layers)
    return layout


@pytest.fixture
def risky(tmp_path: Path) -> Path:
    """An image with one of everything the report looks for, over two layers."""
    base = [
        _dir("bin"),
        FileEntry("bin/dash", data=b"\x7fELF shell", mode=0o755),
        FileEntry("bin/sh", kind="symlink", target="dash"),
        FileEntry("bin/su", data=b"\x7fELF su", mode=0o4755),
        FileEntry("bin/wall", data=b"\x7fELF wall", mode=0o2755),
        FileEntry("bin/dpkg", data=b"\x7fELF dpkg", mode=0o755),
        FileEntry("bin/bash", kind="symlink", target="/nowhere/bash"),  # dangling
        _dir("tmp", 0o1777),
        _dir("srv", 0o777),
        FileEntry("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n", mode=0o666),
        FileEntry("var/lib/dpkg/status", data=STATUS),
        FileEntry("var/lib/dpkg/status.d/tzdata", data=b"Package: tzdata\nVersion: 1\n"),
        FileEntry("var/lib/dpkg/status.d/tzdata.md5sums", data=b"00  usr/share/zoneinfo\n"),
        FileEntry("usr/lib/python3/dist-packages/pip/__init__.py", data=b""),
    ]
    top = [
        FileEntry("etc/.wh.passwd", data=b""),  # the child removes the loose passwd
        FileEntry("usr/bin/pip3.11", data=b"#!/usr/bin/python3\n", mode=0o755),
    ]
    return _image(tmp_path, [base, top])


def test_the_report_finds_every_kind_of_exposure(risky: Path) -> None:
    surface = examine(read_image(risky), parent_layers=1)

    assert surface.layers == 2
    assert surface.packages == ("dpkg", "tzdata")  # not a package dpkg removed
    assert surface.setuid == ("/bin/su",)
    assert surface.setgid == ("/bin/wall",)
    assert surface.world_writable == ("/srv", "/tmp (sticky)")  # passwd was removed
    assert surface.shells == ("/bin/dash", "/bin/sh")  # not the dangling bash link
    assert surface.package_managers == (
        "/bin/dpkg",
        "/usr/bin/pip3.11",
        "/usr/lib/python3/dist-packages/pip",
    )
    assert surface.files == 9
    image = read_image(risky)
    assert surface.compressed_bytes == sum(layer.size for layer in image.layers)
    assert surface.own_compressed_bytes == image.layers[1].size
    assert surface.uncompressed_bytes > surface.compressed_bytes


def test_a_clean_image_is_within_strict_budgets(tmp_path: Path) -> None:
    layout = _image(
        tmp_path,
        [[_dir("tmp", 0o1777), FileEntry("etc/os-release", data=b"ID=debian\n")]],
    )
    image = read_image(layout)
    surface = check_budgets("clean", Budgets(max_packages=1, max_files=1), image, None)
    assert surface.shells == surface.setuid == surface.package_managers == ()
    assert budget_violations(surface, Budgets()) == []


def test_every_budget_overrun_is_reported_with_its_size(risky: Path) -> None:
    image = read_image(risky)
    budgets = Budgets(
        max_compressed_bytes=100,
        max_uncompressed_bytes=1000,
        max_packages=1,
        max_files=6,
    )
    with pytest.raises(BuildError) as caught:
        check_budgets("risky", budgets, image, None)
    message = caught.value.message

    surface = examine(image)
    over = surface.compressed_bytes - 100
    assert f"over max_compressed_bytes (100) by {over:,} bytes" in message
    assert "packages is 2 packages, over max_packages (1) by 1 packages (100.0%)" in message
    assert "files is 9 files, over max_files (6) by 3 files (50.0%)" in message
    assert "max_uncompressed_bytes" in message
    assert "setuid or setgid files, which allow_setuid forbids: /bin/su, /bin/wall" in message
    assert "a shell, which allow_shell forbids: /bin/dash, /bin/sh" in message
    assert "package manager, which allow_package_manager forbids: /bin/dpkg" in message
    assert "world-writable paths, which allow_world_writable forbids: /srv" in message
    assert message.startswith("risky: over budget (8 of the recipe's budgets)")


def test_allowances_silence_only_what_they_allow(risky: Path) -> None:
    surface = examine(read_image(risky))
    allowed = Budgets(
        allow_setuid=True,
        allow_shell=True,
        allow_package_manager=True,
        allow_world_writable=True,
    )
    assert budget_violations(surface, allowed) == []
    problems = budget_violations(surface, Budgets(allow_shell=True, allow_setuid=True))
    assert [p.split(",")[0] for p in problems] == [
        "a package manager",
        "world-writable paths",
    ]


def test_text_and_markdown_name_the_image_and_its_findings(risky: Path) -> None:
    surface = examine(read_image(risky))
    text = format_text("risky", surface)
    assert "setuid            /bin/su\n" in text
    assert "shells            /bin/dash, /bin/sh\n" in text
    table = markdown_table({"risky": surface})
    assert table.splitlines()[2].startswith("| risky | ")
    assert "/bin/su, /bin/wall" in table


def test_the_report_command_reads_a_layout_or_a_built_recipe(
    risky: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BASEKILN_CONFIG", raising=False)
    (tmp_path / "basekiln.toml").write_text("")
    runner = CliRunner()

    by_layout = runner.invoke(report_command, [str(risky), "--json"])
    assert by_layout.exit_code == 0, by_layout.output
    data = json.loads(by_layout.output)
    assert data["setuid"] == ["/bin/su"]
    assert Surface(**{k: v for k, v in data.items() if k != "image"}).layers == 2

    out = tmp_path / "out" / "risky"
    out.mkdir(parents=True)
    (out / "build.json").write_text(json.dumps({"oci_layout": str(risky)}))
    by_name = runner.invoke(report_command, ["risky"])
    assert by_name.exit_code == 0, by_name.output
    assert by_name.output.startswith("image             risky\n")

    missing = runner.invoke(report_command, ["nothing-built"])
    assert missing.exit_code == 2
    assert "basekiln build nothing-built" in missing.output


def test_nightly_surfaces_are_cached_per_digest(tmp_path: Path) -> None:
    import json as _json

    from basekiln.oci import FileEntry, write_image
    from basekiln.surface import surfaces_of

    layout = tmp_path / "out" / "tiny" / "oci"
    layout.mkdir(parents=True)
    descriptor = write_image(
        layout, [[FileEntry("bin", kind="dir"), FileEntry("bin/sh", b"#!", 0o4755)]]
    )
    (tmp_path / "out" / "tiny" / "build.json").write_text(
        _json.dumps(
            {
                "digest": descriptor.digest,
                "oci_layout": str(layout),
                "platform": "linux/amd64",
                "parent_digest": None,
            }
        )
    )
    first = surfaces_of(tmp_path / "out", ["tiny", "absent"], "linux/amd64")
    assert list(first) == ["tiny"] and first["tiny"].setuid == ("/bin/sh",)
    assert (tmp_path / "out" / "tiny" / "surface.json").is_file()
    assert surfaces_of(tmp_path / "out", ["tiny"], "linux/amd64") == first
