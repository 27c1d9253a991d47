"""Lock benchmark: load the verified indexes and resolve each recipe, beside apt-get.

For each recipe in recipes/ (parents first), in a fresh child process so that peak
memory is that recipe's own, this measures the steps of `basekiln lock`: fetching the
InRelease files (network) and verifying them with gpgv, reading the Packages indexes
from basekiln's cache and decompressing them, parsing them, indexing them (Universe),
and resolving. Nothing is written to lockfiles/.

Then `apt-get install --simulate` resolves the same package names on this machine
against the same Packages files (basekiln's verified copies, decompressed into a private
lists folder under apt's file names), with its own state: no system sources, no
configuration parts, no Recommends, and a dpkg status that is empty, or for a child
recipe holds its parent's locked packages, as basekiln's resolver sees them. apt runs
"cold" (no binary cache: it parses the lists, builds its cache in memory, resolves) and
"warm" (its pkgcache.bin already built: it maps it and resolves). Best of three each.

Three ratios follow: basekiln's resolution proper (`resolve_lockfile`, indexes already in
memory) over apt warm, which is the goal (at most 1); indexing plus resolution over apt
warm; and everything from the compressed index on over apt cold. apt cannot take a
package without its dependencies, so for recipes that use `dependencies: false` it
installs more; the output lists the difference. When an index is not in the cache yet
("index cache MISS"), its download counts under both network and cache read.

    .venv/bin/python bench/lock.py [RECIPE...]
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from basekiln import _http
from basekiln import archive as archive_module
from basekiln import lock as lock_module
from basekiln.archive import BinaryPackage
from basekiln.catalogue import load_selection
from basekiln.config import load_config
from basekiln.lockfile import ParentRef, file_sha256, lockfile_path, read_lockfile
from basekiln.resolver import Universe

REPO = Path(__file__).resolve().parent.parent
RESOLVE_REPEAT = 5
APT_REPEAT = 3
MEMORY_GOAL_MB = 500
F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Index:
    """One verified suite's files, as apt's lists folder would hold them."""

    mirror: str
    suite: str
    component: str
    in_release: bytes
    packages: bytes


class Recorder:
    """Wraps basekiln.archive's steps to time them and keep what they returned."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.in_release: dict[str, bytes] = {}
        self.indexes: list[tuple[str, str, bytes]] = []
        self.stanzas = 0

    def add(self, step: str, seconds: float) -> None:
        self.seconds[step] = self.seconds.get(step, 0.0) + seconds

    def install(self) -> None:
        """Replace archive's steps with timed ones; load_suite looks them up at call time."""
        steps = [
            ("_fetch_first", "InRelease fetch", self._keep_release),
            ("verify_clearsigned", "InRelease verify", None),
            ("_fetch_index", "index read+decompress", self._keep_index),
            ("parse_packages", "parse", self._count),
        ]
        for attribute, step, keep in steps:
            original = getattr(archive_module, attribute)
            setattr(archive_module, attribute, self._timed(step, original, keep))

    def _timed(self, step: str, func: F, keep: Callable[..., None] | None = None) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            result = func(*args, **kwargs)
            self.add(step, time.perf_counter() - start)
            if keep is not None:
                keep(result, *args)
            return result

        return wrapper  # type: ignore[return-value]

    def _keep_release(self, result: tuple[bytes, str], *args: Any) -> None:
        data, url = result
        if url.endswith("/InRelease"):
            self.in_release[url] = data

    def _keep_index(self, result: bytes, *args: Any) -> None:
        suite, component = args[3], args[5]
        self.indexes.append((suite, component, result))

    def _count(self, result: list[Any], *args: Any) -> None:
        self.stanzas += len(result)


def measure(name: str) -> dict[str, Any]:
    """Run in the child: time basekiln's steps for one recipe, then apt's."""
    config = load_config(REPO)
    loaded = next(r for r in load_selection([name], config.recipes_dir) if r.recipe.name == name)
    recipe = loaded.recipe
    architecture = recipe.architectures[0]
    platform = lock_module.platform_of(architecture)
    sources = recipe.effective_sources()
    cached_before = _cache_entries(config.cache_dir)

    recorder = Recorder()
    recorder.install()
    with _http.client(config.file.fetch.timeout_seconds) as http:
        archive = lock_module.Archive(config, http)
        for source in sources:
            archive.suite(source, architecture)
        start = time.perf_counter()
        universe = archive.universe(sources, architecture)
        recorder.add("index (Universe)", time.perf_counter() - start)

    parent = None
    if recipe.parent is not None:
        path = lockfile_path(config.lockfiles_dir, recipe.parent)
        parent = ParentRef(recipe=recipe.parent, lockfile_sha256=file_sha256(path))
    runs = []
    for _ in range(RESOLVE_REPEAT):
        start = time.perf_counter()
        locked = lock_module.resolve_lockfile(config, archive, loaded, parent)
        runs.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    indexes = []
    for suite, component, packages in recorder.indexes:
        url, signed = next((u, d) for u, d in recorder.in_release.items() if f"/{suite}/" in u)
        mirror = url.removesuffix(f"dists/{suite}/InRelease")
        indexes.append(Index(mirror, suite, component, signed, packages))
    installed = _ancestors_packages(config.lockfiles_dir, recipe.parent, universe, platform)
    status = _dpkg_status(installed)
    apt = apt_simulate(indexes, status, [p.name for p in recipe.packages], architecture)

    return {
        "recipe": name,
        "parent": recipe.parent,
        "requested": len(recipe.packages),
        "selected": sorted(p.name for p in locked.packages_for(platform)),
        "installed_from_parent": len(installed),
        "stanzas": recorder.stanzas,
        "index_cache_hit": _cache_entries(config.cache_dir) == cached_before,
        "seconds": recorder.seconds,
        "resolve_best": min(runs),
        "resolve_median": statistics.median(runs),
        "peak_rss_mb": peak_mb,
        "apt": apt,
    }


def _cache_entries(cache_dir: Path) -> set[str]:
    folder = cache_dir / "sha256"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def _ancestors_packages(
    lockfiles: Path, parent: str | None, universe: Universe, platform: str
) -> dict[str, BinaryPackage]:
    """The packages of the parent chain, as the archive describes them."""
    installed: dict[str, BinaryPackage] = {}
    while parent is not None:
        lock = read_lockfile(lockfile_path(lockfiles, parent))
        for pkg in lock.packages_for(platform):
            found = universe.find(pkg.name, pkg.version)
            if found is not None:
                installed.setdefault(pkg.name, found)
        parent = lock.parent.recipe if lock.parent else None
    return installed


def _dpkg_status(installed: dict[str, BinaryPackage]) -> str:
    """The parent's packages as installed, with their Provides but not their Depends.

    basekiln trusts a parent's packages as they are; apt would otherwise try to repair
    the dependencies a parent deliberately left out (`dependencies: false`).
    """
    stanzas = []
    for name, pkg in sorted(installed.items()):
        lines = [
            f"Package: {name}",
            "Status: install ok installed",
            f"Version: {pkg.version}",
            f"Architecture: {pkg.architecture}",
            "Maintainer: bench <bench@basekiln.invalid>",
            "Description: from the parent recipe's lockfile",
        ]
        if pkg.provides:
            lines.insert(4, f"Provides: {pkg.provides}")
        stanzas.append("\n".join(lines) + "\n")
    return "\n".join(stanzas)


def apt_file_name(uri: str) -> str:
    """apt's name for a URI's file in its lists folder (its URItoFileName)."""
    bare = re.sub(r"^[a-z+]+://", "", uri)
    bare = re.sub(r"^[^@/]*@", "", bare)
    quoted = "".join(f"%{ord(c):02x}" if c in '\\|{}[]<>"^~_=!@#$%^&*' else c for c in bare)
    return quoted.replace("/", "_")


def apt_simulate(
    indexes: list[Index], status: str, names: list[str], architecture: str
) -> dict[str, Any]:
    """Time `apt-get install --simulate NAMES` in a private apt state, cold and warm."""
    if shutil.which("apt-get") is None:
        return {"error": "apt-get is not installed"}
    with tempfile.TemporaryDirectory(prefix="bench-apt-") as tmp:
        root = Path(tmp)
        conf = _apt_state(root, indexes, status, architecture)
        argv = ["apt-get", "install", "--simulate", "-q", *names]
        env = {"APT_CONFIG": str(conf), "PATH": "/usr/bin:/bin", "LC_ALL": "C"}
        cold_argv = [*argv, "-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache="]

        cold, done = _best_of(cold_argv, env)
        if done.returncode != 0:
            return {"error": done.stderr.strip()[-800:] or done.stdout.strip()[-800:]}
        subprocess.run(argv, env=env, capture_output=True, check=True)  # builds pkgcache.bin
        warm, done = _best_of(argv, env)
        to_install = sorted(re.findall(r"^Inst (\S+) ", done.stdout, flags=re.MULTILINE))
        return {"cold": cold, "warm": warm, "installs": to_install}


def _apt_state(root: Path, indexes: list[Index], status: str, architecture: str) -> Path:
    lists, etc = root / "lists", root / "etc"
    for folder in (lists / "partial", root / "cache" / "archives" / "partial", root / "state"):
        folder.mkdir(parents=True)
    for folder in ("apt.conf.d", "preferences.d", "sources.list.d", "trusted.gpg.d"):
        (etc / folder).mkdir(parents=True)
    (root / "status").write_text(status)

    sources = []
    for index in indexes:
        dists = f"{index.mirror}dists/{index.suite}/"
        (lists / apt_file_name(dists + "InRelease")).write_bytes(index.in_release)
        packages = f"{dists}{index.component}/binary-{architecture}/Packages"
        (lists / apt_file_name(packages)).write_bytes(index.packages)
        sources.append(f"deb [arch={architecture}] {index.mirror} {index.suite} {index.component}")
    (etc / "sources.list").write_text("\n".join(sorted(set(sources))) + "\n")

    settings = {
        "Dir::State": root / "state",
        "Dir::State::Lists": lists,
        "Dir::State::status": root / "status",
        "Dir::Cache": root / "cache",
        "Dir::Etc": etc,
        "Dir::Etc::SourceList": etc / "sources.list",
        "Dir::Etc::SourceParts": etc / "sources.list.d",
        "Dir::Etc::Parts": etc / "apt.conf.d",
        "Dir::Etc::Preferences": etc / "preferences",
        "Dir::Etc::PreferencesParts": etc / "preferences.d",
        "Dir::Etc::Trusted": etc / "trusted.gpg",
        "Dir::Etc::TrustedParts": etc / "trusted.gpg.d",
        "Dir::Log": root / "log",
        "Debug::NoLocking": "1",
        "APT::Architecture": architecture,
        "APT::Install-Recommends": "0",
        "APT::Install-Suggests": "0",
    }
    lines = [f'{key} "{value}";' for key, value in settings.items()]
    lines.append(f'APT::Architectures {{ "{architecture}"; }};')
    conf = root / "apt.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


