"""Compare the two sandbox builds of one image, and explain how they differ.

The verdict is the equality of the two per-platform image manifest digests. When they
differ, `diff_images` walks the config, the manifest and the layers down to single files,
and gives each difference a likely cause (timestamps, file order, build paths, host names,
random data, compression, permissions, owners), helped by what is known of how each
sandbox was perturbed. Sandbox A is the reference: a file "added" is only in B.

Layers are streamed, never held in memory: file contents are hashed on the way through,
and only files that differ are extracted (capped in number and size) to a temporary
directory, where basekiln looks at the bytes that differ and diffoscope, if installed,
gets to look too.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import re
import shutil
import struct
import tarfile
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import IO, Any

import zstandard

from basekiln import _diffoscope
from basekiln.errors import NotReproducibleError
from basekiln.oci import (
    Descriptor,
    Image,
    detect_compression,
    open_layer,
    read_image,
)
from basekiln.results import SandboxBuild

log = logging.getLogger(__name__)

REPORT_JSON = "compare.json"
REPORT_TEXT = "compare.txt"
REPORT_FORMAT = "basekiln.compare/1"

MAX_FILE_FINDINGS = 500  # per layer; the rest are counted, not listed
MAX_INSPECTED_FILES = 200  # differing files extracted to look at their bytes
MAX_INSPECTED_BYTES = 64 * 1024 * 1024  # per file
MAX_DIFFOSCOPE_BYTES = 16 * 1024 * 1024
ANALYSIS_BYTES = 1024 * 1024  # of each file's differing part
WINDOW_CONTEXT = 4096
MAX_REGIONS = 64
COLLAPSE_OVER = 25  # entries sharing a metadata difference before it is reported once
TIME_WINDOW = 7 * 86400  # "close to now"
CHUNK = 1024 * 1024


class Outcome(Enum):
    IDENTICAL = "identical"
    DIFFERENT = "different"


class Cause(Enum):
    """The likely reason for one difference."""

    TIMESTAMP = "timestamp"
    FILE_ORDER = "file-order"
    BUILD_PATH = "build-path"
    HOSTNAME = "hostname"
    LOCALE = "locale"
    RANDOM = "random-data"
    COMPRESSION = "compression"
    PERMISSIONS = "permissions"
    OWNER = "owner"
    UNKNOWN = "unknown"

    @property
    def label(self) -> str:
        return _CAUSE_LABELS[self]


_CAUSE_LABELS: dict[Cause, str] = {
    Cause.TIMESTAMP: "timestamps",
    Cause.FILE_ORDER: "file order",
    Cause.BUILD_PATH: "embedded build path",
    Cause.HOSTNAME: "host name",
    Cause.LOCALE: "locale",
    Cause.RANDOM: "random data",
    Cause.COMPRESSION: "compression",
    Cause.PERMISSIONS: "permissions (umask)",
    Cause.OWNER: "owner (uid/gid)",
    Cause.UNKNOWN: "unknown",
}


class Kind(Enum):
    """What a finding is about, in the order the report walks the image."""

    CONFIG = "config"
    MANIFEST = "manifest"
    LAYER_COUNT = "layer-count"
    LAYER_MEDIA_TYPE = "layer-media-type"
    LAYER_COMPRESSION = "layer-compression"
    LAYER_DIGEST = "layer-digest"
    LAYER_DIFF_ID = "layer-diff-id"
    LAYER_SIZE = "layer-size"
    LAYER_UNREADABLE = "layer-unreadable"
    ORDER = "order"
    ADDED = "added"
    REMOVED = "removed"
    TYPE = "type"
    CONTENT = "content"
    LINK = "link"
    MODE = "mode"
    OWNER = "owner"
    MTIME = "mtime"
    HEADERS = "headers"

    @property
    def section(self) -> str:
        value = str(self.value)
        if self in (Kind.CONFIG, Kind.MANIFEST):
            return value
        return "layers" if value.startswith("layer-") else "files"


_KIND_ORDER = {kind: number for number, kind in enumerate(Kind)}
_SECTIONS = ("config", "manifest", "layers", "files")


@dataclass(frozen=True)
class Hints:
    """What is known of the two sandboxes: their names and perturbations.

    Perturbation keys basekiln looks for: `hostname`, `build_dir`, `tz`, `locale`,
    `umask`. `now` is the time builds are taken to have run (default: when compared).
    """

    a: Mapping[str, str] = field(default_factory=dict)
    b: Mapping[str, str] = field(default_factory=dict)
    now: float | None = None


@dataclass(frozen=True)
class Finding:
    """One difference and its likely cause.

    `path` is a JSON path (`history[2].created`), a layer field (`layers[1].digest`) or a
    file (`/etc/hostname`). `a` and `b` are the two values as shown to a person, None
    where absent. A `consequence` follows from other findings (a layer digest changes
    when its files do) and is left out of the cause summary.
    """

    kind: Kind
    path: str
    a: str | None
    b: str | None
    cause: Cause
    reason: str
    layer: int | None = None
    excerpts: tuple[tuple[str, str], ...] = ()
    consequence: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "section": self.kind.section,
            "layer": self.layer,
            "path": self.path,
            "a": self.a,
            "b": self.b,
            "cause": self.cause.value,
            "reason": self.reason,
            "excerpts": [{"a": a, "b": b} for a, b in self.excerpts],
            "consequence": self.consequence,
        }


@dataclass(frozen=True)
class Side:
    """One of the two builds as the report names it."""

    name: str
    layout: str
    digest: str
    perturbations: Mapping[str, str]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "layout": self.layout,
            "digest": self.digest,
            "perturbations": dict(sorted(self.perturbations.items())),
        }


@dataclass(frozen=True)
class DiffReport:
    """Everything that differs between two builds, walked config, layers, then files."""

    platform: str
    a: Side
    b: Side
    findings: tuple[Finding, ...]
    diffoscope: _diffoscope.DiffoscopeResult
    notes: tuple[str, ...] = ()

    @property
    def outcome(self) -> Outcome:
        return Outcome.IDENTICAL if self.a.digest == self.b.digest else Outcome.DIFFERENT

    def causes(self) -> list[tuple[Cause, int]]:
        """Causes by how many findings they explain, most first (consequences left out)."""
        counts = Counter(f.cause for f in self.findings if not f.consequence)
        return sorted(counts.items(), key=lambda item: (-item[1], _cause_rank(item[0])))

    def summary(self) -> str:
        causes = ", ".join(f"{cause.label} ({count})" for cause, count in self.causes())
        return f"{len(self.findings)} differences; likely causes: {causes or 'none found'}"

    def to_json(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "outcome": self.outcome.value,
            "platform": self.platform,
            "builds": {"a": self.a.to_json(), "b": self.b.to_json()},
            "causes": [{"cause": c.value, "findings": n} for c, n in self.causes()],
            "findings": [finding.to_json() for finding in self.findings],
            "diffoscope": self.diffoscope.to_json(),
            "notes": list(self.notes),
        }

    def to_text(self) -> str:
        return _render_text(self)


@dataclass(frozen=True)
class Verdict:
    """Whether the two builds gave one image; with a report when they did not."""

    outcome: Outcome
    platform: str
    digest_a: str
    digest_b: str
    report: DiffReport | None = None

    @property
    def identical(self) -> bool:
        return self.outcome is Outcome.IDENTICAL

    def raise_if_different(self) -> None:
        if self.identical:
            return
        summary = self.report.summary() if self.report else "no report was built"
        raise NotReproducibleError(
            f"the two builds for {self.platform} differ ({self.digest_a} vs {self.digest_b}): "
            f"{summary}; read the diff report to find what made them differ"
        )


def compare(
    layout_a: Path,
    layout_b: Path,
    platform: str = "linux/amd64",
    *,
    hints: Hints | None = None,
    diffoscope: bool = True,
) -> Verdict:
    """Compare two OCI layouts by their `platform` manifest digest; explain a mismatch."""
    image_a = read_image(Path(layout_a), platform)
    image_b = read_image(Path(layout_b), platform)
    if image_a.digest == image_b.digest:
        log.info("both builds gave %s for %s", image_a.digest, platform)
        return Verdict(Outcome.IDENTICAL, platform, image_a.digest, image_b.digest)

    log.warning("builds differ for %s: %s vs %s", platform, image_a.digest, image_b.digest)
    report = diff_images(image_a, image_b, platform=platform, hints=hints, diffoscope=diffoscope)
    log.info("diff report: %s", report.summary())
    return Verdict(Outcome.DIFFERENT, platform, image_a.digest, image_b.digest, report)


def diff_images(
    image_a: Image,
    image_b: Image,
    *,
    platform: str = "linux/amd64",
    hints: Hints | None = None,
    diffoscope: bool = True,
) -> DiffReport:
    """Walk two images' config, manifest, layers and files, and explain each difference."""
    hints = hints or Hints()
    classifier = _Classifier(hints)
    with tempfile.TemporaryDirectory(prefix="basekiln-compare-") as tmp:
        work = _Work(Path(tmp), classifier)
        layers = _diff_layers(image_a, image_b, work)
        config = _diff_config(image_a, image_b, classifier, _dominant(layers))
        manifest = _diff_manifest(image_a, image_b, classifier)
        if diffoscope:
            dscope = _diffoscope.diff_files(work.pairs)
        else:
            dscope = _diffoscope.not_run("diffoscope was not run (turned off by the caller)")

    findings = sorted(config + manifest + layers, key=_finding_order)
    side_a = Side("A", str(image_a.layout), image_a.digest, hints.a)
    side_b = Side("B", str(image_b.layout), image_b.digest, hints.b)
    return DiffReport(platform, side_a, side_b, tuple(findings), dscope, tuple(work.notes))


