"""`basekiln new`: a commented recipe with safe defaults, locked, then built once.

The defaults are the catalogue's habits: a nonroot user the image runs as, no login
shell, documentation dropped, tests that the shell is absent and the user is nonroot,
and budgets that refuse a shell, setuid files, a package manager and world-writable
paths. `max_packages` is set to what the lock resolved, so that growth is a decision
someone reviews; the recipe is written, locked, given that figure and locked again.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from basekiln.catalogue import load_selection
from basekiln.config import Config
from basekiln.errors import BasekilnError, InputError
from basekiln.lock import Mode, lock_all, platform_of
from basekiln.lockfile import load_lock_chain, lockfile_path, read_lockfile
from basekiln.recipe import NAME_PATTERN, PACKAGE_PATTERN, Source, load_recipe
from basekiln.results import BuildResult
from basekiln.sbom import locked_union

log = logging.getLogger(__name__)

NONROOT_UID = 65532
DOC_PATHS = ("/usr/share/doc", "/usr/share/man", "/usr/share/info", "/usr/share/lintian")
BUDGET_PLACEHOLDER = "__MAX_PACKAGES__"


@dataclass(frozen=True)
class NewRecipe:
    name: str
    path: Path
    lockfile: Path
    packages: int  # in the whole image, parents' included
    build: BuildResult | None


def parse_source(text: str) -> Source:
    """`ARCHIVE/SUITE` (e.g. `debian/bookworm`) as a recipe source."""
    archive, slash, suite = text.partition("/")
    if not slash or not archive or not suite:
        raise InputError(f"--source {text!r}: write ARCHIVE/SUITE, like debian/bookworm")
    return Source(archive=archive, suite=suite)


def render_recipe(
    name: str,
    parent: str | None,
    packages: Sequence[str],
    sources: Sequence[Source] = (),
    description: str = "",
) -> str:
    """The recipe's YAML, commented; `max_packages` is a placeholder until locked."""
    _check_names(name, parent, packages)
    lines = [
        f"# {name}: written by `basekiln new`. Edit it, then `basekiln lock {name}` and",
        f"# `basekiln build {name}`; review the lockfile diff like code.",
        f"name: {name}",
        f"description: {_quote(description or f'{name} image')}",
    ]
    if parent:
        lines += [
            "# Everything the parent holds (users, CA bundle, time zones...) is inherited.",
            f"parent: {parent}",
        ]
    else:
        lines += ["release: bookworm"]
    if sources:
        lines += ["# The suites to resolve against (default: the release's usual three)."]
        lines += ["sources:"]
        lines += [f"  - {{archive: {s.archive}, suite: {s.suite}}}" for s in sources]
    listed = [] if parent else [
        "  # /etc/os-release, which scanners read; its dependencies only serve",
        "  # maintainer scripts, which basekiln never runs.",
        "  - {name: base-files, dependencies: false}",
    ]  # fmt: skip
    listed += [f"  - {p}" for p in packages]
    lines += ["packages:", *listed] if listed else ["packages: []"]
    lines += ["# Nobody reads documentation inside a container.", "drop:"]
    lines += [f"  - {p}" for p in DOC_PATHS]
    if not parent:
        lines += [
            "groups:",
            "  - {name: root, gid: 0}",
            f"  - {{name: nonroot, gid: {NONROOT_UID}}}",
            "# No login shell for anyone: the image has none (see budgets).",
            "users:",
            "  - {name: root, uid: 0, gid: 0, home: /root, shell: /sbin/nologin}",
            f"  - {{name: nonroot, uid: {NONROOT_UID}, gid: {NONROOT_UID}, "
            "home: /home/nonroot, shell: /sbin/nologin}",
        ]
    lines += [
        "# Containers run as the unprivileged user unless a deployment says otherwise.",
        f'user: "{NONROOT_UID}"',
        "workdir: /home/nonroot",
        "# Limits the build enforces on the whole image (parents included). max_packages",
        "# is what the lock resolved today: raising it is a decision to review.",
        "budgets:",
        f"  max_packages: {BUDGET_PLACEHOLDER}",
        "  allow_shell: false",
        "  allow_setuid: false",
        "  allow_package_manager: false",
        "  allow_world_writable: false",
        "tests:",
        "  files:",
        "    - {name: no shell, path: /bin/sh, present: false}",
        "  metadata:",
        f'    - {{name: runs as nonroot, user: "{NONROOT_UID}"}}',
    ]
    return "\n".join(lines) + "\n"


def _check_names(name: str, parent: str | None, packages: Sequence[str]) -> None:
    problems = []
    if not re.match(NAME_PATTERN, name):
        problems.append(f"name {name!r}: lowercase letters, digits and -, at most 63")
    if parent is not None and not re.match(NAME_PATTERN, parent):
        problems.append(f"--parent {parent!r} is not a recipe name")
    problems += [f"--package {p!r} is not a Debian package name" for p in packages
                 if not re.match(PACKAGE_PATTERN, p)]  # fmt: skip
    if problems:
        raise InputError("basekiln new: " + "; ".join(problems))


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def create_recipe(
    config: Config,
    name: str,
    parent: str | None,
    packages: Sequence[str],
    sources: Sequence[Source] = (),
    description: str = "",
) -> tuple[Path, Path, int]:
    """Write and lock the recipe; its path, its lockfile and its package count.

    When it cannot be locked (a package the archive lacks, say), nothing it wrote is
    left behind, so the same command can be run again once the cause is fixed.
    """
    path = config.recipes_dir / f"{name}.yaml"
    if path.exists():
        raise InputError(f"{path} already exists; edit it, or pick another name")
    if parent is not None:
        parent_path = config.recipes_dir / f"{parent}.yaml"
        if not parent_path.is_file():
            raise InputError(f"--parent {parent}: no recipe {parent_path}; create it first")
        if not sources:
            sources = load_recipe(parent_path).recipe.sources or ()

    text = render_recipe(name, parent, packages, sources, description)
    lock_path = lockfile_path(config.lockfiles_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.replace(BUDGET_PLACEHOLDER, "1000"))
    try:
        count = _lock(config, name)
        path.write_text(text.replace(BUDGET_PLACEHOLDER, str(count)))
        _lock(config, name)
    except BasekilnError:
        path.unlink(missing_ok=True)
        lock_path.unlink(missing_ok=True)
        raise
    log.info("wrote %s and %s (%d packages)", path, lock_path, count)
    return path, lock_path, count


def _lock(config: Config, name: str) -> int:
    selection = load_selection([name], config.recipes_dir)
    lock_all(config, selection, Mode.KEEP_FRESH)
    lock = read_lockfile(lockfile_path(config.lockfiles_dir, name))
    platform = platform_of(selection[-1].recipe.architectures[0])
    return len(locked_union(load_lock_chain(config.lockfiles_dir, lock), platform))


def new_recipe(
    config: Config,
    name: str,
    *,
    parent: str | None = None,
    packages: Sequence[str] = (),
    sources: Sequence[Source] = (),
    description: str = "",
    build: bool = True,
    show_progress: bool = False,
) -> NewRecipe:
    """`basekiln new`: write, lock, and (unless `build` is false) build once."""
    path, lock_path, count = create_recipe(config, name, parent, packages, sources, description)
    result = None
    if build:
        from basekiln.build import BuildOptions, build_recipes

        results = build_recipes(config, [name], BuildOptions(show_progress=show_progress))
        result = next(r for r in results if r.recipe == name)
    return NewRecipe(name, path, lock_path, count, result)
