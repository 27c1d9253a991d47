"""Comparing two builds: verdicts, findings, likely causes and the written report."""

from __future__ import annotations

import gzip
import json
import random
import struct
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import zstandard

from basekiln import _diffoscope, compare
from basekiln.compare import Cause, Finding, Hints, Kind, Outcome, Verdict
from basekiln.errors import NotReproducibleError
from basekiln.oci import (
    MEDIA_LAYER_TAR,
    Compression,
    FileEntry,
    canonical_json,
    detect_compression,
    read_image,
    write_blob,
    write_image,
)
from basekiln.results import SandboxBuild

NOW = 1_760_000_000.0
HINTS = Hints(
    a={"hostname": "basekiln-a", "build_dir": "/tmp/basekiln-a-x1", "tz": "UTC", "umask": "0022"},
    b={
        "hostname": "kiln-b-perturbed.example",
        "build_dir": "/tmp/basekiln-b-y2/deeper/build",
        "tz": "Pacific/Kiritimati",
        "umask": "0077",
    },
    now=NOW,
)
BASE = [
    FileEntry("etc", kind="dir", mode=0o755),
    FileEntry("etc/os-release", b"ID=debian\n"),
    FileEntry("usr/bin/true", b"\x7fELF" + bytes(range(64)), mode=0o755),
]


def layout(tmp_path: Path, name: str, layers: list[list[FileEntry]], **kwargs: Any) -> Path:
    path = tmp_path / name
    path.mkdir()
    write_image(path, layers, **kwargs)
    return path


def pair(
    tmp_path: Path,
    extra_a: list[FileEntry],
    extra_b: list[FileEntry],
    hints: Hints | None = HINTS,
    **kwargs: Any,
) -> Verdict:
    a = layout(tmp_path, "a", [BASE, extra_a], **kwargs)
    b = layout(tmp_path, "b", [BASE, extra_b], **kwargs)
    return compare.compare(a, b, hints=hints)


def findings(verdict: Verdict, kind: Kind | None = None) -> list[Finding]:
    assert verdict.report is not None
    return [f for f in verdict.report.findings if kind is None or f.kind is kind]


def one(verdict: Verdict, kind: Kind) -> Finding:
    found = findings(verdict, kind)
    assert len(found) == 1, found
    return found[0]


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def test_identical_images_give_an_identical_verdict(tmp_path: Path) -> None:
    verdict = pair(tmp_path, [FileEntry("a", b"same")], [FileEntry("a", b"same")])

    assert verdict.outcome is Outcome.IDENTICAL and verdict.identical
    assert verdict.digest_a == verdict.digest_b
    assert verdict.report is None
    verdict.raise_if_different()


def test_a_file_holding_the_build_time_is_a_timestamp(tmp_path: Path) -> None:
    text_a = f"version 1.0\nbuilt at {iso(NOW)} by make\n".encode()
    text_b = f"version 1.0\nbuilt at {iso(NOW + 37)} by make\n".encode()
    verdict = pair(
        tmp_path, [FileEntry("etc/build-info", text_a)], [FileEntry("etc/build-info", text_b)]
    )

    finding = one(verdict, Kind.CONTENT)
    assert finding.path == "/etc/build-info"
    assert finding.cause is Cause.TIMESTAMP
    assert "dates or times" in finding.reason
    assert any(iso(NOW)[:10] in a for a, _ in finding.excerpts)
    assert verdict.outcome is Outcome.DIFFERENT


def test_an_epoch_number_near_now_is_a_timestamp(tmp_path: Path) -> None:
    verdict = pair(
        tmp_path,
        [FileEntry("var/lib/stamp", f"stamp={NOW + 0.123456}\n".encode())],
        [FileEntry("var/lib/stamp", f"stamp={NOW + 61.5}\n".encode())],
    )
    assert one(verdict, Kind.CONTENT).cause is Cause.TIMESTAMP


