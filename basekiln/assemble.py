"""Assemble: the build context BuildKit receives, holding only locked and generated inputs.

Every .deb is verified against its lockfile hash again on the way in, and every
member of every package is checked against escaping the root before the build starts,
so a crafted package fails here with its name rather than somewhere inside BuildKit.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

from basekiln._run import CommandError, run
from basekiln.cache import Cache
from basekiln.deb import PackageRead, UnpackGuard, read_each, read_package
from basekiln.dpkg_database import database_files, registered
from basekiln.errors import BuildError
from basekiln.lockfile import LockedPackage, Lockfile
from basekiln.recipe import Group, Recipe, User
from basekiln.render import (
    Directory,
    GeneratedFile,
    render_assemble_script,
    render_dockerfile,
    unpack_steps,
)

log = logging.getLogger(__name__)

STATUS_DIR = "var/lib/dpkg/status.d"
APT_SOURCES = "etc/apt/sources.list.d/debian.sources"
NSSWITCH = b"""passwd:         files
group:          files
shadow:         files
hosts:          files dns
networks:       files
protocols:      files
services:       files
ethers:         files
rpc:            files
"""


@dataclass(frozen=True)
class ParentImage:
    """A parent recipe's built image, passed to BuildKit as a named context."""

    recipe: str
    layout: Path
    digest: str


@dataclass(frozen=True)
class BuildInputs:
    """Everything one image build reads, already loaded and checked."""

    recipe: Recipe
    recipe_path: str
    lock: Lockfile
    lockfile_path: str
    lockfile_sha256: str
    chain: tuple[Recipe, ...]  # root ancestor first, this recipe last
    platform: str
    parent: ParentImage | None


def identity(chain: tuple[Recipe, ...]) -> tuple[list[User], list[Group]]:
    """Users and groups along the parent chain; a child's entry replaces its parent's."""
    users: dict[str, User] = {}
    groups: dict[str, Group] = {}
    for recipe in chain:
        users.update({u.name: u for u in recipe.users})
        groups.update({g.name: g for g in recipe.groups})
    known_gids = {g.gid for g in groups.values()}
    for user in users.values():
        gid = user.gid if user.gid is not None else user.uid
        if gid not in known_gids:
            groups[user.name] = Group(name=user.name, gid=gid)
            known_gids.add(gid)
    return (
        sorted(users.values(), key=lambda u: u.uid),
        sorted(groups.values(), key=lambda g: g.gid),
    )


def passwd_text(users: list[User]) -> bytes:
    lines = [
        f"{u.name}:x:{u.uid}:{u.gid if u.gid is not None else u.uid}:{u.name}:{u.home}:{u.shell}\n"
        for u in users
    ]
    return "".join(lines).encode()


def group_text(groups: list[Group]) -> bytes:
    return "".join(f"{g.name}:x:{g.gid}:{','.join(g.members)}\n" for g in groups).encode()


def merged_usr(inputs: BuildInputs) -> bool:
    """Whether the image has a merged /usr: once an ancestor has, every child keeps it."""
    return any(recipe.merged_usr for recipe in inputs.chain)


def dpkg_registered(inputs: BuildInputs) -> list[LockedPackage]:
    """The packages this image registers with dpkg (and has dpkg configure).

    None unless the nearest recipe along the chain that chooses says `dpkg: database`.
    Configuring needs the whole root in one place, so only an image without a parent
    may register packages; a child of such an image takes packages partially.
    """
    mode = next((r.dpkg for r in reversed(inputs.chain) if r.dpkg is not None), "status.d")
    if mode != "database":
        return []
    own = registered(inputs.recipe, inputs.lock.packages_for(inputs.platform))
    if own and inputs.parent is not None:
        raise BuildError(
            f"{inputs.recipe.name}: with `dpkg: database`, only an image without a parent "
            f"may take whole packages (this one takes {', '.join(p.name for p in own)}); "
            "take them with `dependencies: false` or `paths`, or lock them into the parent"
        )
    return own


