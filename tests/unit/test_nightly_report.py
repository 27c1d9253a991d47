"""The nightly report: package changes, sizes, Markdown, JSON, files, exit codes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from basekiln.config import load_config
from basekiln.nightly import ImageOutcome, Relock, Status
from basekiln.report import NightlyReport, human_size, package_changes, write_report

STARTED = datetime(2026, 6, 1, 3, 0, tzinfo=UTC)
FINISHED = datetime(2026, 6, 1, 3, 1, 30, tzinfo=UTC)
DIGEST = "sha256:" + "b" * 64


def test_package_changes_use_debian_version_order() -> None:
    old = {"libc6": "2.36-9+deb12u4", "tzdata": "2024a-0", "gone": "1.0", "back": "1:2.0"}
    new = {"libc6": "2.36-9+deb12u10", "tzdata": "2024a-0", "fresh": "0.1", "back": "1.9"}
    changes = package_changes(old, new)
    assert changes.added == (("fresh", "0.1"),)
    assert changes.removed == (("gone", "1.0"),)
    # deb12u10 sorts after deb12u4, which a string comparison gets wrong.
    assert changes.upgraded == (("libc6", "2.36-9+deb12u4", "2.36-9+deb12u10"),)
    assert changes.downgraded == (("back", "1:2.0", "1.9"),)
    assert changes.summary() == "+1 −1 ↑1 ↓1"
    assert package_changes(new, new).empty


def outcomes() -> tuple[ImageOutcome, ...]:
    return (
        ImageOutcome(
            "static",
            Status.PUBLISHED,
            "inputs changed since the last publication",
            digest=DIGEST,
            image=f"127.0.0.1:5000/s/static@{DIGEST}",
            reproducible=True,
            tags=("static-latest",),
            size=2_100_000,
            previous_size=2_000_000,
            packages={"tzdata": "2024b-0", "base-files": "12.4"},
            previous_packages={"tzdata": "2024a-0", "base-files": "12.4"},
            seconds=31.2,
        ),
        ImageOutcome(
            "base",
            Status.UNCHANGED,
            "inputs unchanged",
            digest=DIGEST,
            reproducible=True,
            size=9_000_000,
            previous_size=9_000_000,
            packages={"libc6": "2.36"},
            previous_packages={"libc6": "2.36"},
            seconds=0.8,
        ),
        ImageOutcome("python", Status.FAILED, "python: not reproducible\ndetails", exit_code=3),
        ImageOutcome("django", Status.SKIPPED, "its parent python failed"),
    )


def report(images: tuple[ImageOutcome, ...] | None = None) -> NightlyReport:
    relock = Relock(changed=("static",), failed={}, diff="--- a/x\n+++ b/x\n")
    return NightlyReport(
        STARTED, FINISHED, "127.0.0.1:5000/s", False, images or outcomes(), relock, "run-1"
    )


def test_json_has_one_entry_per_image_with_what_changed() -> None:
    data = report().to_json()
    assert data["run"]["seconds"] == 90.0 and data["run"]["exit_code"] == 3
    assert data["summary"] == {
        "published": 1, "unchanged": 1, "reproduced": 0, "failed": 1, "skipped": 1,
    }  # fmt: skip
    static, base, python, django = data["images"]
    assert static["status"] == "published" and static["reproducible"] is True
    assert static["packages"]["upgraded"] == [
        {"name": "tzdata", "from": "2024a-0", "to": "2024b-0"}
    ]
    assert static["size"] == 2_100_000 and static["size_change"] == 100_000
    assert base["packages"] == {"added": [], "removed": [], "upgraded": [], "downgraded": []}
    assert python["reproducible"] is None
    assert python["packages"] is None and python["digest"] is None
    assert django["reason"] == "its parent python failed"
    assert data["lockfiles"]["changed"] == ["static"]


def test_markdown_is_a_table_with_details() -> None:
    text = report().to_markdown({"diff": "reports/nightly.diff"})
    assert "| static | published | `sha256:bbbbbbbbbbbb…` | yes | ↑1 | 2.1 MB (+100.0 kB) |" in text
    assert "| python | **failed** |" in text
    assert "- upgraded: tzdata 2024a-0 → 2024b-0" in text
    assert "- failed: python: not reproducible\n    details" in text
    assert "the diff is `reports/nightly.diff`" in text


def test_exit_codes() -> None:
    images = outcomes()
    assert report(images[:2]).exit_code() == 0
    assert report(images).exit_code() == 3
    other = ImageOutcome("x", Status.FAILED, "lock", exit_code=1)
    assert report((*images, other)).exit_code() == 1


def test_written_as_json_markdown_and_diff(tmp_path: Path) -> None:
    (tmp_path / "basekiln.toml").write_text("")
    files = write_report(load_config(tmp_path), report())
    assert files["json"].endswith("reports/nightly-20260601T030000Z.json")
    data = json.loads(Path(files["json"]).read_text())
    assert data["files"] == files
    assert Path(files["markdown"]).read_text().startswith("# basekiln nightly, 2026-06-01 03:00")
    assert Path(files["diff"]).read_text() == "--- a/x\n+++ b/x\n"
    assert json.loads((tmp_path / "reports" / "latest.json").read_text()) == data


def test_human_sizes() -> None:
    assert human_size(999) == "999 B"
    assert human_size(2_100_000) == "2.1 MB"
    assert human_size(3_000_000_000_000) == "3000.0 GB"


def test_two_reports_of_the_same_second_keep_both(tmp_path: Path) -> None:
    (tmp_path / "basekiln.toml").write_text("")
    config = load_config(tmp_path)
    first, second = write_report(config, report()), write_report(config, report())
    assert first["json"] != second["json"] and second["json"].endswith("Z-2.json")
    assert Path(first["json"]).is_file() and Path(second["markdown"]).is_file()