def test_a_binary_epoch_is_a_timestamp(tmp_path: Path) -> None:
    head = b"\x89HDR" + bytes(12)
    verdict = pair(
        tmp_path,
        [FileEntry("var/cache/x.bin", head + struct.pack("<I", int(NOW)) + b"tail")],
        [FileEntry("var/cache/x.bin", head + struct.pack("<I", int(NOW) + 90) + b"tail")],
    )
    assert one(verdict, Kind.CONTENT).cause is Cause.TIMESTAMP


def test_a_ten_digit_counter_far_from_now_is_not_a_timestamp(tmp_path: Path) -> None:
    verdict = pair(
        tmp_path,
        [FileEntry("var/lib/serial", b"serial=1000000001\n")],
        [FileEntry("var/lib/serial", b"serial=1999999999\n")],
    )
    assert one(verdict, Kind.CONTENT).cause is not Cause.TIMESTAMP


def test_random_bytes_are_random_data(tmp_path: Path) -> None:
    rng = random.Random(7)
    verdict = pair(
        tmp_path,
        [FileEntry("etc/machine-key", rng.randbytes(256))],
        [FileEntry("etc/machine-key", rng.randbytes(256))],
    )
    finding = one(verdict, Kind.CONTENT)
    assert finding.cause is Cause.RANDOM
    assert "random data" in finding.reason


def test_the_build_directory_of_a_sandbox_is_an_embedded_build_path(tmp_path: Path) -> None:
    a = b"compiled from /tmp/basekiln-a-x1/src/main.c\n"
    b = b"compiled from /tmp/basekiln-b-y2/deeper/build/src/main.c\n"
    verdict = pair(tmp_path, [FileEntry("usr/lib/info", a)], [FileEntry("usr/lib/info", b)])

    finding = one(verdict, Kind.CONTENT)
    assert finding.cause is Cause.BUILD_PATH
    assert "build directory" in finding.reason
    assert "/tmp/basekiln-b-y2/deeper/build of sandbox B" in finding.reason


def test_a_temporary_path_is_a_build_path_without_hints(tmp_path: Path) -> None:
    verdict = pair(
        tmp_path,
        [FileEntry("usr/lib/info", b"prefix=/tmp/tmp.AAAA/out\n")],
        [FileEntry("usr/lib/info", b"prefix=/tmp/tmp.BBBB/out\n")],
        hints=None,
    )
    assert one(verdict, Kind.CONTENT).cause is Cause.BUILD_PATH


def test_the_host_name_of_a_sandbox_is_a_host_name(tmp_path: Path) -> None:
    verdict = pair(
        tmp_path,
        [FileEntry("etc/motd", b"Welcome to basekiln-a\n")],
        [FileEntry("etc/motd", b"Welcome to kiln-b-perturbed.example\n")],
    )
    finding = one(verdict, Kind.CONTENT)
    assert finding.cause is Cause.HOSTNAME
    assert "host name kiln-b-perturbed.example of sandbox B" in finding.reason


def test_a_time_zone_name_is_a_timestamp_cause(tmp_path: Path) -> None:
    verdict = pair(
        tmp_path,
        [FileEntry("etc/timezone", b"UTC\n")],
        [FileEntry("etc/timezone", b"Pacific/Kiritimati\n")],
    )
    finding = one(verdict, Kind.CONTENT)
    assert finding.cause is Cause.TIMESTAMP
    assert "time zone" in finding.reason


def test_an_mtime_only_difference(tmp_path: Path) -> None:
    a = layout(tmp_path, "a", [BASE], mtime=0)
    b = layout(tmp_path, "b", [BASE], mtime=int(NOW))
    verdict = compare.compare(a, b, hints=HINTS)

    assert not findings(verdict, Kind.CONTENT)
    mtimes = findings(verdict, Kind.MTIME)
    assert {f.path for f in mtimes} == {"/etc", "/etc/os-release", "/usr/bin/true"}
    assert all(f.cause is Cause.TIMESTAMP for f in mtimes)
    assert "SOURCE_DATE_EPOCH" in mtimes[0].reason
    digest = one(verdict, Kind.LAYER_DIGEST)
    assert digest.consequence and digest.cause is Cause.TIMESTAMP