def generated_files(inputs: BuildInputs, statuses: dict[str, bytes]) -> list[GeneratedFile]:
    # Packages dpkg knows need no status.d entry; partial ones keep theirs.
    known = {p.name for p in dpkg_registered(inputs)}
    statuses = {name: text for name, text in statuses.items() if name not in known}
    files = [
        GeneratedFile(f"{STATUS_DIR}/{name}", control) for name, control in sorted(statuses.items())
    ]
    users, groups = identity(inputs.chain)
    if inputs.recipe.users or inputs.recipe.groups:
        files.append(GeneratedFile("etc/passwd", passwd_text(users)))
        files.append(GeneratedFile("etc/group", group_text(groups)))
    if inputs.parent is None:
        files.append(GeneratedFile("etc/nsswitch.conf", NSSWITCH))
    if inputs.recipe.apt_sources == "snapshot":
        files.append(GeneratedFile(APT_SOURCES, snapshot_sources(inputs)))
    return sorted(files, key=lambda f: f.path)


def snapshot_sources(inputs: BuildInputs) -> bytes:
    """apt's sources (deb822) at snapshot.debian.org, one stanza per archive.

    Each archive's time stamp is its newest InRelease in the lockfile. snapshot.debian.org
    names its imports by when they ran, shortly after the archive published, and serves
    the newest import at or before a given time.
    """
    newest: dict[str, datetime] = {}
    suites: dict[str, list[str]] = {}
    for release in inputs.lock.releases:
        when = parsedate_to_datetime(release.date).astimezone(UTC)
        newest[release.archive] = max(when, newest.get(release.archive, when))
        suites.setdefault(release.archive, []).append(release.suite)
    components = {s.archive: s.components for s in inputs.recipe.effective_sources()}
    stanzas = [
        f"# Generated by basekiln from {inputs.lockfile_path}: Debian's archive as of the "
        "InRelease\n# files that lockfile pins, so that apt sees the packages the image "
        "was built from.\n"
    ]
    for archive in sorted(newest):
        stamp = newest[archive].strftime("%Y%m%dT%H%M%SZ")
        stanzas.append(
            "Types: deb\n"
            f"URIs: http://snapshot.debian.org/archive/{archive}/{stamp}/\n"
            f"Suites: {' '.join(sorted(suites[archive]))}\n"
            f"Components: {' '.join(components.get(archive, ['main']))}\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
            "Check-Valid-Until: no\n"
        )
    return "\n".join(stanzas).encode()


def directories(inputs: BuildInputs) -> list[Directory]:
    dirs = [Directory("tmp", 0o1777)] if inputs.parent is None else []
    for user in inputs.recipe.users:
        if user.home not in ("/", "/nonexistent"):
            gid = user.gid if user.gid is not None else user.uid
            dirs.append(Directory(user.home.strip("/"), 0o700, user.uid, gid))
    return dirs


def read_packages(cache: Cache, packages: list[LockedPackage]) -> dict[str, PackageRead]:
    """Each cached .deb verified again and read once (in threads, see `read_each`)."""

    def read(pkg: LockedPackage) -> PackageRead:
        what = f"{pkg.name} {pkg.version}"
        return read_package(cache.verified(pkg.sha256, what), what)

    return dict(zip((p.name for p in packages), read_each(read, packages), strict=True))


def check_and_describe(
    packages: list[LockedPackage], reads: Mapping[str, PackageRead]
) -> dict[str, bytes]:
    """Refuse unsafe members, return control paragraphs.

    The guard walks the packages in order, since a link one package makes can be
    written through by a later one.
    """
    guard = UnpackGuard()
    statuses = {}
    for pkg in packages:
        guard.check(pkg.name, reads[pkg.name].members)
        statuses[pkg.name] = _status_paragraph(reads[pkg.name].control, pkg)
    return statuses


def _status_paragraph(files: dict[str, bytes], pkg: LockedPackage) -> bytes:
    control = files.get("control")
    if control is None:
        raise BuildError(f"{pkg.name} {pkg.version}: the package has no control file")
    text = control.decode("utf-8").rstrip("\n") + "\n"
    if not any(line.startswith("Status:") for line in text.splitlines()):
        text = text.replace("\n", "\nStatus: install ok installed\n", 1)
    return text.encode()


