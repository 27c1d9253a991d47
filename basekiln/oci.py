"""OCI image layouts on disk: reading what BuildKit wrote, and writing small images.

Only what basekiln needs: one image manifest per platform, blobs under
`blobs/sha256/`. Written layouts are deterministic (sorted JSON keys, no timestamps
beyond what the caller passes).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import IO, Any, cast

import zstandard

from basekiln.errors import BasekilnError

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"


class LayoutError(BasekilnError):
    """An OCI layout that is missing, malformed, or not what basekiln expects."""


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] | None = None
    platform: dict[str, str] | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Descriptor:
        return cls(
            media_type=data["mediaType"],
            digest=data["digest"],
            size=int(data["size"]),
            annotations=data.get("annotations"),
            platform=data.get("platform"),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.annotations:
            out["annotations"] = self.annotations
        if self.platform:
            out["platform"] = self.platform
        return out


@dataclass(frozen=True)
class Image:
    """One platform's image inside a layout: its manifest, config and layers."""

    layout: Path
    manifest_descriptor: Descriptor
    manifest: dict[str, Any]
    config: dict[str, Any]

    @property
    def digest(self) -> str:
        return self.manifest_descriptor.digest

    @property
    def layers(self) -> list[Descriptor]:
        return [Descriptor.from_json(layer) for layer in self.manifest["layers"]]

    @property
    def config_descriptor(self) -> Descriptor:
        return Descriptor.from_json(self.manifest["config"])

    def blob_path(self, digest: str) -> Path:
        return blob_path(self.layout, digest)


def blob_path(layout: Path, digest: str) -> Path:
    algorithm, _, hexdigest = digest.partition(":")
    return layout / "blobs" / algorithm / hexdigest


def read_json_blob(layout: Path, digest: str) -> dict[str, Any]:
    path = blob_path(layout, digest)
    if not path.is_file():
        raise LayoutError(f"{layout}: blob {digest} is missing")
    data: dict[str, Any] = json.loads(path.read_bytes())
    return data


def read_image(layout: Path, platform: str = "linux/amd64") -> Image:
    """The image for `platform`, following an index to its manifest if needed."""
    index_path = layout / "index.json"
    if not index_path.is_file():
        raise LayoutError(f"{layout}: not an OCI image layout (no index.json)")
    index = json.loads(index_path.read_bytes())
    descriptor = _find_manifest(layout, index, platform)
    manifest = read_json_blob(layout, descriptor.digest)
    config = read_json_blob(layout, manifest["config"]["digest"])
    return Image(layout=layout, manifest_descriptor=descriptor, manifest=manifest, config=config)


def for_platform(entry: dict[str, Any], platform: str) -> bool:
    """Whether an index entry is for `platform` (`os/arch`); an entry naming none is."""
    plat = entry.get("platform")
    os_name, _, arch = platform.partition("/")
    return plat is None or (plat.get("os") == os_name and plat.get("architecture") == arch)