def test_a_mode_difference_like_a_umask(tmp_path: Path) -> None:
    verdict = pair(
        tmp_path,
        [FileEntry("etc/app.conf", b"x", mode=0o644)],
        [FileEntry("etc/app.conf", b"x", mode=0o600)],
    )
    finding = one(verdict, Kind.MODE)
    assert (finding.a, finding.b, finding.cause) == ("0644", "0600", Cause.PERMISSIONS)
    assert "umask 0077 of sandbox B" in finding.reason


def test_an_owner_difference(tmp_path: Path) -> None:
    verdict = pair(
        tmp_path,
        [FileEntry("etc/app.conf", b"x")],
        [FileEntry("etc/app.conf", b"x", uid=1000, gid=1000)],
    )
    finding = one(verdict, Kind.OWNER)
    assert (finding.a, finding.b, finding.cause) == ("0:0", "1000:1000", Cause.OWNER)


def test_a_symlink_target_difference(tmp_path: Path) -> None:
    verdict = pair(
        tmp_path,
        [FileEntry("etc/localtime", kind="symlink", target="/usr/share/zoneinfo/UTC")],
        [
            FileEntry(
                "etc/localtime", kind="symlink", target="/usr/share/zoneinfo/Pacific/Kiritimati"
            )
        ],
    )
    finding = one(verdict, Kind.LINK)
    assert finding.b == "/usr/share/zoneinfo/Pacific/Kiritimati"
    assert finding.cause is Cause.TIMESTAMP


def test_added_and_removed_files(tmp_path: Path) -> None:
    verdict = pair(
        tmp_path,
        [FileEntry("etc/only-a", b"1"), FileEntry("etc/both", b"2")],
        [FileEntry("etc/both", b"2"), FileEntry("var/log/kiln-b-perturbed.example.log", b"3")],
    )
    removed, added = one(verdict, Kind.REMOVED), one(verdict, Kind.ADDED)
    assert (removed.path, removed.a, removed.b) == ("/etc/only-a", "file", None)
    assert added.path == "/var/log/kiln-b-perturbed.example.log"
    assert added.cause is Cause.HOSTNAME


def test_the_same_files_in_another_order(tmp_path: Path) -> None:
    files = [FileEntry("etc/b", b"b"), FileEntry("etc/a", b"a"), FileEntry("etc/c", b"c")]
    verdict = pair(tmp_path, files, [files[1], files[0], files[2]])

    finding = one(verdict, Kind.ORDER)
    assert finding.cause is Cause.FILE_ORDER
    assert "the same entries" in finding.reason
    assert [f.kind for f in findings(verdict) if f.kind.section == "files"] == [Kind.ORDER]
    assert verdict.report is not None
    assert verdict.report.causes() == [(Cause.FILE_ORDER, 1)]


def test_config_created_and_history_differences(tmp_path: Path) -> None:
    def config(created: str, env: str) -> dict[str, Any]:
        history = [{"created": "2024-01-01T00:00:00Z"}, {"created": created, "created_by": "RUN x"}]
        return {"created": created, "history": history, "config": {"Env": ["PATH=/bin", env]}}

    a = layout(tmp_path, "a", [BASE], config=config(iso(NOW), "HOSTNAME=basekiln-a"))
    b = layout(
        tmp_path, "b", [BASE], config=config(iso(NOW + 5), "HOSTNAME=kiln-b-perturbed.example")
    )
    verdict = compare.compare(a, b, hints=HINTS)

    by_path = {f.path: f for f in findings(verdict, Kind.CONFIG)}
    assert set(by_path) == {"created", "history[1].created", "config.Env"}
    assert by_path["created"].cause is Cause.TIMESTAMP
    assert by_path["history[1].created"].cause is Cause.TIMESTAMP
    assert by_path["config.Env"].cause is Cause.HOSTNAME
    assert not findings(verdict, Kind.LAYER_DIGEST)