def labels(inputs: BuildInputs, source: str, revision: str | None) -> dict[str, str]:
    """The org.opencontainers.image.* labels, all derived from the inputs."""
    created = datetime.fromtimestamp(inputs.lock.source_date_epoch, UTC)
    out = {
        "org.opencontainers.image.title": inputs.recipe.name,
        "org.opencontainers.image.created": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "org.opencontainers.image.source": source,
        "dev.basekiln.lockfile.sha256": inputs.lockfile_sha256,
    }
    if inputs.recipe.description:
        out["org.opencontainers.image.description"] = inputs.recipe.description
    if revision:
        out["org.opencontainers.image.revision"] = revision
    if inputs.parent is not None:
        out["org.opencontainers.image.base.name"] = inputs.parent.recipe
        out["org.opencontainers.image.base.digest"] = inputs.parent.digest
    out.update(inputs.recipe.annotations)
    return out


def git_revision(root: Path, paths: list[str]) -> str | None:
    """The last commit touching `paths`, if they are committed and unchanged."""
    try:
        dirty = run(
            ["git", "-C", str(root), "status", "--porcelain", "--", *paths], timeout=30
        ).stdout.strip()
        if dirty:
            return None
        out = (
            run(["git", "-C", str(root), "log", "-1", "--format=%H", "--", *paths], timeout=30)
            .stdout.decode()
            .strip()
        )
    except CommandError:
        return None
    return out or None


@dataclass(frozen=True)
class RenderedBuild:
    """The Dockerfile, the assembly script and the generated files of one build."""

    dockerfile: str
    script: str
    generated: list[GeneratedFile]


def render_build(
    inputs: BuildInputs, statuses: dict[str, bytes], source: str, revision: str | None
) -> RenderedBuild:
    packages = inputs.lock.packages_for(inputs.platform)
    generated = generated_files(inputs, statuses)
    script = render_assemble_script(
        inputs.recipe,
        inputs.recipe_path,
        unpack_steps(inputs.recipe, packages),
        generated,
        directories(inputs),
        ca_bundle=any(p.name == "ca-certificates" for p in packages),
        merged_usr=merged_usr(inputs),
        dpkg_packages=[(p.name, p.architecture) for p in dpkg_registered(inputs)],
        source_date_epoch=inputs.lock.source_date_epoch,
    )
    dockerfile = render_dockerfile(
        inputs.recipe,
        inputs.recipe_path,
        inputs.lockfile_path,
        inputs.parent is not None,
        labels(inputs, source, revision),
    )
    return RenderedBuild(dockerfile, script, generated)


def prepare_context(
    cache: Cache, inputs: BuildInputs, dest: Path, source: str, revision: str | None
) -> Path:
    """Write the build context into `dest` (replaced if present) and return it."""
    packages = inputs.lock.packages_for(inputs.platform)
    reads = read_packages(cache, packages)
    rendered = render_build(inputs, check_and_describe(packages, reads), source, revision)

    staging = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "debs").mkdir(parents=True)
    for pkg in packages:
        link_or_copy(cache.path(pkg.sha256), staging / "debs" / f"{pkg.sha256}.deb")
    for file in rendered.generated:
        target = staging / "generated" / "rootfs" / file.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(file.content)
    if registered_packages := dpkg_registered(inputs):
        files = database_files(inputs.recipe, registered_packages, reads)
        _write_tree(staging / "generated" / "dpkg", files)
    (staging / "generated" / "assemble.sh").write_text(rendered.script)
    (staging / "Dockerfile").write_text(rendered.dockerfile)
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
    return dest


def _write_tree(root: Path, files: list[GeneratedFile]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for file in files:
        target = root / file.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(file.content)
        target.chmod(file.mode)


def link_or_copy(source: str | Path, target: str | Path) -> None:
    """A hard link where both paths share a file system, else a copy with its mode.

    The mode matters: a build context's file modes reach the image (maintainer scripts
    must stay executable).
    """
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
