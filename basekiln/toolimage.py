"""The tool stage: a tiny image basekiln assembles itself from locked .debs.

BuildKit's RUN steps need a shell, tar and ar before any image exists, and no image is
ever pulled. So basekiln writes a one-layer OCI image holding busybox (static) and
glibc's ldconfig (static-pie), taken from their locked packages, and passes it to
BuildKit as a named context by digest.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from basekiln.cache import Cache
from basekiln.deb import UnpackGuard, iter_data, open_deb
from basekiln.errors import BuildError
from basekiln.lockfile import LockedPackage
from basekiln.oci import FileEntry, read_image, write_image

TOOL_PACKAGES = ("busybox-static", "libc-bin")
# Which files of each tool package the stage keeps: the rest needs glibc.
TOOL_FILES = {"busybox-static": ("bin/busybox",), "libc-bin": ("sbin/ldconfig",)}


@dataclass(frozen=True)
class ToolImage:
    layout: Path
    digest: str


def build_tool_image(
    cache: Cache, tools: list[LockedPackage], epoch: int, platform: str
) -> ToolImage:
    """Write (once per set of tool packages) the tool image's OCI layout."""
    names = {t.name for t in tools}
    missing = [n for n in TOOL_PACKAGES if n not in names]
    if missing:
        raise BuildError(
            f"the lockfile has no build tools {missing}; run `basekiln lock --update` to add them"
        )
    key = hashlib.sha256(
        f"{platform} {epoch} ".encode() + " ".join(sorted(t.sha256 for t in tools)).encode()
    ).hexdigest()
    layout = cache.root / "tool-images" / key
    with cache.entry_lock(f"tool-image-{key}"):
        if not (layout / "index.json").is_file():
            _write_tool_image(cache, tools, epoch, platform, layout)
    return ToolImage(layout, read_image(layout, platform).digest)


def _write_tool_image(
    cache: Cache, tools: list[LockedPackage], epoch: int, platform: str, layout: Path
) -> None:

    entries = [
        FileEntry("bin", kind="dir", mode=0o755),
        FileEntry("sbin", kind="dir", mode=0o755),
        FileEntry("tmp", kind="dir", mode=0o1777),
    ]
    for tool in sorted(tools, key=lambda t: t.name):
        entries.extend(_tool_entries(cache, tool))
    staging = layout.with_name(layout.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    write_image(
        staging,
        [entries],
        config={"config": {"Env": ["PATH=/bin:/sbin"]}},
        mtime=epoch,
        platform=platform,
    )
    shutil.rmtree(layout, ignore_errors=True)
    staging.rename(layout)


def _tool_entries(cache: Cache, tool: LockedPackage) -> list[FileEntry]:
    keep = TOOL_FILES.get(tool.name, ())
    deb = open_deb(cache.path(tool.sha256), f"{tool.name} {tool.version}")
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
