"""The tool stage: a tiny image basekiln assembles itself from locked .debs.

BuildKit's RUN steps need a shell, tar and ar before any image exists, and no image is
ever pulled. So basekiln writes a one-layer OCI image holding busybox (static) and
glibc's ldconfig (static-pie), taken from their locked packages, and passes it to
BuildKit as a named context by digest.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from basekiln.cache import Cache, sha256_file
from basekiln.deb import UnpackGuard, iter_data, open_deb
from basekiln.errors import BuildError
from basekiln.lockfile import LockedPackage
from basekiln.oci import FileEntry, write_image

log = logging.getLogger(__name__)

TOOL_PACKAGES = ("busybox-static", "libc-bin")
# Which files of each tool package the stage keeps: the rest needs glibc.
TOOL_FILES = {"busybox-static": ("bin/busybox",), "libc-bin": ("sbin/ldconfig",)}
# Part of the cache key: a layout written the old way is a different entry, not one
# that looks tampered with (2: the layer is plain tar).
LAYOUT_FORMAT = 2


@dataclass(frozen=True)
class ToolImage:
    layout: Path
    digest: str


def build_tool_image(
    cache: Cache, tools: list[LockedPackage], epoch: int, platform: str
) -> ToolImage:
    """The tool image's OCI layout, written afresh and checked against the cached copy.

    The image is rebuilt from the verified .debs on every call (two files: cheap), so a
    cached layout altered after it was written is caught and replaced rather than passed
    to BuildKit; the cached copy is kept only so that concurrent builds share one path.
    """
    names = {t.name for t in tools}
    missing = [n for n in TOOL_PACKAGES if n not in names]
    if missing:
        raise BuildError(
            f"the lockfile has no build tools {missing}; run `basekiln lock --update` to add them"
        )
    key = hashlib.sha256(
        f"{LAYOUT_FORMAT} {platform} {epoch} ".encode()
        + " ".join(sorted(t.sha256 for t in tools)).encode()
    ).hexdigest()
    layout = cache.root / "tool-images" / key
    with cache.entry_lock(f"tool-image-{key}"):
        staging = layout.with_name(f"{key}.{os.getpid()}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            digest = _write_tool_image(cache, tools, epoch, platform, staging)
            if _same_layout(staging, layout):
                return ToolImage(layout, digest)
            if layout.exists():
                log.warning("tool image %s differed from its inputs; replaced it", layout)
                shutil.rmtree(layout)
            staging.rename(layout)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return ToolImage(layout, digest)


def _write_tool_image(
    cache: Cache, tools: list[LockedPackage], epoch: int, platform: str, layout: Path
) -> str:
    entries = [
        FileEntry("bin", kind="dir", mode=0o755),
        FileEntry("sbin", kind="dir", mode=0o755),
        FileEntry("tmp", kind="dir", mode=0o1777),
    ]
    for tool in sorted(tools, key=lambda t: t.name):
        entries.extend(_tool_entries(cache, tool))
    descriptor = write_image(
        layout,
        [entries],
        config={"config": {"Env": ["PATH=/bin:/sbin"]}},
        mtime=epoch,
        platform=platform,
        compress=False,
    )
    return descriptor.digest


def _same_layout(fresh: Path, cached: Path) -> bool:
    """Whether `cached` holds byte for byte what BuildKit would read from `fresh`."""
    index = cached / "index.json"
    if not index.is_file() or index.read_bytes() != (fresh / "index.json").read_bytes():
        return False
    for blob in (fresh / "blobs" / "sha256").iterdir():
        twin = cached / "blobs" / "sha256" / blob.name
        if not twin.is_file() or sha256_file(twin) != blob.name:
            return False
    return True


def _tool_entries(cache: Cache, tool: LockedPackage) -> list[FileEntry]:
    keep = TOOL_FILES.get(tool.name, ())
    path = cache.verified(tool.sha256, f"build tool {tool.name} {tool.version}")
    deb = open_deb(path, f"{tool.name} {tool.version}")
    members = list(iter_data(deb))
    UnpackGuard().check(tool.name, [m for m, _ in members])
    found = []
    for member, content in members:
        name = member.name.removeprefix("./")
        if name in keep and member.isfile() and content is not None:
            found.append(FileEntry(name, data=content, mode=0o755))
    if len(found) != len(keep):
        raise BuildError(f"build tool {tool.name} {tool.version} lacks {list(keep)}")
    return found