def write_report(report: DiffReport, out_dir: Path) -> tuple[Path, Path]:
    """Write the report as JSON and as text into `out_dir`, each atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, text_path = out_dir / REPORT_JSON, out_dir / REPORT_TEXT
    data = json.dumps(report.to_json(), indent=2, sort_keys=True, ensure_ascii=False)
    _write_atomic(json_path, data + "\n")
    _write_atomic(text_path, report.to_text())
    return json_path, text_path


def compare_layouts_report(
    out: Path, builds: Sequence[SandboxBuild], platform: str = "linux/amd64"
) -> Path:
    """Compare the two builds' layouts and write the report into `out`; its JSON path.

    For the double build when the digests differ; identical builds still get a report.
    """
    first, second = builds
    hints = Hints(a=first.perturbations, b=second.perturbations)
    verdict = compare(Path(first.oci_layout), Path(second.oci_layout), platform, hints=hints)
    report = verdict.report or _identical_report(verdict, first, second)
    json_path, _ = write_report(report, out)
    return json_path


def _identical_report(verdict: Verdict, first: SandboxBuild, second: SandboxBuild) -> DiffReport:
    side_a = Side("A", first.oci_layout, verdict.digest_a, first.perturbations)
    side_b = Side("B", second.oci_layout, verdict.digest_b, second.perturbations)
    note = "the two builds are identical; diffoscope was not needed"
    return DiffReport(verdict.platform, side_a, side_b, (), _diffoscope.not_run(note))


def _write_atomic(path: Path, text: str) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _finding_order(finding: Finding) -> tuple[int, int, int, str, int]:
    layer = -1 if finding.layer is None else finding.layer
    order_first = 0 if finding.kind is Kind.ORDER else 1
    section = _SECTIONS.index(finding.kind.section)
    path = finding.path if finding.kind.section != "layers" else ""
    return (section, layer, order_first, path, _KIND_ORDER[finding.kind])


def _cause_rank(cause: Cause) -> int:
    return list(Cause).index(cause)


def _dominant(findings: Iterable[Finding]) -> Cause:
    counts = Counter(f.cause for f in findings if not f.consequence)
    if not counts:
        return Cause.UNKNOWN
    return max(counts, key=lambda cause: (counts[cause], -_cause_rank(cause)))


# --- config and manifest ------------------------------------------------------------

_MISSING = object()
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _diff_config(
    image_a: Image, image_b: Image, classifier: _Classifier, layer_cause: Cause
) -> list[Finding]:
    findings = []
    for path, a, b in _json_diff(image_a.config, image_b.config, ""):
        if path == "rootfs.diff_ids":
            reason = "follows from the layer differences below"
            findings.append(_json_finding(Kind.CONFIG, path, a, b, layer_cause, reason, True))
            continue
        judgement = classifier.value(path, a, b)
        findings.append(_json_finding(Kind.CONFIG, path, a, b, judgement.cause, judgement.reason))

    same_digest = image_a.config_descriptor.digest == image_b.config_descriptor.digest
    if not findings and not same_digest:
        reason = "the config holds the same JSON but is serialized differently"
        findings.append(_serialization_finding(Kind.CONFIG, "(config bytes)", reason))
    return findings


def _diff_manifest(image_a: Image, image_b: Image, classifier: _Classifier) -> list[Finding]:
    findings = []
    rest_a = {k: v for k, v in image_a.manifest.items() if k not in ("layers", "config")}
    rest_b = {k: v for k, v in image_b.manifest.items() if k not in ("layers", "config")}
    for path, a, b in _json_diff(rest_a, rest_b, "manifest"):
        judgement = classifier.value(path, a, b)
        findings.append(_json_finding(Kind.MANIFEST, path, a, b, judgement.cause, judgement.reason))

    if image_a.manifest == image_b.manifest and image_a.digest != image_b.digest:
        reason = "the manifest holds the same JSON but is serialized differently"
        findings.append(_serialization_finding(Kind.MANIFEST, "(manifest bytes)", reason))
    return findings


def _serialization_finding(kind: Kind, path: str, reason: str) -> Finding:
    return Finding(kind, path, None, None, Cause.UNKNOWN, reason + " (key order, whitespace)")


def _json_finding(
    kind: Kind, path: str, a: Any, b: Any, cause: Cause, reason: str, consequence: bool = False
) -> Finding:
    return Finding(kind, path, _show_json(a), _show_json(b), cause, reason, None, (), consequence)


def _json_diff(a: Any, b: Any, path: str) -> Iterator[tuple[str, Any, Any]]:
    """Each JSON path where `a` and `b` differ; lists of scalars are compared whole."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            child = _json_path(path, key)
            yield from _json_diff(a.get(key, _MISSING), b.get(key, _MISSING), child)
    elif isinstance(a, list) and isinstance(b, list) and not (_scalars(a) and _scalars(b)):
        for index in range(max(len(a), len(b))):
            item_a = a[index] if index < len(a) else _MISSING
            item_b = b[index] if index < len(b) else _MISSING
            yield from _json_diff(item_a, item_b, f"{path}[{index}]")
    elif a != b:
        yield path, a, b