def _recompress(path: Path, level: int, last: int) -> None:
    """Rewrite the `last` layers of a layout with gzip at `level` (same tar, other bytes)."""
    image = read_image(path)
    layers = [layer.to_json() for layer in image.layers[:-last]]
    for layer in image.layers[-last:]:
        tar = gzip.decompress(image.blob_path(layer.digest).read_bytes())
        blob = gzip.compress(tar, compresslevel=level, mtime=0)
        layers.append(
            {"mediaType": layer.media_type, "digest": write_blob(path, blob), "size": len(blob)}
        )
    _rewrite_manifest(path, {**image.manifest, "layers": layers})


def _rewrite_manifest(path: Path, manifest: dict[str, Any]) -> None:
    data = canonical_json(manifest)
    index = json.loads((path / "index.json").read_bytes())
    index["manifests"][0].update(digest=write_blob(path, data), size=len(data))
    (path / "index.json").write_bytes(canonical_json(index))


def test_a_compression_only_difference(tmp_path: Path) -> None:
    text = "".join(f"line {i} of a file that compresses {i % 7} ways\n" for i in range(3000))
    files = [FileEntry("usr/share/doc/big.txt", text.encode())]
    a = layout(tmp_path, "a", [BASE, files])
    b = layout(tmp_path, "b", [BASE, files])
    _recompress(b, 1, last=1)
    verdict = compare.compare(a, b, hints=HINTS)

    digest = one(verdict, Kind.LAYER_DIGEST)
    assert digest.cause is Cause.COMPRESSION
    assert "uncompressed layers are identical" in digest.reason
    assert not [f for f in findings(verdict) if f.kind.section == "files"]
    assert not findings(verdict, Kind.LAYER_DIFF_ID)


def test_an_uncompressed_layer_against_a_gzip_one(tmp_path: Path) -> None:
    a = layout(tmp_path, "a", [BASE])
    b = layout(tmp_path, "b", [BASE])
    image = read_image(b)
    layer = image.layers[0]
    tar = gzip.decompress(image.blob_path(layer.digest).read_bytes())
    plain = {"mediaType": MEDIA_LAYER_TAR, "digest": write_blob(b, tar), "size": len(tar)}
    _rewrite_manifest(b, {**image.manifest, "layers": [plain]})
    verdict = compare.compare(a, b)

    assert one(verdict, Kind.LAYER_MEDIA_TYPE).cause is Cause.COMPRESSION
    compression = one(verdict, Kind.LAYER_COMPRESSION)
    assert (compression.a, compression.b) == ("gzip", "none")
    assert one(verdict, Kind.LAYER_DIGEST).cause is Cause.COMPRESSION


def _zstd_layout(tmp_path: Path, name: str, files: list[FileEntry], blob: bytes = b"") -> Path:
    path = layout(tmp_path, name, [files])
    image = read_image(path)
    layer = image.layers[0]
    tar = gzip.decompress(image.blob_path(layer.digest).read_bytes())
    blob = blob or zstandard.ZstdCompressor().compress(tar)
    zstd = {
        "mediaType": layer.media_type.replace("gzip", "zstd"),
        "digest": write_blob(path, blob),
        "size": len(blob),
    }
    _rewrite_manifest(path, {**image.manifest, "layers": [zstd]})
    return path


def test_zstd_layers_are_read(tmp_path: Path) -> None:
    a = _zstd_layout(tmp_path, "a", [FileEntry("etc/x", b"one\n")])
    b = _zstd_layout(tmp_path, "b", [FileEntry("etc/x", b"two\n")])
    image = read_image(a)
    assert detect_compression(image.blob_path(image.layers[0].digest)) is Compression.ZSTD

    verdict = compare.compare(a, b)
    assert one(verdict, Kind.CONTENT).path == "/etc/x"