def _find_manifest(layout: Path, index: dict[str, Any], platform: str) -> Descriptor:
    for entry in index.get("manifests", []):
        media = entry.get("mediaType")
        if media == MEDIA_INDEX:
            return _find_manifest(layout, read_json_blob(layout, entry["digest"]), platform)
        if media not in (MEDIA_MANIFEST, "application/vnd.docker.distribution.manifest.v2+json"):
            continue
        if for_platform(entry, platform):
            return Descriptor.from_json(entry)
    raise LayoutError(f"{layout}: no image manifest for {platform}")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def write_blob(layout: Path, data: bytes) -> str:
    digest = sha256_digest(data)
    path = blob_path(layout, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_bytes(data)
    return digest


@dataclass(frozen=True)
class FileEntry:
    """A file for `write_image`: a regular file, directory or symlink."""

    path: str
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    kind: str = "file"  # file | dir | symlink
    target: str = ""


def layer_tar(entries: Iterable[FileEntry], mtime: int) -> bytes:
    """A deterministic, uncompressed tar of `entries` in the order given."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.path.lstrip("/"))
            info.mode, info.uid, info.gid, info.mtime = entry.mode, entry.uid, entry.gid, mtime
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif entry.kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, entry.target
                tar.addfile(info)
            else:
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
    return buffer.getvalue()


def write_image(
    layout: Path,
    layers: list[list[FileEntry]],
    config: dict[str, Any] | None = None,
    mtime: int = 0,
    platform: str = "linux/amd64",
    annotations: dict[str, str] | None = None,
    compress: bool = True,
) -> Descriptor:
    """Write a small single-platform image into `layout` (for tool stages and tests).

    `compress=False` leaves the layers as plain tar, for an image that never leaves
    the machine (gzip took half the time of writing the tool stage).
    """
    os_name, _, arch = platform.partition("/")
    layer_descriptors, diff_ids = [], []
    for entries in layers:
        tar_bytes = layer_tar(entries, mtime)
        blob = gzip.compress(tar_bytes, compresslevel=6, mtime=0) if compress else tar_bytes
        media_type = MEDIA_LAYER_GZIP if compress else MEDIA_LAYER_TAR
        digest = write_blob(layout, blob)
        layer_descriptors.append({"mediaType": media_type, "digest": digest, "size": len(blob)})
        diff_ids.append(sha256_digest(tar_bytes))
    image_config = {
        "architecture": arch,
        "os": os_name,
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        **(config or {}),
    }
    config_bytes = canonical_json(image_config)
    config_digest = write_blob(layout, config_bytes)
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": layer_descriptors,
    }
    if annotations:
        manifest["annotations"] = annotations
    manifest_bytes = canonical_json(manifest)
    descriptor = Descriptor(
        MEDIA_MANIFEST,
        write_blob(layout, manifest_bytes),
        len(manifest_bytes),
        platform={"os": os_name, "architecture": arch},
    )
    write_index(layout, descriptor.to_json())
    return descriptor


def write_index(layout: Path, manifest: dict[str, Any]) -> None:
    """Make `layout` an OCI layout whose index names the one manifest given."""
    index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [manifest]}
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_bytes(canonical_json(index))


class Compression(Enum):
    GZIP = "gzip"
    ZSTD = "zstd"
    NONE = "none"


def detect_compression(path: Path) -> Compression:
    """How a layer blob is compressed, from its first bytes (not its media type)."""
    if not path.is_file():
        raise LayoutError(f"layer blob {path} is missing")
    with path.open("rb") as blob:
        magic = blob.read(4)
    if magic[:2] == b"\x1f\x8b":
        return Compression.GZIP
    if magic == b"\x28\xb5\x2f\xfd":
        return Compression.ZSTD
    return Compression.NONE


@contextmanager
def layer_stream(path: Path) -> Iterator[IO[bytes]]:
    """A layer blob's uncompressed tar bytes (gzip, zstd or plain), read front to back."""
    compression = detect_compression(path)
    with ExitStack() as stack:
        raw: IO[bytes] = stack.enter_context(path.open("rb"))
        if compression is Compression.GZIP:
            yield stack.enter_context(cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb")))
        elif compression is Compression.ZSTD:
            reader = zstandard.ZstdDecompressor().stream_reader(raw)
            yield stack.enter_context(cast(IO[bytes], reader))
        else:
            yield raw


@contextmanager
def open_layer(path: Path) -> Iterator[tarfile.TarFile]:
    """A layer blob as a tar stream: members in order, each readable when reached."""
    with layer_stream(path) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        yield tar


@contextmanager
def iter_layer(image: Image, layer: Descriptor) -> Iterator[tarfile.TarFile]:
    """One of the image's layers as a tar stream."""
    path = image.blob_path(layer.digest)
    if not path.is_file():
        raise LayoutError(f"{image.layout}: layer {layer.digest} is missing")
    with open_layer(path) as tar:
        yield tar