def _json_path(path: str, key: str) -> str:
    if _IDENTIFIER.match(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"


def _scalars(items: list[Any]) -> bool:
    return all(not isinstance(item, dict | list) for item in items)


def _show_json(value: Any, limit: int = 300) -> str | None:
    if value is _MISSING:
        return None
    shown = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def _json_text(value: Any, other: Any) -> bytes:
    """The part of a JSON value to classify: for lists, the items the other lacks."""
    if value is _MISSING:
        return b""
    if isinstance(value, list) and isinstance(other, list):
        value = [item for item in value if item not in other]
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, list) and _scalars(value):
        return "\n".join(str(item) for item in value).encode()
    return json.dumps(value, sort_keys=True).encode()


# --- layers --------------------------------------------------------------------------


@dataclass(frozen=True)
class _LayerRef:
    image: Image
    descriptor: Descriptor
    diff_id: str | None

    @property
    def blob(self) -> Path:
        return self.image.blob_path(self.descriptor.digest)


class _UnreadableError(Exception):
    """A layer whose files cannot be read here; the report says why."""


@dataclass(frozen=True)
class _Entry:
    """One tar member, as much of it as a comparison needs."""

    kind: str
    mode: int
    uid: int
    gid: int
    uname: str
    gname: str
    mtime: float
    link: str
    size: int
    sha256: str | None
    headers: tuple[tuple[str, str], ...]


@dataclass
class _Listing:
    entries: dict[str, _Entry] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)


_TAR_KINDS = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.CONTTYPE: "file",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "char device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "fifo",
}
_COMPARED_ELSEWHERE = frozenset(
    {"path", "linkpath", "size", "mtime", "uid", "gid", "uname", "gname"}
)
_COLLAPSIBLE = frozenset({Kind.MTIME, Kind.MODE, Kind.OWNER, Kind.HEADERS})
_READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, zstandard.ZstdError)


def _diff_ids(image: Image) -> list[str]:
    rootfs = image.config.get("rootfs") or {}
    return list(rootfs.get("diff_ids") or [])


def _diff_layers(image_a: Image, image_b: Image, work: _Work) -> list[Finding]:
    layers_a, layers_b = image_a.layers, image_b.layers
    ids_a, ids_b = _diff_ids(image_a), _diff_ids(image_b)
    findings = []
    if len(layers_a) != len(layers_b):
        reason = "the images have different numbers of layers; layers are compared by position"
        counts = str(len(layers_a)), str(len(layers_b))
        findings.append(Finding(Kind.LAYER_COUNT, "layers", *counts, Cause.UNKNOWN, reason))

    for index in range(max(len(layers_a), len(layers_b))):
        ref_a = _layer_ref(image_a, layers_a, ids_a, index)
        ref_b = _layer_ref(image_b, layers_b, ids_b, index)
        findings.extend(_diff_layer(index, ref_a, ref_b, work))
    return findings


def _layer_ref(
    image: Image, layers: list[Descriptor], ids: list[str], index: int
) -> _LayerRef | None:
    if index >= len(layers):
        return None
    return _LayerRef(image, layers[index], ids[index] if index < len(ids) else None)


def _diff_layer(
    index: int, ref_a: _LayerRef | None, ref_b: _LayerRef | None, work: _Work
) -> list[Finding]:
    if ref_a and ref_b and ref_a.descriptor.digest == ref_b.descriptor.digest:
        return []
    head = _layer_format_findings(index, ref_a, ref_b)
    if ref_a and ref_b and ref_a.diff_id and ref_a.diff_id == ref_b.diff_id:
        return head + _compression_findings(index, ref_a, ref_b)

    log.info("comparing the files of layer %d", index)
    files = _diff_layer_files(index, ref_a, ref_b, work)
    return head + _layer_identity_findings(index, ref_a, ref_b, files) + files


def _layer_format_findings(
    index: int, ref_a: _LayerRef | None, ref_b: _LayerRef | None
) -> list[Finding]:
    if ref_a is None or ref_b is None:
        return []
    findings = []
    media_a, media_b = ref_a.descriptor.media_type, ref_b.descriptor.media_type
    if media_a != media_b:
        same_base = _media_base(media_a) == _media_base(media_b)
        cause = Cause.COMPRESSION if same_base else Cause.UNKNOWN
        reason = "the layers are compressed differently" if same_base else "layer types differ"
        path = f"layers[{index}].mediaType"
        findings.append(
            Finding(Kind.LAYER_MEDIA_TYPE, path, media_a, media_b, cause, reason, index)
        )

    found_a, found_b = detect_compression(ref_a.blob), detect_compression(ref_b.blob)
    if found_a is not found_b:
        reason = "the layer blobs use different compression"
        path = f"layers[{index}].compression"
        findings.append(
            Finding(
                Kind.LAYER_COMPRESSION,
                path,
                found_a.value,
                found_b.value,
                Cause.COMPRESSION,
                reason,
                index,
            )
        )
    return findings


def _media_base(media_type: str) -> str:
    return media_type.split("+", 1)[0]


def _compression_findings(index: int, ref_a: _LayerRef, ref_b: _LayerRef) -> list[Finding]:
    reason = (
        f"the uncompressed layers are identical (diff_id {ref_a.diff_id}); only the "
        "compressed bytes differ: compressor, its level or its version"
    )
    digest = Finding(
        Kind.LAYER_DIGEST,
        f"layers[{index}].digest",
        ref_a.descriptor.digest,
        ref_b.descriptor.digest,
        Cause.COMPRESSION,
        reason,
        index,
    )
    findings = [digest]
    if ref_a.descriptor.size != ref_b.descriptor.size:
        findings.append(
            Finding(
                Kind.LAYER_SIZE,
                f"layers[{index}].size",
                str(ref_a.descriptor.size),
                str(ref_b.descriptor.size),
                Cause.COMPRESSION,
                "follows from the compression",
                index,
                consequence=True,
            )
        )
    return findings


def _layer_identity_findings(
    index: int, ref_a: _LayerRef | None, ref_b: _LayerRef | None, files: list[Finding]
) -> list[Finding]:
    """Digest, diff_id and size of a layer whose content differs: consequences of `files`."""
    cause = _dominant(files)
    consequence = any(not f.consequence for f in files)
    if ref_a is None or ref_b is None:
        reason = f"layer {index} exists only in build {'B' if ref_a is None else 'A'}"
    elif consequence:
        reason = "follows from the file differences in this layer"
    else:
        reason = (
            "the uncompressed layers differ but no file-level difference was found: the tar "
            "headers differ in something basekiln does not compare (format, padding)"
        )
    fields = (
        (Kind.LAYER_DIGEST, "digest", lambda r: r.descriptor.digest),
        (Kind.LAYER_DIFF_ID, "diff_id", lambda r: r.diff_id),
        (Kind.LAYER_SIZE, "size", lambda r: str(r.descriptor.size)),
    )
    findings = []
    for kind, name, get in fields:
        a = get(ref_a) if ref_a else None
        b = get(ref_b) if ref_b else None
        if a != b:
            path = f"layers[{index}].{name}"
            findings.append(Finding(kind, path, a, b, cause, reason, index, (), consequence))
    return findings


