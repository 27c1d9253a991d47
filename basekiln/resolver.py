"""Dependency resolution: recipe package names to one exact .deb each.

Greedy and deterministic, like apt for a fresh install: for each OR-group of a
package's Pre-Depends and Depends (never Recommends), keep it if something selected
already satisfies it, otherwise take the first alternative that a real package or a
provider satisfies at the highest version. Failures explain the chain that led there.
"""

from __future__ import annotations

import difflib
import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache, cmp_to_key
from typing import Any

from debian.deb822 import PkgRelation
from debian.debian_support import version_compare

from basekiln.archive import BinaryPackage
from basekiln.errors import ResolveError

PRIORITY_RANK = {"required": 0, "important": 1, "standard": 2, "optional": 3, "extra": 4}


@dataclass(frozen=True)
class Request:
    """A package a recipe asks for by name."""

    name: str
    dependencies: bool = True


@dataclass(frozen=True)
class Alternative:
    name: str
    relation: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        return f"{self.name} ({self.relation} {self.version})" if self.relation else self.name


@dataclass(frozen=True)
class Selected:
    """A resolved package, why it is there, and what it pulled in."""

    package: BinaryPackage
    required_by: tuple[str, ...]
    depends_on: tuple[str, ...]
    dependencies_followed: bool


@dataclass
class _State:
    selected: dict[str, BinaryPackage] = field(default_factory=dict)
    parent: dict[str, tuple[str | None, str]] = field(default_factory=dict)
    required_by: dict[str, list[str]] = field(default_factory=dict)


def satisfies(version: str, relation: str | None, wanted: str | None) -> bool:
    """Debian version relation check (`<<`, `<=`, `=`, `>=`, `>>`)."""
    if relation is None or wanted is None:
        return True
    order = version_compare(version, wanted)
    match relation:
        case "<<":
            return order < 0
        case "<=":
            return order <= 0
        case "=":
            return order == 0
        case ">=":
            return order >= 0
        case ">>":
            return order > 0
    raise ValueError(f"unknown version relation {relation!r}")


@cache
def parse_relations(text: str) -> tuple[tuple[Alternative, ...], ...]:
    """Parse a Depends-style field into OR-groups (architecture qualifiers dropped)."""
    if not text.strip():
        return ()
    groups = []
    for group in PkgRelation.parse_relations(text):
        alternatives = []
        for alt in group:
            version: Any = alt.get("version")
            relation, wanted = version if version else (None, None)
            alternatives.append(Alternative(alt["name"], relation, wanted))
        groups.append(tuple(alternatives))
    return tuple(groups)


_PROVIDED = re.compile(r"([^\s,(]+)(?:\s*\(\s*=\s*([^\s)]+)\s*\))?")


def _parse_provides(text: str) -> list[tuple[str, str | None]]:
    """`name`, or `name (= version)`, comma-separated: some Rust packages list hundreds."""
    return [(name, version or None) for name, version in _PROVIDED.findall(text)]


class Universe:
    """Every package version the recipe's suites offer, indexed for resolution."""

    def __init__(self, packages: Iterable[BinaryPackage]) -> None:
        by_name: dict[str, list[BinaryPackage]] = {}
        providers: dict[str, list[tuple[BinaryPackage, str | None]]] = {}
        for pkg in packages:
            by_name.setdefault(pkg.name, []).append(pkg)
            if pkg.provides:
                for name, version in _parse_provides(pkg.provides):
                    providers.setdefault(name, []).append((pkg, version))
        self.by_name = {name: _newest_first(pkgs) for name, pkgs in by_name.items()}
        self.providers = providers

    def candidates(self, name: str) -> list[BinaryPackage]:
        return self.by_name.get(name, [])

    def find(self, name: str, version: str) -> BinaryPackage | None:
        return next((p for p in self.candidates(name) if p.version == version), None)

    def close_names(self, name: str) -> list[str]:
        names = list(self.by_name) + list(self.providers)
        prefix = [n for n in names if n.startswith(name)]
        return sorted(set(difflib.get_close_matches(name, names, n=5) + prefix[:3]))


def _newest_first(pkgs: list[BinaryPackage]) -> list[BinaryPackage]:
    if len(pkgs) == 1:
        return pkgs

    # A stable sort keeps suite order (as configured) among equal versions.
    def newer(a: BinaryPackage, b: BinaryPackage) -> int:
        return version_compare(b.version, a.version)

    return sorted(pkgs, key=cmp_to_key(newer))


def resolve(
    universe: Universe,
    requests: list[Request],
    installed: Mapping[str, BinaryPackage] | None = None,
    origin: str = "recipe",
) -> list[Selected]:
    """Resolve `requests` on top of `installed` (a parent image's packages)."""
    installed = dict(installed or {})
    state = _State()
    queue: deque[BinaryPackage] = deque()
    skip_deps = {r.name for r in requests if not r.dependencies}
    requested = {r.name for r in requests}

    for request in requests:
        if request.name in installed or request.name in state.selected:
            continue
        pkg = _choose_requested(universe, request, origin)
        _select(state, queue, pkg, None, origin)

    while queue:
        pkg = queue.popleft()
        if pkg.name in skip_deps:
            continue
        for group in parse_relations(pkg.pre_depends) + parse_relations(pkg.depends):
            if _satisfier(group, state.selected, installed, universe) is not None:
                continue
            choice = _choose(group, state, installed, universe, requested)
            if choice is None:
                raise ResolveError(_unsatisfiable(universe, state, pkg, group, origin))
            _select(state, queue, choice, pkg.name, " | ".join(map(str, group)))

    return [
        Selected(
            package=pkg,
            required_by=tuple(sorted(state.required_by.get(name, []))),
            depends_on=_depends_on(pkg, state.selected, installed, universe, skip_deps),
            dependencies_followed=name not in skip_deps,
        )
        for name, pkg in sorted(state.selected.items())
    ]


