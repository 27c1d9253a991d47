"""The lock stage: recipes to lockfiles, against the verified archive."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import httpx

from basekiln import _http
from basekiln.archive import BinaryPackage, ReleaseRecord, SuiteIndex, load_suite
from basekiln.cache import Cache
from basekiln.config import Config
from basekiln.errors import LockfileError
from basekiln.lockfile import (
    LockedPackage,
    LockedRelease,
    Lockfile,
    ParentRef,
    RecipeRef,
    file_sha256,
    load_lock_chain,
    lockfile_path,
    read_lockfile,
    write_lockfile,
)
from basekiln.recipe import LoadedRecipe, Source
from basekiln.resolver import Request, Selected, Universe, resolve
from basekiln.toolimage import TOOL_PACKAGES

log = logging.getLogger(__name__)


class Mode(Enum):
    """What `lock` does with a lockfile that already exists."""

    KEEP_FRESH = "keep"  # resolve only when missing or stale
    UPDATE = "update"  # always re-resolve against today's archive
    CHECK = "check"  # write nothing, report staleness


@dataclass(frozen=True)
class LockDiff:
    added: tuple[tuple[str, str], ...] = ()
    removed: tuple[tuple[str, str], ...] = ()
    upgraded: tuple[tuple[str, str, str], ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.upgraded)


@dataclass
class LockOutcome:
    recipe: str
    path: Path
    written: bool = False
    stale: list[str] = field(default_factory=list)
    diff: LockDiff = field(default_factory=LockDiff)


def platform_of(architecture: str) -> str:
    return f"linux/{architecture}"


class Archive:
    """Verified suite indexes, loaded once per run and shared by every recipe."""

    def __init__(self, config: Config, http: httpx.Client) -> None:
        self.config = config
        self.http = http
        self.cache = Cache(config.cache_dir)
        self._suites: dict[tuple[str, str, tuple[str, ...], str], SuiteIndex] = {}
        self._universes: dict[tuple[tuple[tuple[str, ...], ...], str], Universe] = {}

    def suite(self, source: Source, architecture: str) -> SuiteIndex:
        key = (source.archive, source.suite, tuple(source.components), architecture)
        if key not in self._suites:
            log.info("verifying %s/%s (%s)", source.archive, source.suite, architecture)
            self._suites[key] = load_suite(
                self.http,
                self.cache,
                source.archive,
                self.config.archive(source.archive),
                source.suite,
                source.components,
                architecture,
                self.config.file.fetch.attempts,
            )
        return self._suites[key]

    def universe(self, sources: list[Source], architecture: str) -> Universe:
        key = (tuple((s.archive, s.suite, *s.components) for s in sources), architecture)
        if key not in self._universes:
            packages: list[BinaryPackage] = []
            for source in sources:
                packages.extend(self.suite(source, architecture).packages)
            self._universes[key] = Universe(packages)
        return self._universes[key]

    def releases(self, sources: list[Source], architecture: str) -> list[ReleaseRecord]:
        return [self.suite(s, architecture).release for s in sources]


def lock_all(
    config: Config, recipes: list[LoadedRecipe], mode: Mode, dry_run: bool = False
) -> list[LockOutcome]:
    """Lock `recipes` (parents first) and return what happened to each.

    With `dry_run`, resolve and diff but write nothing (`lock --diff`).
    """
    outcomes: list[LockOutcome] = []
    with _http.client(config.file.fetch.timeout_seconds) as http:
        archive = Archive(config, http)
        for loaded in recipes:
            outcomes.append(_lock_one(config, archive, loaded, mode, dry_run))
    return outcomes


def _lock_one(
    config: Config, archive: Archive, loaded: LoadedRecipe, mode: Mode, dry_run: bool
) -> LockOutcome:
    name = loaded.recipe.name
    path = lockfile_path(config.lockfiles_dir, name)
    outcome = LockOutcome(recipe=name, path=path)
    existing: Lockfile | None = None
    if path.exists():
        try:
            existing = read_lockfile(path)
        except LockfileError as exc:
            if mode is Mode.CHECK:
                outcome.stale.append(exc.message)
                return outcome
            if mode is Mode.KEEP_FRESH:
                raise  # a broken lockfile is replaced only when asked to (--update)
            log.warning("replacing an unreadable lockfile: %s", exc.message)
    elif mode is Mode.CHECK:
        outcome.stale.append(f"{path} does not exist; run `basekiln lock {name}`")
        return outcome
    try:
        parent = _parent_ref(config, loaded)
    except LockfileError as exc:
        if mode is not Mode.CHECK:
            raise
        outcome.stale.append(exc.message)  # a child of an unlocked parent is stale too
        return outcome

    if existing is not None:
        outcome.stale.extend(_staleness(config, loaded, existing, parent))
        if mode is Mode.CHECK:
            outcome.stale.extend(_archive_staleness(archive, loaded, existing))
            return outcome
        if mode is Mode.KEEP_FRESH and not outcome.stale:
            return outcome

    fresh = resolve_lockfile(config, archive, loaded, parent)
    if existing is not None:
        outcome.diff = diff_lockfiles(existing, fresh)
        if outcome.diff.empty and not outcome.stale:
            # Same packages: keep the lockfile, and with it the build's SOURCE_DATE_EPOCH.
            return outcome
    if dry_run:
        if existing is None:
            outcome.diff = diff_lockfiles(fresh.model_copy(update={"packages": []}), fresh)
        return outcome
    outcome.written = write_lockfile(path, fresh)
    if outcome.written:
        log.info("wrote %s", path)
    return outcome


def _parent_ref(config: Config, loaded: LoadedRecipe) -> ParentRef | None:
    parent = loaded.recipe.parent
    if parent is None:
        return None
    path = lockfile_path(config.lockfiles_dir, parent)
    if not path.is_file():
        raise LockfileError(
            f"{path}: the parent {parent!r} is not locked; run `basekiln lock {parent}` first"
        )
    return ParentRef(recipe=parent, lockfile_sha256=file_sha256(path))


def _staleness(
    config: Config, loaded: LoadedRecipe, lock: Lockfile, parent: ParentRef | None
) -> list[str]:
    reasons = []
    if lock.recipe.sha256 != loaded.sha256:
        reasons.append(f"{loaded.path.name} changed since it was locked")
    if lock.parent != parent:
        reasons.append("the parent's lockfile changed since this one was written")
    wanted_platforms = [platform_of(a) for a in loaded.recipe.architectures]
    if lock.platforms != wanted_platforms:
        reasons.append(f"platforms are {lock.platforms}, the recipe asks for {wanted_platforms}")
    return reasons


def _archive_staleness(archive: Archive, loaded: LoadedRecipe, lock: Lockfile) -> list[str]:
    reasons = []
    sources = loaded.recipe.effective_sources()
    for architecture in loaded.recipe.architectures:
        universe = archive.universe(sources, architecture)
        platform = platform_of(architecture)
        for pkg in lock.packages_for(platform) + lock.tools_for(platform):
            current = universe.find(pkg.name, pkg.version)
            if current is None or current.sha256 != pkg.sha256:
                offered = ", ".join(p.version for p in universe.candidates(pkg.name)) or "none"
                reasons.append(
                    f"{pkg.name} {pkg.version} is no longer in the archive (offered now: {offered})"
                )
    return reasons


def resolve_lockfile(
    config: Config, archive: Archive, loaded: LoadedRecipe, parent: ParentRef | None
) -> Lockfile:
    """Resolve a recipe against the archive as it is now."""
    recipe = loaded.recipe
    sources = recipe.effective_sources()
    ancestors = _ancestor_locks(config, parent)
    parent_lock = ancestors[0] if ancestors else None
    packages: list[LockedPackage] = []
    tools: list[LockedPackage] = []
    releases: dict[tuple[str, str], ReleaseRecord] = {}
    for architecture in recipe.architectures:
        universe = archive.universe(sources, architecture)
        for record in archive.releases(sources, architecture):
            releases[(record.archive, record.suite)] = record
        installed = _installed_from(ancestors, universe, platform_of(architecture))
        requests = [Request(p.name, p.dependencies) for p in recipe.packages]
        selected = resolve(universe, requests, installed, origin=str(loaded.path))
        platform = platform_of(architecture)
        packages.extend(_locked(s, platform) for s in selected)
        tool_requests = [Request(name, dependencies=False) for name in TOOL_PACKAGES]
        tool_origin = f"{loaded.path} (build tools)"
        tools.extend(
            _locked(s, platform) for s in resolve(universe, tool_requests, origin=tool_origin)
        )
    epoch = max(r.timestamp for r in releases.values())
    if parent_lock is not None:
        epoch = max(epoch, parent_lock.source_date_epoch)
    return Lockfile(
        recipe=RecipeRef(
            name=recipe.name, path=_relative(config, loaded.path), sha256=loaded.sha256
        ),
        parent=parent,
        platforms=[platform_of(a) for a in recipe.architectures],
        source_date_epoch=epoch,
        mirrors={s.archive: list(config.archive(s.archive).mirrors) for s in sources},
        releases=[LockedRelease(**vars(r)) for r in releases.values()],
        packages=packages,
        tools=tools,
    )


def _locked(selected: Selected, platform: str) -> LockedPackage:
    pkg = selected.package
    return LockedPackage(
        name=pkg.name,
        version=pkg.version,
        architecture=pkg.architecture,
        platform=platform,
        sha256=pkg.sha256,
        size=pkg.size,
        filename=pkg.filename,
        source=pkg.source,
        source_version=pkg.source_version,
        archive=pkg.archive,
        suite=pkg.suite,
        depends_on=list(selected.depends_on),
        dependencies_followed=selected.dependencies_followed,
    )


def _ancestor_locks(config: Config, parent: ParentRef | None) -> list[Lockfile]:
    """The parent's lockfile, then the grandparent's, up to the root of the chain."""
    if parent is None:
        return []
    return load_lock_chain(
        config.lockfiles_dir, read_lockfile(lockfile_path(config.lockfiles_dir, parent.recipe))
    )


def _installed_from(
    ancestors: list[Lockfile], universe: Universe, platform: str
) -> dict[str, BinaryPackage]:
    """Every ancestor's packages as the resolver sees them (with their Provides).

    The whole chain counts, not only the parent: a grandchild's dependency on a
    package its grandparent installed is already satisfied in the image.
    """
    installed: dict[str, BinaryPackage] = {}
    for lock in ancestors:
        for pkg in lock.packages_for(platform):
            if pkg.name in installed:
                continue  # the nearest ancestor's pin wins, as its layer comes last
            installed[pkg.name] = universe.find(pkg.name, pkg.version) or _offline(pkg)
    return installed


def _offline(pkg: LockedPackage) -> BinaryPackage:
    """A locked package the archive no longer offers, with what the lockfile knows."""
    return BinaryPackage(
        name=pkg.name,
        version=pkg.version,
        architecture=pkg.architecture,
        filename=pkg.filename,
        sha256=pkg.sha256,
        size=pkg.size,
        source=pkg.source,
        source_version=pkg.source_version,
        depends="",
        pre_depends="",
        provides="",
        priority="optional",
        archive=pkg.archive,
        suite=pkg.suite,
    )


def _relative(config: Config, path: Path) -> str:
    try:
        return str(path.resolve().relative_to(config.root.resolve()))
    except ValueError:
        return str(path)


def diff_lockfiles(old: Lockfile, new: Lockfile) -> LockDiff:
    before = {(p.platform, p.name): p.version for p in old.packages + old.tools}
    after = {(p.platform, p.name): p.version for p in new.packages + new.tools}
    return LockDiff(
        added=tuple((k[1], after[k]) for k in sorted(after.keys() - before.keys())),
        removed=tuple((k[1], before[k]) for k in sorted(before.keys() - after.keys())),
        upgraded=tuple(
            (k[1], before[k], after[k])
            for k in sorted(before.keys() & after.keys())
            if before[k] != after[k]
        ),
    )
