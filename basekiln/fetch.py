"""The fetch stage: every locked .deb into the content-addressed cache, verified.

Hash mismatches are hard errors, never retried on another mirror: the lockfile is the
truth, and a mirror serving other bytes for a pinned file is a finding, not a glitch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from basekiln import _http
from basekiln.cache import Cache, sha256_file
from basekiln.config import Config
from basekiln.errors import FetchError
from basekiln.lockfile import LockedPackage, Lockfile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FetchItem:
    package: LockedPackage
    mirrors: tuple[str, ...]


@dataclass(frozen=True)
class FetchReport:
    downloaded: int
    already_cached: int
    bytes_downloaded: int


def plan(config: Config, locks: Iterable[Lockfile]) -> list[FetchItem]:
    """Unique .debs to fetch, each with its mirrors (lockfile's first, then config's)."""
    items: dict[str, FetchItem] = {}
    for lock in locks:
        for pkg in lock.packages + lock.tools:
            mirrors = list(lock.mirrors.get(pkg.archive, []))
            configured = config.file.archives.get(pkg.archive)
            if configured is not None:
                mirrors += [m for m in configured.mirrors if m not in mirrors]
            items.setdefault(pkg.sha256, FetchItem(pkg, tuple(mirrors)))
    return [items[k] for k in sorted(items)]


def fetch(config: Config, locks: Iterable[Lockfile], show_progress: bool = True) -> FetchReport:
    """Download what the cache lacks; with a warm cache, no connection is opened."""
    cache = Cache(config.cache_dir)
    items = plan(config, locks)
    missing = [item for item in items if not cache.has(item.package.sha256)]
    if not missing:
        return FetchReport(0, len(items), 0)

    total = sum(item.package.size for item in missing)
    counted = [0]
    lock = threading.Lock()
    settings = config.file.fetch
    with _http.client(settings.timeout_seconds) as http, _progress(show_progress) as progress:
        task = progress.add_task(f"fetching {len(missing)} packages", total=total)

        def advance(n: int) -> None:
            with lock:
                counted[0] += n
            progress.update(task, advance=n)

        def one(item: FetchItem) -> None:
            fetch_one(http, cache, item, settings.attempts, advance)

        with ThreadPoolExecutor(max_workers=settings.parallel) as pool:
            # list() re-raises the first failure after the others settle.
            list(pool.map(one, missing))
    return FetchReport(len(missing), len(items) - len(missing), counted[0])


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=True,
    )


def fetch_one(
    http: httpx.Client,
    cache: Cache,
    item: FetchItem,
    attempts: int,
    on_bytes: Callable[[int], None] | None = None,
) -> Path:
    """Fetch one .deb into the cache, trying each mirror; resumes a partial download."""
    pkg = item.package
    with cache.entry_lock(pkg.sha256):
        if cache.has(pkg.sha256):
            return cache.path(pkg.sha256)
        partial = cache.partial(pkg.sha256)
        partial.parent.mkdir(parents=True, exist_ok=True)
        tried: list[str] = []
        for mirror in item.mirrors:
            url = f"{mirror.rstrip('/')}/{pkg.filename}"
            try:
                outcome = _download_checked(http, url, partial, pkg, attempts, on_bytes)
            except _http.NotFoundError as exc:
                tried.append(f"{url} (HTTP {exc.status})")
                continue
            except httpx.HTTPError as exc:
                tried.append(f"{url} ({exc or type(exc).__name__})")
                continue
            if outcome is None:
                return cache.commit(partial, pkg.sha256)
            if outcome.startswith("truncated"):
                tried.append(f"{url} ({outcome})")
                continue
            raise FetchError(
                f"{pkg.name} {pkg.version}: {url} {outcome}; the mirror serves other bytes "
                f"than the lockfile pins. Nothing was cached. If the archive really changed, "
                f"run `basekiln lock --update`; otherwise use another mirror."
            )
        raise FetchError(
            f"{pkg.name} {pkg.version} ({pkg.filename}) could not be fetched from any mirror. "
            f"Tried: {'; '.join(tried)}. If it is gone from the archive, run "
            "`basekiln lock --update`; otherwise check the mirrors in basekiln.toml."
        )


def _download_checked(
    http: httpx.Client,
    url: str,
    partial: Path,
    pkg: LockedPackage,
    attempts: int,
    on_bytes: Callable[[int], None] | None,
) -> str | None:
    """Download `url` into `partial` (resuming it) and check it: None when it is the
    locked file, else what is wrong (and `partial` is gone).

    A partial file left by an earlier run may hold other bytes, or more than the file
    has now; a resume that does not verify starts over once before the mirror is blamed.
    """
    resumed = partial.is_file() and partial.stat().st_size > 0
    for _ in range(2 if resumed else 1):
        _http.download(http, url, partial, attempts, on_bytes)
        outcome = _check(partial, pkg)
        if outcome is None:
            return None
        partial.unlink(missing_ok=True)
    return outcome


def _check(path: Path, pkg: LockedPackage) -> str | None:
    """None when `path` is exactly the locked file, else what is wrong with it."""
    size = path.stat().st_size
    if size < pkg.size:
        return f"truncated: got {size} of {pkg.size} bytes"
    actual = sha256_file(path)
    if actual != pkg.sha256:
        return f"has sha256 {actual}, the lockfile pins {pkg.sha256} ({size} bytes)"
    return None