def test_a_corrupt_zstd_layer_is_reported_as_unreadable(tmp_path: Path) -> None:
    a = _zstd_layout(tmp_path, "a", [FileEntry("etc/x", b"one\n")])
    b = _zstd_layout(tmp_path, "b", [], blob=b"\x28\xb5\x2f\xfd" + b"\x00" * 64)
    verdict = compare.compare(a, b)

    unreadable = one(verdict, Kind.LAYER_UNREADABLE)
    assert "cannot read layer" in unreadable.reason


def test_layer_count_difference_lists_the_extra_layer_files(tmp_path: Path) -> None:
    a = layout(tmp_path, "a", [BASE])
    b = layout(tmp_path, "b", [BASE, [FileEntry("etc/extra", b"x")]])
    verdict = compare.compare(a, b)

    count = one(verdict, Kind.LAYER_COUNT)
    assert (count.a, count.b) == ("1", "2")
    assert one(verdict, Kind.ADDED).path == "/etc/extra"
    assert one(verdict, Kind.LAYER_DIGEST).a is None


def test_a_difference_deep_in_a_large_file(tmp_path: Path) -> None:
    filler = bytes(range(256)) * 8192  # 2 MiB
    a = filler + f"stamp {iso(NOW)}\n".encode() + filler
    b = filler + f"stamp {iso(NOW + 3)}\n".encode() + filler
    verdict = pair(tmp_path, [FileEntry("opt/big.bin", a)], [FileEntry("opt/big.bin", b)])
    assert one(verdict, Kind.CONTENT).cause is Cause.TIMESTAMP


def test_the_text_report_names_each_file_and_cause(tmp_path: Path) -> None:
    verdict = pair(
        tmp_path,
        [
            FileEntry("etc/build-info", f"built {iso(NOW)}\n".encode()),
            FileEntry("etc/k", b"x", mode=0o644),
        ],
        [
            FileEntry("etc/build-info", f"built {iso(NOW + 9)}\n".encode()),
            FileEntry("etc/k", b"x", mode=0o640),
        ],
    )
    assert verdict.report is not None
    text = verdict.report.to_text()

    assert "the two builds differ" in text
    assert "layer 1: /etc/build-info" in text
    assert "likely cause: timestamps" in text
    assert "layer 1: /etc/k" in text and "likely cause: permissions (umask)" in text
    assert "hostname=kiln-b-perturbed.example" in text
    assert text.index("Layers") < text.index("Files")


def test_the_json_report_is_stable(tmp_path: Path) -> None:
    verdict = pair(tmp_path, [FileEntry("etc/x", b"1")], [FileEntry("etc/x", b"2")])
    assert verdict.report is not None
    data = verdict.report.to_json()

    assert data["outcome"] == "different"
    assert data["builds"]["b"]["perturbations"]["hostname"] == "kiln-b-perturbed.example"
    sections = [f["section"] for f in data["findings"]]
    assert sections == sorted(sections, key=["config", "manifest", "layers", "files"].index)
    assert data["findings"][0]["path"] == "rootfs.diff_ids" and data["findings"][0]["consequence"]
    assert data["findings"][-1]["kind"] == "content"
    assert json.dumps(data, sort_keys=True) == json.dumps(verdict.report.to_json(), sort_keys=True)


def test_write_report_leaves_no_temporary_files(tmp_path: Path) -> None:
    verdict = pair(tmp_path, [FileEntry("etc/x", b"1")], [FileEntry("etc/x", b"2")])
    assert verdict.report is not None
    out = tmp_path / "out" / "report"

    json_path, text_path = compare.write_report(verdict.report, out)
    compare.write_report(verdict.report, out)

    assert sorted(p.name for p in out.iterdir()) == ["compare.json", "compare.txt"]
    assert json.loads(json_path.read_text())["format"] == "basekiln.compare/1"
    assert "/etc/x" in text_path.read_text()


def test_diffoscope_absent_is_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(_diffoscope, "which", lambda name: None)
    verdict = pair(tmp_path, [FileEntry("etc/x", b"1")], [FileEntry("etc/x", b"2")])
    assert verdict.report is not None

    assert not verdict.report.diffoscope.available
    assert "diffoscope was not available" in verdict.report.to_text()


