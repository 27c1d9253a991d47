"""A real dpkg database, for images whose dpkg and apt must keep working.

Packages are still unpacked by basekiln; this writes what `dpkg --unpack` would have
recorded: one status paragraph per package (unpacked, with its conffiles), and under
info/ the file list, md5sums, conffiles and maintainer scripts, plus the trigger
interests later installs will activate. The build then has the image's own dpkg
configure them. A package the recipe takes partially, or without its dependencies, is
not registered, since dpkg would count it broken; it stays in status.d, where
scanners still find it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import posixpath
from collections import defaultdict
from collections.abc import Iterable, Mapping

from basekiln.deb import PackageRead, conffile_paths
from basekiln.lockfile import LockedPackage
from basekiln.recipe import Recipe
from basekiln.render import GeneratedFile

# info/ files taken from control.tar as they are; scripts stay executable.
SCRIPTS = ("preinst", "postinst", "prerm", "postrm", "config")
DATA = ("conffiles", "md5sums", "shlibs", "symbols", "templates", "triggers")


def registered(recipe: Recipe, packages: Iterable[LockedPackage]) -> list[LockedPackage]:
    """The packages dpkg may know as installed: those taken whole with dependencies."""
    partial = {s.name for s in recipe.packages if s.paths or not s.dependencies}
    return [p for p in packages if p.name not in partial]


def is_dropped(path: str, drop: list[str]) -> bool:
    """Whether an image path (no leading slash) is, or lies under, a dropped path.

    Dropped paths may hold `*` and `?`, which match within one name, as in the shell.
    """
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(_matches(prefix, d) for d in drop for prefix in prefixes)


def _matches(path: str, pattern: str) -> bool:
    if "*" not in pattern and "?" not in pattern:
        return path == pattern
    names, wanted = path.split("/"), pattern.split("/")
    return len(names) == len(wanted) and all(
        fnmatch.fnmatchcase(n, w) for n, w in zip(names, wanted, strict=True)
    )


def info_name(control: bytes, name: str) -> str:
    """dpkg's name for a package's info/ files: `name:arch` for Multi-Arch: same."""
    fields = _fields(control)
    if fields.get("Multi-Arch") == "same":
        return f"{name}:{fields.get('Architecture', '')}"
    return name


def database_files(
    recipe: Recipe, packages: list[LockedPackage], reads: Mapping[str, PackageRead]
) -> list[GeneratedFile]:
    """The files `dpkg --unpack` would leave under /var/lib/dpkg for `packages`.

    Paths are relative to /var/lib/dpkg; `reads` holds each package's verified .deb,
    read once, by package name.
    """
    drop = [d.strip("/") for d in recipe.drop]
    files: list[GeneratedFile] = []
    paragraphs: list[bytes] = []
    interests: dict[str, list[str]] = defaultdict(list)
    for pkg in sorted(packages, key=lambda p: p.name):
        read = reads[pkg.name]
        name = info_name(read.control["control"], pkg.name)
        files.extend(_info_files(name, read, drop))
        conffiles = _conffile_sums(read)
        paragraphs.append(status_paragraph(read.control["control"], conffiles))
        for trigger, who in trigger_interests(read.control.get("triggers", b""), pkg.name):
            interests[trigger].append(who)
    files.append(GeneratedFile("status", b"".join(paragraphs)))
    return files + _trigger_files(interests)


def status_paragraph(control: bytes, conffiles: list[tuple[str, str]]) -> bytes:
    """The control paragraph as `dpkg --unpack` records it: unpacked, with conffiles.

    dpkg itself then configures the package (runs its postinst) in the build.
    """
    lines = control.decode("utf-8").rstrip("\n").split("\n")
    lines = [line for line in lines if not line.startswith("Status:")]
    lines.insert(1, "Status: install ok unpacked")
    if conffiles:
        lines.append("Conffiles:")
        lines.extend(f" {path} {md5}" for path, md5 in conffiles)
    return ("\n".join(lines) + "\n\n").encode()


def trigger_interests(triggers: bytes, package: str) -> list[tuple[str, str]]:
    """(trigger, registrant) for each `interest*` line; registrant is `pkg[/noawait]`."""
    found = []
    for raw in triggers.decode("utf-8").splitlines():
        words = raw.split("#", 1)[0].split()
        if len(words) != 2 or not words[0].startswith("interest"):
            continue
        directive, trigger = words
        who = f"{package}/noawait" if directive == "interest-noawait" else package
        found.append((trigger, who))
    return found


def _trigger_files(interests: dict[str, list[str]]) -> list[GeneratedFile]:
    """triggers/File for file triggers, triggers/NAME for each named one."""
    file_lines: list[str] = []
    files = []
    for trigger in sorted(interests):
        whos = interests[trigger]
        if trigger.startswith("/"):
            file_lines.extend(f"{trigger} {who}\n" for who in whos)
        else:
            files.append(
                GeneratedFile(f"triggers/{trigger}", "".join(f"{w}\n" for w in whos).encode())
            )
    if file_lines:
        files.append(GeneratedFile("triggers/File", "".join(file_lines).encode()))
    return files


def _info_files(name: str, read: PackageRead, drop: list[str]) -> list[GeneratedFile]:
    paths = [posixpath.normpath(m.name).strip("/") for m in read.members]
    # The root is the list's "/." already.
    kept = [p for p in dict.fromkeys(paths) if p != "." and not is_dropped(p, drop)]
    listing = "".join(["/.\n", *(f"/{path}\n" for path in kept)]).encode()
    out = [GeneratedFile(f"info/{name}.list", listing)]
    control = read.control
    for script in SCRIPTS:
        if script in control:
            out.append(GeneratedFile(f"info/{name}.{script}", control[script], mode=0o755))
    for data in DATA:
        if data not in control:
            continue
        content = control[data]
        if data == "md5sums":
            content = _kept_sums(content, drop)
        out.append(GeneratedFile(f"info/{name}.{data}", content))
    return out


def _kept_sums(md5sums: bytes, drop: list[str]) -> bytes:
    lines = md5sums.decode("utf-8").splitlines(keepends=True)
    return "".join(
        line for line in lines if not is_dropped(line.split(maxsplit=1)[-1].strip(), drop)
    ).encode()


def _conffile_sums(read: PackageRead) -> list[tuple[str, str]]:
    sums = []
    for path in conffile_paths(read.control.get("conffiles", b"")):
        content = read.conffiles.get(path.lstrip("/"))
        if content is not None:
            sums.append((path, hashlib.md5(content, usedforsecurity=False).hexdigest()))
    return sums


def _fields(control: bytes) -> dict[str, str]:
    fields = {}
    for line in control.decode("utf-8").splitlines():
        if line and not line[0].isspace() and ":" in line:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields
