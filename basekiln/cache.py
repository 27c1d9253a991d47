"""The content-addressed cache: `<cache>/sha256/<hex>`, written only after verification."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from basekiln.errors import BuildError, TrustError

CHUNK = 1 << 20


class Cache:
    """Files keyed by their sha256. An entry exists only if its bytes match its name."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256

    def partial(self, sha256: str) -> Path:
        return self.root / "partial" / f"{sha256}.part"

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put_bytes(self, data: bytes, expected: str | None = None, what: str = "data") -> str:
        """Store bytes; with `expected`, refuse them unless their sha256 matches."""
        digest = hashlib.sha256(data).hexdigest()
        if expected is not None and digest != expected:
            raise TrustError(f"{what}: sha256 is {digest}, expected {expected}")
        if not self.has(digest):
            staging = self.partial(digest).with_suffix(f".{os.getpid()}.tmp")
            staging.parent.mkdir(parents=True, exist_ok=True)
            staging.write_bytes(data)
            self.commit(staging, digest)
        return digest

    def commit(self, staged: Path, sha256: str) -> Path:
        """Move a verified file into place atomically."""
        final = self.path(sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, final)
        return final

    def verify(self, sha256: str) -> bool:
        """Re-hash an entry; a mismatch means it was altered after it entered the cache."""
        return sha256_file(self.path(sha256)) == sha256

    def verified(self, sha256: str, what: str) -> Path:
        """The entry for `what` (a locked .deb), re-hashed: the build reads only the bytes
        the lockfile pins, whatever happened to the cache since the fetch."""
        path = self.path(sha256)
        if not path.is_file():
            raise BuildError(f"{what} is not in the cache ({path}); run `basekiln fetch` first")
        actual = sha256_file(path)
        if actual != sha256:
            raise BuildError(
                f"cache entry {path} for {what} was altered after fetch: sha256 is {actual}, "
                f"the lockfile pins {sha256}. Delete the entry and run `basekiln fetch` again."
            )
        return path

    @contextlib.contextmanager
    def entry_lock(self, sha256: str) -> Iterator[None]:
        """Serialise writers of one entry across processes (two runs at once)."""
        lock_path = self.root / "locks" / f"{sha256}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