def test_diffoscope_output_is_attached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    fake = tools / "diffoscope"
    fake.write_text('#!/bin/sh\necho "--- $5"\necho "+++ $6"\necho "@@ -1 +1 @@"\nexit 1\n')
    fake.chmod(0o755)
    monkeypatch.setattr(_diffoscope, "which", lambda name: str(fake))
    monkeypatch.setattr("basekiln._run.which", lambda name: str(fake))
    verdict = pair(tmp_path, [FileEntry("etc/x", b"1")], [FileEntry("etc/x", b"2")])
    assert verdict.report is not None

    result = verdict.report.diffoscope
    assert result.available and len(result.outputs) == 1
    assert result.outputs[0].label == "layer 1 /etc/x"
    assert "--- A:layer 1 /etc/x" in result.outputs[0].text
    assert "diffoscope ran on 1 of 1" in result.note


def test_diffoscope_exit_codes_are_interpreted() -> None:
    assert _diffoscope.interpret("f", 0, b"", "").text == "diffoscope found no difference"
    assert _diffoscope.interpret("f", 1, b"diff", "").error is None
    failed = _diffoscope.interpret("f", 2, b"", "Traceback: boom")
    assert failed.error is not None and "boom" in failed.error
    assert _diffoscope.trim("x" * 50, 10).startswith("x" * 10 + "\n[… 40 more")


def test_raise_if_different_explains(tmp_path: Path) -> None:
    verdict = pair(tmp_path, [FileEntry("etc/x", b"1")], [FileEntry("etc/x", b"2")])
    with pytest.raises(NotReproducibleError, match="differ"):
        verdict.raise_if_different()


def test_compare_layouts_report_writes_for_the_build(tmp_path: Path) -> None:
    a = layout(tmp_path, "a", [BASE, [FileEntry("etc/motd", b"hi basekiln-a\n")]])
    b = layout(tmp_path, "b", [BASE, [FileEntry("etc/motd", b"hi kiln-b-perturbed.example\n")]])
    builds = [
        SandboxBuild("a", read_image(a).digest, dict(HINTS.a), str(a), 1.0),
        SandboxBuild("b", read_image(b).digest, dict(HINTS.b), str(b), 1.0),
    ]
    path = compare.compare_layouts_report(tmp_path / "out", builds)

    data = json.loads(path.read_text())
    assert [f["cause"] for f in data["findings"] if f["kind"] == "content"] == ["hostname"]


def test_classifier_is_quick_on_large_random_differences() -> None:
    rng = random.Random(3)
    a, b = rng.randbytes(1 << 20), rng.randbytes((1 << 20) + 100)
    started = time.monotonic()
    judged = compare._Classifier(Hints(now=NOW)).content(a, b)
    assert judged.cause in (Cause.RANDOM, Cause.UNKNOWN)
    assert time.monotonic() - started < 5


def test_an_mtime_shared_by_many_entries_is_reported_once(tmp_path: Path) -> None:
    files = [FileEntry(f"usr/share/doc/f{i:02d}", b"x") for i in range(40)]
    a = layout(tmp_path, "a", [files], mtime=0)
    b = layout(tmp_path, "b", [files], mtime=int(NOW))
    verdict = compare.compare(a, b, hints=HINTS)

    finding = one(verdict, Kind.MTIME)
    assert finding.path == "(40 entries)"
    assert "/usr/share/doc/f00" in finding.reason
    assert verdict.report is not None
    assert verdict.report.causes() == [(Cause.TIMESTAMP, 1)]


def test_a_file_type_difference(tmp_path: Path) -> None:
    verdict = pair(
        tmp_path,
        [FileEntry("etc/resolv.conf", b"nameserver 127.0.0.1\n")],
        [FileEntry("etc/resolv.conf", kind="symlink", target="/run/resolv.conf")],
    )
    finding = one(verdict, Kind.TYPE)
    assert (finding.a, finding.b) == ("file", "symlink")
    assert not findings(verdict, Kind.CONTENT)
