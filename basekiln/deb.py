"""Reading .deb files: the ar container, the control paragraph, the data members.

Used to check every member before anything is unpacked (so a crafted package is
refused with its name and the offending member), to write the package metadata that
scanners read, and to build the tool stage.
"""

from __future__ import annotations

import io
import lzma
import os
import posixpath
import tarfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from basekiln.errors import BuildError

T = TypeVar("T")
R = TypeVar("R")

AR_MAGIC = b"!<arch>\n"


class UnsafePackageError(BuildError):
    """A package whose data archive would write outside the root it unpacks into."""


@dataclass(frozen=True)
class DebMembers:
    control_tar: bytes
    control_name: str
    data_tar: bytes
    data_name: str


def read_ar(data: bytes, what: str) -> dict[str, bytes]:
    """The members of an ar archive (the .deb container), by name."""
    if not data.startswith(AR_MAGIC):
        raise BuildError(f"{what}: not a Debian package (no ar header)")
    members: dict[str, bytes] = {}
    offset = len(AR_MAGIC)
    while offset + 60 <= len(data):
        header = data[offset : offset + 60]
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        start = offset + 60
        members[name] = data[start : start + size]
        offset = start + size + (size % 2)
    return members


def open_deb(path: Path, what: str) -> DebMembers:
    members = read_ar(path.read_bytes(), what)
    control = _pick(members, "control.tar", what)
    data = _pick(members, "data.tar", what)
    return DebMembers(members[control], control, members[data], data)


def _pick(members: dict[str, bytes], prefix: str, what: str) -> str:
    for name in members:
        if name.startswith(prefix):
            if name.endswith(".zst"):
                raise BuildError(
                    f"{what}: {name} is zstd-compressed, which this Python "
                    "cannot read; Debian's own archive uses xz"
                )
            return name
    raise BuildError(f"{what}: no {prefix}.* member; the file is not a valid .deb")


def read_each(read: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """`read` applied to each item, in threads, results in the items' order.

    For reading many .debs: xz decompression releases the GIL, so the threads overlap;
    whatever must see the packages in order (the unpack guard) walks the results after.
    """
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        return list(pool.map(read, items))


def open_tar(blob: bytes, name: str) -> tarfile.TarFile:
    if name.endswith(".xz"):
        blob = lzma.decompress(blob)
    return tarfile.open(fileobj=io.BytesIO(blob), mode="r:*")


def control_files(deb: DebMembers) -> dict[str, bytes]:
    """control, md5sums, ... from control.tar, by base name."""
    files = {}
    with open_tar(deb.control_tar, deb.control_name) as tar:
        for member in tar:
            if member.isfile():
                handle = tar.extractfile(member)
                if handle is not None:
                    files[posixpath.basename(member.name)] = handle.read()
    return files


@dataclass(frozen=True)
class PackageRead:
    """What a build needs of one .deb, from one pass over it."""

    members: list[tarfile.TarInfo]
    control: dict[str, bytes]
    # The contents of the package's conffiles (path without the leading slash), whose
    # md5 sums a dpkg database records; no other file's content is kept.
    conffiles: dict[str, bytes]


def read_package(path: Path, what: str) -> PackageRead:
    """A .deb's data members, control files and conffile contents."""
    deb = open_deb(path, what)
    control = control_files(deb)
    wanted = set(conffile_paths(control.get("conffiles", b"")))
    members = []
    conffiles = {}
    for member, content in iter_data(deb):
        members.append(member)
        name = posixpath.normpath(member.name).strip("/")
        if content is not None and "/" + name in wanted:
            conffiles[name] = content
    return PackageRead(members, control, conffiles)


def conffile_paths(conffiles: bytes) -> list[str]:
    """The absolute paths a control.tar `conffiles` file lists, flags left out."""
    paths = []
    for raw in conffiles.decode("utf-8").splitlines():
        words = raw.split()
        # Flags such as remove-on-upgrade come before the path.
        if words and words[-1].startswith("/"):
            paths.append(words[-1])
    return paths


def iter_data(deb: DebMembers) -> Iterator[tuple[tarfile.TarInfo, bytes | None]]:
    """Data members in archive order, with contents for regular files."""
    with open_tar(deb.data_tar, deb.data_name) as tar:
        for member in tar:
            handle = tar.extractfile(member) if member.isfile() else None
            yield member, (handle.read() if handle is not None else None)


class UnpackGuard:
    """Refuses members that would land outside the unpack root, across packages.

    Three ways out: a `..` component, an absolute path, and a link that points out of
    the root which a later member (of any package) is then written through. Inside the
    assembly sandbox the root is a directory, so an absolute symlink target points at
    the sandbox, not the image: writing through one counts as leaving the root.
    """

    def __init__(self) -> None:
        self._outward_links: dict[str, str] = {}

    def check(self, package: str, members: list[tarfile.TarInfo]) -> None:
        for member in members:
            self._check_member(package, member)

    def _check_member(self, package: str, member: tarfile.TarInfo) -> None:
        name = member.name
        if name.startswith("/"):
            raise UnsafePackageError(_unsafe(package, name, "is an absolute path"))
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise UnsafePackageError(_unsafe(package, name, "has a '..' component"))
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in self._outward_links:
                raise UnsafePackageError(
                    _unsafe(
                        package,
                        name,
                        f"is written through {prefix}, a link to "
                        f"{self._outward_links[prefix]} outside the root",
                    )
                )
        normal = "/".join(parts)
        if member.islnk() and _leaves_root("", member.linkname):
            raise UnsafePackageError(
                _unsafe(package, name, f"is a hard link to {member.linkname}, outside the root")
            )
        if member.issym() and _leaves_root(posixpath.dirname(normal), member.linkname):
            self._outward_links[normal] = member.linkname
        else:
            self._outward_links.pop(normal, None)


def _leaves_root(directory: str, target: str) -> bool:
    """Whether `target`, resolved lexically from `directory`, is outside the root."""
    if target.startswith("/"):
        return True
    depth = len([p for p in directory.split("/") if p not in ("", ".")])
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def _unsafe(package: str, member: str, why: str) -> str:
    return (
        f"package {package}: member {member!r} {why}; refusing to unpack it. The .deb "
        "is malformed or malicious: check where it came from and its lockfile entry."
    )