def _diff_layer_files(
    index: int, ref_a: _LayerRef | None, ref_b: _LayerRef | None, work: _Work
) -> list[Finding]:
    try:
        listing_a = work.listing(ref_a) if ref_a else _Listing()
        listing_b = work.listing(ref_b) if ref_b else _Listing()
    except _UnreadableError as exc:
        log.warning("layer %d: %s", index, exc)
        path = f"layers[{index}]"
        return [Finding(Kind.LAYER_UNREADABLE, path, None, None, Cause.UNKNOWN, str(exc), index)]

    findings = _order_findings(index, listing_a, listing_b)
    changed = []
    for name in sorted(set(listing_a.entries) | set(listing_b.entries)):
        entry_a, entry_b = listing_a.entries.get(name), listing_b.entries.get(name)
        findings.extend(_entry_findings(index, name, entry_a, entry_b, work.classifier))
        if _content_changed(entry_a, entry_b):
            changed.append(name)
    findings.extend(work.content_findings(index, ref_a, ref_b, changed, listing_a, listing_b))
    findings = _collapse(index, findings)

    if len(findings) > MAX_FILE_FINDINGS:
        findings.sort(key=lambda f: (f.kind in _COLLAPSIBLE, _finding_order(f)))
        left_out = len(findings) - MAX_FILE_FINDINGS
        work.notes.append(f"layer {index}: {left_out} more file differences are not listed")
        findings = findings[:MAX_FILE_FINDINGS]
    return findings


def _collapse(index: int, findings: list[Finding]) -> list[Finding]:
    """One finding for a metadata difference that many entries share (every mtime, say)."""
    groups: dict[tuple[Kind, Cause], list[Finding]] = {}
    for finding in findings:
        if finding.kind in _COLLAPSIBLE:
            groups.setdefault((finding.kind, finding.cause), []).append(finding)

    out = [
        f
        for f in findings
        if (f.kind, f.cause) not in groups or len(groups[f.kind, f.cause]) <= COLLAPSE_OVER
    ]
    for (kind, cause), group in groups.items():
        if len(group) > COLLAPSE_OVER:
            first = group[0]
            shown = ", ".join(f.path for f in group[:5])
            reason = f"{len(group)} entries differ in {kind.value} ({shown}, …); {first.reason}"
            path = f"({len(group)} entries)"
            out.append(Finding(kind, path, first.a, first.b, cause, reason, index))
    return out


def _content_changed(a: _Entry | None, b: _Entry | None) -> bool:
    if a is None or b is None or not a.kind == b.kind == "file":
        return False
    return a.sha256 != b.sha256


def _order_findings(index: int, listing_a: _Listing, listing_b: _Listing) -> list[Finding]:
    common = set(listing_a.entries) & set(listing_b.entries)
    order_a = [name for name in listing_a.order if name in common]
    order_b = [name for name in listing_b.order if name in common]
    if order_a == order_b:
        return []
    position = next(i for i, (a, b) in enumerate(zip(order_a, order_b, strict=True)) if a != b)
    same_set = set(listing_a.entries) == set(listing_b.entries)
    held = "the same entries" if same_set else "the entries both layers hold"
    reason = (
        f"{held} are written in a different order in the tar stream (first at entry "
        f"{position}); write entries sorted by name"
    )
    a, b = f"#{position} {order_a[position]}", f"#{position} {order_b[position]}"
    return [Finding(Kind.ORDER, f"layers[{index}]", a, b, Cause.FILE_ORDER, reason, index)]


def _entry_findings(
    index: int, name: str, a: _Entry | None, b: _Entry | None, classifier: _Classifier
) -> list[Finding]:
    if a is None or b is None:
        return [_presence_finding(index, name, a, b, classifier)]
    if a.kind != b.kind:
        reason = "the file type differs"
        return [Finding(Kind.TYPE, name, a.kind, b.kind, Cause.UNKNOWN, reason, index)]

    findings = []
    if a.link != b.link:
        judged = classifier.content(a.link.encode(), b.link.encode())
        reason = "link target differs: " + judged.reason
        findings.append(Finding(Kind.LINK, name, a.link, b.link, judged.cause, reason, index))
    if a.mode != b.mode:
        cause, reason = classifier.mode(a.mode, b.mode)
        findings.append(
            Finding(Kind.MODE, name, f"{a.mode:04o}", f"{b.mode:04o}", cause, reason, index)
        )
    if (a.uid, a.gid, a.uname, a.gname) != (b.uid, b.gid, b.uname, b.gname):
        findings.append(_owner_finding(index, name, a, b))
    if a.mtime != b.mtime:
        cause, reason = classifier.mtime(a.mtime, b.mtime)
        findings.append(
            Finding(
                Kind.MTIME, name, _show_time(a.mtime), _show_time(b.mtime), cause, reason, index
            )
        )
    if a.headers != b.headers:
        findings.append(_headers_finding(index, name, a, b))
    return findings


def _presence_finding(
    index: int, name: str, a: _Entry | None, b: _Entry | None, classifier: _Classifier
) -> Finding:
    entry = a or b
    assert entry is not None
    side = "A" if a else "B"
    judged = classifier.presence(name, in_a=a is not None)
    reason = f"{entry.kind} only in build {side}" + (f": {judged.reason}" if judged.reason else "")
    kind = Kind.REMOVED if a else Kind.ADDED
    shown_a = entry.kind if a else None
    shown_b = entry.kind if b else None
    return Finding(kind, name, shown_a, shown_b, judged.cause, reason, index)


def _owner_finding(index: int, name: str, a: _Entry, b: _Entry) -> Finding:
    shown_a, shown_b = _show_owner(a), _show_owner(b)
    reason = (
        "the owner differs: the building user's ids leaked into the layer; write numeric "
        "owners explicitly (for example 0:0) rather than the builder's own"
    )
    return Finding(Kind.OWNER, name, shown_a, shown_b, Cause.OWNER, reason, index)


def _show_owner(entry: _Entry) -> str:
    shown = f"{entry.uid}:{entry.gid}"
    if entry.uname or entry.gname:
        shown += f" ({entry.uname}:{entry.gname})"
    return shown


def _headers_finding(index: int, name: str, a: _Entry, b: _Entry) -> Finding:
    headers_a, headers_b = dict(a.headers), dict(b.headers)
    keys = sorted(
        k for k in set(headers_a) | set(headers_b) if headers_a.get(k) != headers_b.get(k)
    )
    timed = all("time" in key for key in keys)
    cause = Cause.TIMESTAMP if timed else Cause.UNKNOWN
    reason = f"extended tar headers differ: {', '.join(keys)}"
    shown_a = ", ".join(f"{k}={headers_a[k]}" for k in keys if k in headers_a)
    shown_b = ", ".join(f"{k}={headers_b[k]}" for k in keys if k in headers_b)
    return Finding(Kind.HEADERS, name, shown_a, shown_b, cause, reason, index)