def _choose_requested(universe: Universe, request: Request, origin: str) -> BinaryPackage:
    candidates = universe.candidates(request.name)
    if candidates:
        return candidates[0]
    providers = sorted({p.name for p, _ in universe.providers.get(request.name, [])})
    if providers:
        raise ResolveError(
            f"{origin}: packages: {request.name!r} is a virtual package provided by "
            f"{', '.join(providers)}; name the one you want instead"
        )
    close = universe.close_names(request.name)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ResolveError(
        f"{origin}: packages: {request.name!r} is not in any of the recipe's suites.{hint} "
        "Fix the name in the recipe, or add the suite that carries it to `sources`."
    )


def _select(
    state: _State,
    queue: deque[BinaryPackage],
    pkg: BinaryPackage,
    parent: str | None,
    relation: str,
) -> None:
    state.required_by.setdefault(pkg.name, [])
    if parent is not None:
        state.required_by[pkg.name].append(parent)
    if pkg.name in state.selected:
        return
    state.selected[pkg.name] = pkg
    state.parent[pkg.name] = (parent, relation)
    queue.append(pkg)


def _satisfier(
    group: tuple[Alternative, ...],
    selected: Mapping[str, BinaryPackage],
    installed: Mapping[str, BinaryPackage],
    universe: Universe,
) -> str | None:
    for alt in group:
        for pool in (selected, installed):
            pkg = pool.get(alt.name)
            if pkg is not None and satisfies(pkg.version, alt.relation, alt.version):
                return pkg.name
        for provider, provided_version in universe.providers.get(alt.name, []):
            chosen = selected.get(provider.name) or installed.get(provider.name)
            if chosen is None or chosen.version != provider.version:
                continue
            if alt.relation is None or (
                provided_version and satisfies(provided_version, alt.relation, alt.version)
            ):
                return provider.name
    return None


def _choose(
    group: tuple[Alternative, ...],
    state: _State,
    installed: Mapping[str, BinaryPackage],
    universe: Universe,
    requested: set[str],
) -> BinaryPackage | None:
    for alt in group:
        if alt.name in state.selected or alt.name in installed:
            continue  # present at a version this alternative rejects
        for pkg in universe.candidates(alt.name):
            if satisfies(pkg.version, alt.relation, alt.version):
                return pkg
        providers = [
            p
            for p, v in universe.providers.get(alt.name, [])
            if p.name not in state.selected
            and p.name not in installed
            and (alt.relation is None or (v and satisfies(v, alt.relation, alt.version)))
        ]
        if providers:
            return min(
                providers,
                key=lambda p: (p.name not in requested, PRIORITY_RANK.get(p.priority, 5), p.name),
            )
    return None


def _depends_on(
    pkg: BinaryPackage,
    selected: Mapping[str, BinaryPackage],
    installed: Mapping[str, BinaryPackage],
    universe: Universe,
    skip_deps: set[str],
) -> tuple[str, ...]:
    if pkg.name in skip_deps:
        return ()
    names = set()
    for group in parse_relations(pkg.pre_depends) + parse_relations(pkg.depends):
        satisfier = _satisfier(group, selected, installed, universe)
        if satisfier is not None:
            names.add(satisfier)
    return tuple(sorted(names))


def _chain(state: _State, name: str, origin: str) -> str:
    steps = []
    current: str | None = name
    while current is not None:
        parent, relation = state.parent[current]
        steps.append(current if parent is None else f"{current} (via {relation})")
        current = parent
    return " → ".join([origin, *reversed(steps)])


def _unsatisfiable(
    universe: Universe,
    state: _State,
    pkg: BinaryPackage,
    group: tuple[Alternative, ...],
    origin: str,
) -> str:
    offered = []
    for alt in group:
        present = state.selected.get(alt.name)
        versions = [p.version for p in universe.candidates(alt.name)]
        if present is not None:
            offered.append(f"{alt.name} is already selected at {present.version}")
        elif versions:
            offered.append(f"{alt.name} offers only {', '.join(versions)}")
        elif alt.name in universe.providers:
            offered.append(f"{alt.name} is only provided virtually, at no matching version")
        else:
            offered.append(f"no package {alt.name} exists in the recipe's suites")
    return (
        f"cannot satisfy {pkg.name} {pkg.version}'s dependency "
        f"'{' | '.join(map(str, group))}': {'; '.join(offered)}. "
        f"Chain: {_chain(state, pkg.name, origin)}. Pin a different version, drop the "
        "package, or take it with `dependencies: false` if the image does not need it."
    )