def _best_of(
    argv: list[str], env: dict[str, str]
) -> tuple[float, subprocess.CompletedProcess[str]]:
    best, done = float("inf"), None
    for _ in range(APT_REPEAT):
        start = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        best = min(best, time.perf_counter() - start)
        if done.returncode != 0:
            break
    assert done is not None
    return best, done


def row(label: str, value: float, unit: str = "s", note: str = "") -> str:
    digits = 4 if unit == "s" and value < 0.01 else (0 if unit == "MB" else 3)
    return f"  {label:40} {value:9.{digits}f} {unit:2}  {note}".rstrip()


def report(result: dict[str, Any]) -> list[str]:
    seconds = result["seconds"]
    load = seconds.get("index read+decompress", 0.0) + seconds.get("parse", 0.0)
    index = seconds.get("index (Universe)", 0.0)
    resolve_s = result["resolve_best"]
    peak = result["peak_rss_mb"]
    parent = ""
    if result["parent"]:
        parent = f", on parent {result['parent']} ({result['installed_from_parent']} packages)"
    cache = "hit" if result["index_cache_hit"] else "MISS (downloaded)"
    lines = [
        f"{result['recipe']}: {result['requested']} requested, {len(result['selected'])} "
        f"resolved{parent}; {result['stanzas']} stanzas; index cache {cache}",
        row("network (InRelease; indexes on a miss)", seconds.get("InRelease fetch", 0.0)),
        row("InRelease verify (gpgv)", seconds.get("InRelease verify", 0.0)),
        row("indexes: cache read + decompress", seconds.get("index read+decompress", 0.0)),
        row("indexes: parse", seconds.get("parse", 0.0)),
        row("index (Universe)", index),
        row(
            f"resolve_lockfile (best of {RESOLVE_REPEAT})",
            resolve_s,
            note=f"median {result['resolve_median']:.4f} s",
        ),
        row("peak RSS", peak, "MB", f"goal < {MEMORY_GOAL_MB} MB: {_met(peak < MEMORY_GOAL_MB)}"),
    ]
    apt = result["apt"]
    if "error" in apt:
        return [*lines, f"  apt-get --simulate failed: {apt['error']}"]

    ours, theirs = set(result["selected"]), set(apt["installs"])
    agreement = "the same packages"
    if ours != theirs:
        agreement = f"also {sorted(theirs - ours)}; basekiln also {sorted(ours - theirs) or '-'}"
    ours_resolve = index + resolve_s
    ours_total = load + index + resolve_s
    return [
        *lines,
        row("apt-get --simulate, cold", apt["cold"], note="parses lists, builds cache, resolves"),
        row("apt-get --simulate, warm", apt["warm"], note="maps its built cache, resolves"),
        f"  apt installs {len(theirs)}: {agreement}",
        row(
            "ratio resolve / apt warm",
            resolve_s / apt["warm"],
            "x",
            f"goal <= 1: {_met(resolve_s <= apt['warm'])}",
        ),
        row("ratio index+resolve / apt warm", ours_resolve / apt["warm"], "x"),
        row("ratio parse+index+resolve / apt cold", ours_total / apt["cold"], "x"),
    ]


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child)))
        return 0

    config = load_config(REPO)
    selection = load_selection(args.recipes, config.recipes_dir)
    print(f"basekiln lock benchmark; apt: {_apt_version()}; Python {sys.version.split()[0]}")
    for loaded in selection:
        done = subprocess.run(
            [sys.executable, __file__, "--child", loaded.recipe.name],
            capture_output=True,
            text=True,
            check=False,
            cwd=REPO,
        )
        if done.returncode != 0:
            print(f"{loaded.recipe.name}: failed\n{done.stderr.strip()[-2000:]}")
            return 1
        print("\n".join(report(json.loads(done.stdout.splitlines()[-1]))))
    return 0


def _apt_version() -> str:
    done = subprocess.run(["apt-get", "--version"], capture_output=True, text=True, check=False)
    return done.stdout.splitlines()[0] if done.returncode == 0 else "not installed"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