def _show_time(value: float) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value))
    number = f"{value:.0f}" if value == int(value) else f"{value:.6f}"
    return f"{number} ({stamp})"


def _normalise(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    name = name.strip("/")
    return "/" if name in ("", ".") else "/" + name


class _Work:
    """One comparison's scratch space: extracted files, decompressed blobs, notes."""

    def __init__(self, root: Path, classifier: _Classifier) -> None:
        self.root = root
        self.classifier = classifier
        self.pairs: list[_diffoscope.FilePair] = []
        self.notes: list[str] = []
        self._inspected = 0
        self._extractions = 0

    def listing(self, ref: _LayerRef) -> _Listing:
        """Every entry of a layer, file contents hashed as they stream past."""
        listing = _Listing()
        try:
            with open_layer(ref.blob) as tar:
                for member in tar:
                    name = _normalise(member.name)
                    if name not in listing.entries:
                        listing.order.append(name)
                    listing.entries[name] = _entry(tar, member)
        except _READ_ERRORS as exc:
            raise _UnreadableError(f"cannot read layer {ref.descriptor.digest}: {exc}") from exc
        return listing

    def extract(self, ref: _LayerRef, names: set[str], side: str) -> dict[str, Path]:
        """Copy the regular files `names` out of a layer, each up to the size cap."""
        self._extractions += 1
        dest = self.root / f"{side}{self._extractions}"
        found: dict[str, Path] = {}
        try:
            with open_layer(ref.blob) as tar:
                for member in tar:
                    name = _normalise(member.name)
                    if name in names and member.isreg() and member.size <= MAX_INSPECTED_BYTES:
                        found[name] = _copy_member(tar, member, dest / str(len(found)), name)
        except _READ_ERRORS as exc:
            raise _UnreadableError(f"cannot read layer {ref.descriptor.digest}: {exc}") from exc
        return found

    def content_findings(
        self,
        index: int,
        ref_a: _LayerRef | None,
        ref_b: _LayerRef | None,
        names: list[str],
        listing_a: _Listing,
        listing_b: _Listing,
    ) -> list[Finding]:
        if not names or ref_a is None or ref_b is None:
            return []
        budget = max(0, MAX_INSPECTED_FILES - self._inspected)
        chosen = set(names[:budget])
        self._inspected += len(chosen)
        if len(names) > budget:
            self.notes.append(
                f"layer {index}: {len(names) - budget} files with differing content were not "
                f"inspected (cap of {MAX_INSPECTED_FILES} files)"
            )
        files_a = self.extract(ref_a, chosen, "a") if chosen else {}
        files_b = self.extract(ref_b, chosen, "b") if chosen else {}

        findings = []
        for name in names:
            entry_a, entry_b = listing_a.entries[name], listing_b.entries[name]
            path_a, path_b = files_a.get(name), files_b.get(name)
            findings.append(self._content_finding(index, name, entry_a, entry_b, path_a, path_b))
        return findings

    def _content_finding(
        self,
        index: int,
        name: str,
        entry_a: _Entry,
        entry_b: _Entry,
        path_a: Path | None,
        path_b: Path | None,
    ) -> Finding:
        shown_a, shown_b = _show_content(entry_a), _show_content(entry_b)
        if path_a is None or path_b is None:
            reason = "content differs; not inspected (over the size or file cap)"
            return Finding(Kind.CONTENT, name, shown_a, shown_b, Cause.UNKNOWN, reason, index)

        window_a, window_b = _read_windows(path_a, path_b)
        judged = self.classifier.content(window_a, window_b, entry_a.size, entry_b.size)
        if max(entry_a.size, entry_b.size) <= MAX_DIFFOSCOPE_BYTES:
            self.pairs.append(_diffoscope.FilePair(f"layer {index} {name}", path_a, path_b))
        return Finding(
            Kind.CONTENT,
            name,
            shown_a,
            shown_b,
            judged.cause,
            judged.reason,
            index,
            judged.excerpts,
        )


def _entry(tar: tarfile.TarFile, member: tarfile.TarInfo) -> _Entry:
    digest = _hash_member(tar, member) if member.isreg() else None
    link = _normalise(member.linkname) if member.islnk() else member.linkname
    headers = {k: str(v) for k, v in member.pax_headers.items() if k not in _COMPARED_ELSEWHERE}
    if member.ischr() or member.isblk():
        headers["device"] = f"{member.devmajor},{member.devminor}"
    return _Entry(
        kind=_TAR_KINDS.get(member.type, "other"),
        mode=member.mode & 0o7777,
        uid=member.uid,
        gid=member.gid,
        uname=member.uname,
        gname=member.gname,
        mtime=member.mtime,
        link=link,
        size=member.size if member.isreg() else 0,
        sha256=digest,
        headers=tuple(sorted(headers.items())),
    )


def _hash_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    hasher = hashlib.sha256()
    source = tar.extractfile(member)
    if source is None:
        return "sha256:" + hasher.hexdigest()
    with source:
        while chunk := source.read(CHUNK):
            hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


def _copy_member(tar: tarfile.TarFile, member: tarfile.TarInfo, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (Path(name).name or "root")
    source = tar.extractfile(member)
    with target.open("wb") as out:
        if source is not None:
            with source:
                shutil.copyfileobj(source, out, CHUNK)
    return target


def _show_content(entry: _Entry) -> str:
    digest = entry.sha256 or ""
    return f"{digest[:19]}… ({entry.size} bytes)"


def _read_windows(path_a: Path, path_b: Path) -> tuple[bytes, bytes]:
    """The part of two files where they differ, with some context, capped in size."""
    with path_a.open("rb") as file_a, path_b.open("rb") as file_b:
        size_a, size_b = os.fstat(file_a.fileno()).st_size, os.fstat(file_b.fileno()).st_size
        prefix = _file_prefix(file_a, file_b)
        limit = min(size_a, size_b) - prefix
        suffix = _file_suffix(file_a, file_b, size_a, size_b, limit)

        start = max(0, prefix - WINDOW_CONTEXT)
        return _read_window(file_a, start, size_a - suffix), _read_window(
            file_b, start, size_b - suffix
        )


def _read_window(file: IO[bytes], start: int, end: int) -> bytes:
    file.seek(start)
    return file.read(min(end + WINDOW_CONTEXT - start, ANALYSIS_BYTES))


def _file_prefix(file_a: IO[bytes], file_b: IO[bytes]) -> int:
    prefix = 0
    while True:
        chunk_a, chunk_b = file_a.read(CHUNK), file_b.read(CHUNK)
        same = _common_prefix(chunk_a, chunk_b)
        prefix += same
        if same < CHUNK or not chunk_a or not chunk_b:
            return prefix


def _file_suffix(file_a: IO[bytes], file_b: IO[bytes], size_a: int, size_b: int, limit: int) -> int:
    suffix = 0
    while suffix < limit:
        step = min(CHUNK, limit - suffix)
        file_a.seek(size_a - suffix - step)
        file_b.seek(size_b - suffix - step)
        same = _common_suffix(file_a.read(step), file_b.read(step))
        suffix += same
        if same < step:
            break
    return suffix


def _common_prefix(a: bytes, b: bytes) -> int:
    length = min(len(a), len(b))
    step = 4096
    position = 0
    while position < length and a[position : position + step] == b[position : position + step]:
        position += step
    position = min(position, length)
    end = min(position + step, length)
    while position < end and a[position] == b[position]:
        position += 1
    return position


def _common_suffix(a: bytes, b: bytes) -> int:
    return _common_prefix(a[::-1], b[::-1])


# --- classification ------------------------------------------------------------------

_TOKEN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_./:+-")
_TOKENS = re.compile(rb"[A-Za-z0-9_./:+\-]+|[^A-Za-z0-9_./:+\-]+")
_LINES = re.compile(rb"[^\n]*\n|[^\n]+")
_MONTH = rb"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]*"
_WEEKDAY = rb"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)[a-z]*"
_DATES = tuple(
    re.compile(pattern)
    for pattern in (
        # ISO 8601 date, with an optional time and zone
        rb"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?",
        rb"\d{4}/\d{2}/\d{2}",
        # a time of day
        rb"(?<!\d)\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?: ?[AaPp][Mm])?",
        # ctime, date(1) and RFC 2822 dates
        _WEEKDAY + rb",? +(?:\d{1,2} +" + _MONTH + rb"|" + _MONTH + rb" +\d{1,2})"
        rb"(?: +\d{4})?(?: +\d{1,2}:\d{2}:\d{2})?(?: +(?:[A-Z]{2,5}|[+-]\d{2,4}))?(?: +\d{4})?",
        rb"\d{1,2} +" + _MONTH + rb" +\d{4}",
        _MONTH + rb" +\d{1,2},? +\d{4}",
        # compact: 20240501T123456Z
        rb"(?<!\d)(?:19|20)\d{2}[01]\d[0-3]\dT?[0-2]\d[0-5]\d[0-5]\dZ?(?!\d)",
    )
)
_EPOCH = re.compile(rb"(?<![\d.])[1-3]\d{9}(?:\d{3})?(?:\.\d{1,9})?(?!\d)")
_BUILD_PATH = re.compile(
    rb"/(?:tmp|var/tmp|build|builds|workspace|work|home|root|srv|run/user)/[^\s\x00'\"<>|;,]*"
)
_YEAR_2000, _YEAR_2100 = 946684800, 4102444800
_HINTS = (
    ("build_dir", Cause.BUILD_PATH, "build directory"),
    ("hostname", Cause.HOSTNAME, "host name"),
    ("tz", Cause.TIMESTAMP, "time zone"),
    ("locale", Cause.LOCALE, "locale"),
)


@dataclass(frozen=True)
class _Judgement:
    cause: Cause
    reason: str
    excerpts: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class _Region:
    """Where two byte strings differ: token-aligned spans, and the bytes that differ."""

    span_a: tuple[int, int]
    span_b: tuple[int, int]
    core_a: tuple[int, int]
    core_b: tuple[int, int]


class _Classifier:
    """Names the likely cause of a difference, helped by the sandboxes' perturbations."""

    def __init__(self, hints: Hints) -> None:
        self.hints = hints
        self.now = time.time() if hints.now is None else hints.now

    def content(self, a: bytes, b: bytes, size_a: int = -1, size_b: int = -1) -> _Judgement:
        """Classify differing bytes (file contents, strings)."""
        size_a = len(a) if size_a < 0 else size_a
        size_b = len(b) if size_b < 0 else size_b
        regions = _regions(a, b)
        excerpts = tuple(
            (
                _excerpt(a, _shown_span(r.span_a, r.core_a)),
                _excerpt(b, _shown_span(r.span_b, r.core_b)),
            )
            for r in regions[:3]
        )

        hinted = self._hinted(a, b)
        if hinted is not None:
            return _Judgement(hinted[0], hinted[1], excerpts)
        cause, reason = self._by_regions(a, b, regions, size_a, size_b)
        return _Judgement(cause, reason, excerpts)

    def value(self, path: str, a: Any, b: Any) -> _Judgement:
        """Classify a differing JSON value of the config or manifest."""
        judged = self.content(_json_text(a, b), _json_text(b, a))
        if a is _MISSING or b is _MISSING:
            side = "B" if a is _MISSING else "A"
            if judged.cause in (Cause.RANDOM, Cause.UNKNOWN):
                return _Judgement(Cause.UNKNOWN, f"only in build {side}")
            return _Judgement(judged.cause, f"only in build {side}; {judged.reason}")
        if path.endswith("created") and judged.cause in (Cause.RANDOM, Cause.UNKNOWN):
            return _Judgement(Cause.TIMESTAMP, "creation times differ: set SOURCE_DATE_EPOCH")
        return judged

    def presence(self, name: str, *, in_a: bool) -> _Judgement:
        """Classify a file that only one build has, by its name."""
        data = name.encode()
        hinted = self._hinted(data, b"") if in_a else self._hinted(b"", data)
        if hinted is not None:
            return _Judgement(hinted[0], f"its name {hinted[1]}")
        if any(pattern.search(data) for pattern in _DATES) or self._epochs_near(data):
            return _Judgement(Cause.TIMESTAMP, "its name holds a date or time")
        return _Judgement(Cause.UNKNOWN, "")

    def mode(self, a: int, b: int) -> tuple[Cause, str]:
        changed = a ^ b
        if changed & ~0o077:
            return Cause.PERMISSIONS, (
                "mode differs beyond the group/other bits (owner, setuid, setgid or sticky "
                "bits): set modes explicitly"
            )
        reason = "mode differs only in group/other bits, as a different umask would make it"
        for name, hints, mine, other in (("A", self.hints.a, a, b), ("B", self.hints.b, b, a)):
            umask = _parse_umask(hints.get("umask", ""))
            lost = other & ~mine
            if umask is not None and lost and not lost & ~umask:
                reason += f"; consistent with umask {umask:04o} of sandbox {name}"
        return Cause.PERMISSIONS, reason

    def mtime(self, a: float, b: float) -> tuple[Cause, str]:
        reason = f"modification times differ by {_duration(abs(b - a))}"
        near = [side[0] for side in self._sides(a, b) if abs(side[2] - self.now) <= TIME_WINDOW]
        if near:
            reason += (
                f"; build {' and '.join(near)} kept the time of the build: mtimes were not "
                "clamped to SOURCE_DATE_EPOCH (rewrite-timestamp)"
            )
        tz_a, tz_b = self.hints.a.get("tz", ""), self.hints.b.get("tz", "")
        whole = abs(b - a) % 900 == 0 and 0 < abs(b - a) <= 14 * 3600
        if whole and tz_a and tz_b and tz_a != tz_b:
            reason += f"; a whole-hour offset, like the sandboxes' time zones {tz_a} and {tz_b}"
        return Cause.TIMESTAMP, reason

    def _sides(self, a: float, b: float) -> tuple[tuple[str, Mapping[str, str], float, float], ...]:
        return (("A", self.hints.a, a, b), ("B", self.hints.b, b, a))

    def _hinted(self, a: bytes, b: bytes) -> tuple[Cause, str] | None:
        """A perturbation of one sandbox that its copy holds and the other's lacks."""
        for key, cause, label in _HINTS:
            found = []
            for name, own, other_hints, data, other in (
                ("A", self.hints.a, self.hints.b, a, b),
                ("B", self.hints.b, self.hints.a, b, a),
            ):
                value = own.get(key, "")
                needle = value.encode()
                distinct = value != other_hints.get(key, "")
                if len(value) >= 3 and distinct and needle in data and needle not in other:
                    found.append(f"the {label} {value} of sandbox {name}")
            if found:
                return cause, "contains " + " and ".join(found)
        return None

    def _by_regions(
        self, a: bytes, b: bytes, regions: list[_Region], size_a: int, size_b: int
    ) -> tuple[Cause, str]:
        causes = [self._region_cause(a, b, region) for region in regions]
        known = Counter(cause for cause in causes if cause is not None)
        if known:
            cause, count = max(known.items(), key=lambda item: (item[1], -_cause_rank(item[0])))
            return cause, self._regions_reason(cause, count, len(causes))

        differing = sum(r.core_a[1] - r.core_a[0] + r.core_b[1] - r.core_b[0] for r in regions)
        similar = abs(size_a - size_b) <= max(8, max(size_a, size_b) // 10)
        if similar:
            return Cause.RANDOM, (
                f"differs in {len(regions)} place(s) ({differing} differing bytes in all) with "
                "no date, path or host name among them, at a similar size: random data "
                "(a key, UUID, salt, or hash-seeded order)"
            )
        return Cause.UNKNOWN, (
            f"sizes differ ({size_a} vs {size_b} bytes) and the differing bytes show no "
            "recognisable pattern"
        )

    def _regions_reason(self, cause: Cause, count: int, total: int) -> str:
        what = {
            Cause.TIMESTAMP: "that look like dates or times",
            Cause.BUILD_PATH: "that look like build or temporary directories",
        }[cause]
        reason = f"differs in {count} place(s) {what}"
        if count < total:
            reason += f", and {total - count} other place(s) with no recognisable pattern"
        else:
            reason = reason.replace("differs in", "differs only in", 1)
        tz_a, tz_b = self.hints.a.get("tz", ""), self.hints.b.get("tz", "")
        if cause is Cause.TIMESTAMP and tz_a and tz_b and tz_a != tz_b:
            reason += f" (the sandboxes ran in time zones {tz_a} and {tz_b})"
        return reason

    def _region_cause(self, a: bytes, b: bytes, region: _Region) -> Cause | None:
        if self._time_like(a, region.core_a, b, region.core_b):
            return Cause.TIMESTAMP
        if _covered(_BUILD_PATH, a, region.core_a) or _covered(_BUILD_PATH, b, region.core_b):
            return Cause.BUILD_PATH
        return None

    def _time_like(
        self, a: bytes, span_a: tuple[int, int], b: bytes, span_b: tuple[int, int]
    ) -> bool:
        dated_a, epochs_a = self._times_at(a, span_a)
        dated_b, epochs_b = self._times_at(b, span_b)
        ok_a = span_a[0] == span_a[1] or dated_a or self._plausible(epochs_a, epochs_b)
        ok_b = span_b[0] == span_b[1] or dated_b or self._plausible(epochs_b, epochs_a)
        return (ok_a and ok_b) or self._binary_time(a, span_a, b, span_b)

    def _times_at(self, data: bytes, span: tuple[int, int]) -> tuple[bool, list[float]]:
        """Whether a date covers `span` of `data`, and the epoch numbers that cover it."""
        if span[0] == span[1]:
            return False, []
        dated = any(_covered(pattern, data, span) for pattern in _DATES)
        lo = max(0, span[0] - 64)
        window = data[lo : span[1] + 64]
        epochs = [
            _epoch_value(m.group())
            for m in _EPOCH.finditer(window)
            if m.start() + lo <= span[0] and m.end() + lo >= span[1]
        ]
        return dated, epochs

    def _epochs_near(self, data: bytes) -> bool:
        values = [_epoch_value(m.group()) for m in _EPOCH.finditer(data)]
        return any(abs(value - self.now) <= TIME_WINDOW for value in values)

    def _plausible(self, values: list[float], others: list[float]) -> bool:
        """An epoch close to now, or to a time on the other side (builds minutes apart)."""
        for value in values:
            if abs(value - self.now) <= TIME_WINDOW:
                return True
            near = (other for other in others if other != value and abs(other - value) <= 2 * 86400)
            if _YEAR_2000 <= value <= _YEAR_2100 and any(near):
                return True
        return False

    def _binary_time(
        self, a: bytes, span_a: tuple[int, int], b: bytes, span_b: tuple[int, int]
    ) -> bool:
        """Whether the differing bytes sit in a 32- or 64-bit integer holding a time."""
        length = span_a[1] - span_a[0]
        if length != span_b[1] - span_b[0] or not 0 < length <= 8:
            return False
        for width, formats in ((4, ("<I", ">I")), (8, ("<Q", ">Q"))):
            for shift in range(max(0, width - length) + 1):
                start_a, start_b = span_a[0] - shift, span_b[0] - shift
                if (
                    min(start_a, start_b) < 0
                    or start_a + width > len(a)
                    or start_b + width > len(b)
                ):
                    continue
                for fmt in formats:
                    value_a = float(struct.unpack_from(fmt, a, start_a)[0])
                    value_b = float(struct.unpack_from(fmt, b, start_b)[0])
                    if self._plausible([value_a], [value_b]) and self._plausible(
                        [value_b], [value_a]
                    ):
                        return True
        return False


def _epoch_value(text: bytes) -> float:
    value = float(text)
    return value / 1000 if value > 1e11 else value


def _covered(pattern: re.Pattern[bytes], data: bytes, span: tuple[int, int]) -> bool:
    """Whether a match of `pattern` spans all of `span` in `data`."""
    start, end = span
    if start == end:
        return False
    lo = max(0, start - 64)
    window = data[lo : end + 64]
    return any(m.start() + lo <= start and m.end() + lo >= end for m in pattern.finditer(window))


def _parse_umask(text: str) -> int | None:
    try:
        return int(text, 8) if text else None
    except ValueError:
        return None


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:g} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def _regions(a: bytes, b: bytes) -> list[_Region]:
    """Where `a` and `b` differ, as token-aligned regions (at most MAX_REGIONS)."""
    prefix = _common_prefix(a, b)
    if prefix == len(a) == len(b):
        return []
    suffix = _common_suffix(a[prefix:], b[prefix:])
    while prefix > 0 and a[prefix - 1] in _TOKEN:
        prefix -= 1
    while suffix > 0 and a[len(a) - suffix] in _TOKEN:
        suffix -= 1

    end_a, end_b = len(a) - suffix, len(b) - suffix
    if end_a - prefix == end_b - prefix:
        spans = [((s, e), (s, e)) for s, e in _positional(a, b, prefix, end_a)]
    else:
        spans = _aligned(a, b, (prefix, end_a), (prefix, end_b))
    return [_region(a, b, span_a, span_b) for span_a, span_b in spans[:MAX_REGIONS]]


def _positional(a: bytes, b: bytes, start: int, end: int) -> list[tuple[int, int]]:
    """Runs of differing bytes between two equal-length stretches, near runs merged."""
    runs: list[tuple[int, int]] = []
    position = start
    while position < end and len(runs) <= MAX_REGIONS:
        stop = min(position + 256, end)
        if a[position:stop] == b[position:stop]:
            position = stop
            continue
        for i in range(position, stop):
            if a[i] == b[i]:
                continue
            if runs and i - runs[-1][1] <= 4:
                runs[-1] = (runs[-1][0], i + 1)
            else:
                runs.append((i, i + 1))
        position = stop
    return runs


def _aligned(
    a: bytes, b: bytes, span_a: tuple[int, int], span_b: tuple[int, int]
) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Differing spans of two stretches of unequal length: by lines, then by tokens."""
    lines_a = _pieces(_LINES, a, span_a)
    lines_b = _pieces(_LINES, b, span_b)
    if len(lines_a) * len(lines_b) > 4_000_000:
        return [(span_a, span_b)]
    out = []
    for block_a, block_b in _opcodes(lines_a, lines_b, span_a, span_b):
        tokens_a = _pieces(_TOKENS, a, block_a)
        tokens_b = _pieces(_TOKENS, b, block_b)
        if len(tokens_a) * len(tokens_b) > 4_000_000:
            out.append((block_a, block_b))
        else:
            out.extend(_opcodes(tokens_a, tokens_b, block_a, block_b))
    return out


def _pieces(
    pattern: re.Pattern[bytes], data: bytes, span: tuple[int, int]
) -> list[tuple[int, bytes]]:
    return [(m.start(), m.group()) for m in pattern.finditer(data, span[0], span[1])]


def _opcodes(
    pieces_a: list[tuple[int, bytes]],
    pieces_b: list[tuple[int, bytes]],
    span_a: tuple[int, int],
    span_b: tuple[int, int],
) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """The byte spans of the pieces that a sequence diff does not match."""
    matcher = difflib.SequenceMatcher(
        None, [p for _, p in pieces_a], [p for _, p in pieces_b], autojunk=False
    )
    out = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag != "equal":
            out.append(
                (_piece_span(pieces_a, i1, i2, span_a), _piece_span(pieces_b, j1, j2, span_b))
            )
    return out


def _piece_span(
    pieces: list[tuple[int, bytes]], i1: int, i2: int, span: tuple[int, int]
) -> tuple[int, int]:
    start = pieces[i1][0] if i1 < len(pieces) else span[1]
    if i2 == i1:
        return start, start
    last_start, last = pieces[i2 - 1]
    return start, last_start + len(last)


def _region(a: bytes, b: bytes, span_a: tuple[int, int], span_b: tuple[int, int]) -> _Region:
    piece_a, piece_b = a[span_a[0] : span_a[1]], b[span_b[0] : span_b[1]]
    head = _common_prefix(piece_a, piece_b)
    tail = _common_suffix(piece_a[head:], piece_b[head:])
    core_a = (span_a[0] + head, span_a[1] - tail)
    core_b = (span_b[0] + head, span_b[1] - tail)
    return _Region(_widen(a, span_a), _widen(b, span_b), core_a, core_b)


def _widen(data: bytes, span: tuple[int, int], limit: int = 256) -> tuple[int, int]:
    """`span` grown to whole tokens (words, paths, numbers, dates) on both ends."""
    start, end = span
    while start > 0 and data[start - 1] in _TOKEN and span[0] - start < limit:
        start -= 1
    while end < len(data) and data[end] in _TOKEN and end - span[1] < limit:
        end += 1
    return start, end


def _shown_span(span: tuple[int, int], core: tuple[int, int]) -> tuple[int, int]:
    """The whole tokens around a difference, or only the bytes that differ if that is long."""
    return span if span[1] - span[0] <= 80 else core


def _excerpt(data: bytes, span: tuple[int, int], context: int = 20, limit: int = 120) -> str:
    """A short, printable view of `span` in `data` with a little context."""
    start, end = span
    lo, hi = max(0, start - context), min(len(data), end + context)
    if hi - lo > limit:
        hi = lo + limit
    piece = data[lo:hi]
    printable = sum(32 <= byte < 127 or byte in b"\t\n" for byte in piece)
    if piece and printable < 0.85 * len(piece):
        hi = min(hi, lo + limit // 4)
        shown = data[lo:hi].hex(" ")
    else:
        text = piece.decode("utf-8", errors="backslashreplace")
        shown = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")
        shown = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in shown)
    return ("…" if lo > 0 else "") + shown + ("…" if hi < len(data) else "")


# --- text rendering --------------------------------------------------------------------


def _render_text(report: DiffReport) -> str:
    verdict = "identical" if report.outcome is Outcome.IDENTICAL else "differ"
    lines = [f"basekiln compare ({report.platform}): the two builds {verdict}", ""]
    for side in (report.a, report.b):
        lines.append(f"  build {side.name}: {side.digest}")
        lines.append(f"    layout: {side.layout}")
        if side.perturbations:
            shown = ", ".join(f"{k}={v}" for k, v in sorted(side.perturbations.items()))
            lines.append(f"    perturbations: {shown}")
    causes = ", ".join(f"{cause.label} ({n})" for cause, n in report.causes()) or "none found"
    lines += ["", f"Likely causes: {causes}"]

    titles = {"config": "Config", "manifest": "Manifest", "layers": "Layers", "files": "Files"}
    for section in _SECTIONS:
        chosen = [f for f in report.findings if f.kind.section == section]
        if chosen:
            lines += ["", f"{titles[section]} ({len(chosen)})"]
            lines += _render_files(chosen) if section == "files" else _render_flat(chosen)

    lines += ["", "Diffoscope", f"  {report.diffoscope.note}"]
    for output in report.diffoscope.outputs:
        lines.append(f"  --- {output.label}")
        if output.error:
            lines.append(f"  error: {output.error}")
        lines += [f"    {line}" for line in output.text.splitlines()]
    if report.notes:
        lines += ["", "Notes"] + [f"  - {note}" for note in report.notes]
    return "\n".join(lines) + "\n"


def _render_flat(findings: list[Finding]) -> list[str]:
    lines = []
    for finding in findings:
        lines.append(f"  {finding.path}: {_shown(finding.a)} vs {_shown(finding.b)}")
        lines.append(f"    likely cause: {finding.cause.label}: {finding.reason}")
    return lines


def _render_files(findings: list[Finding]) -> list[str]:
    lines: list[str] = []
    current: tuple[int | None, str] | None = None
    for finding in findings:
        if (finding.layer, finding.path) != current:
            current = (finding.layer, finding.path)
            where = "tar entry order" if finding.kind is Kind.ORDER else finding.path
            lines.append(f"  layer {finding.layer}: {where}")
        lines.append(f"    {finding.kind.value}: {_shown(finding.a)} vs {_shown(finding.b)}")
        for excerpt_a, excerpt_b in finding.excerpts:
            lines.append(f"      A: {excerpt_a}")
            lines.append(f"      B: {excerpt_b}")
        lines.append(f"      likely cause: {finding.cause.label}: {finding.reason}")
    return lines


def _shown(value: str | None) -> str:
    return "(absent)" if value is None else value
