"""Lockfiles: canonical JSON pinning every input of an image.

Canonical means sorted keys, two-space indent, packages sorted by platform and name,
and a trailing newline, so the same inputs always give the same bytes. An `integrity`
field (sha256 of the rest) catches hand edits that would otherwise slip past.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from basekiln.errors import LockfileError

LOCKFILE_VERSION = 1
SHA256_PATTERN = r"^[0-9a-f]{64}$"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RecipeRef(_Frozen):
    name: str
    path: str
    sha256: str = Field(pattern=SHA256_PATTERN)


class ParentRef(_Frozen):
    recipe: str
    lockfile_sha256: str = Field(pattern=SHA256_PATTERN)


class LockedRelease(_Frozen):
    archive: str
    suite: str
    url: str
    sha256: str = Field(pattern=SHA256_PATTERN)
    date: str


class LockedPackage(_Frozen):
    name: str
    version: str
    architecture: str
    platform: str
    sha256: str = Field(pattern=SHA256_PATTERN)
    size: int = Field(ge=0)
    filename: str
    source: str
    source_version: str
    archive: str
    suite: str
    depends_on: list[str]
    dependencies_followed: bool


class Lockfile(_Frozen):
    lockfile_version: int = LOCKFILE_VERSION
    recipe: RecipeRef
    parent: ParentRef | None
    platforms: list[str]
    source_date_epoch: int = Field(ge=0)
    mirrors: dict[str, list[str]]
    releases: list[LockedRelease]
    packages: list[LockedPackage]
    # Packages the build runs (busybox, ldconfig) but the image does not contain.
    tools: list[LockedPackage] = []

    def packages_for(self, platform: str) -> list[LockedPackage]:
        return [p for p in self.packages if p.platform == platform]

    def tools_for(self, platform: str) -> list[LockedPackage]:
        return [p for p in self.tools if p.platform == platform]


def canonical_bytes(lock: Lockfile) -> bytes:
    """The exact bytes a lockfile is written as."""
    body = _canonical_body(lock)
    body["integrity"] = "sha256:" + hashlib.sha256(_dump(body)).hexdigest()
    return _dump(body)


def _canonical_body(lock: Lockfile) -> dict[str, Any]:
    body = lock.model_dump(mode="json")
    for key in ("packages", "tools"):
        body[key] = sorted(body[key], key=lambda p: (p["platform"], p["name"]))
    body["releases"] = sorted(body["releases"], key=lambda r: (r["archive"], r["suite"]))
    return body


def _dump(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


def read_lockfile(path: Path) -> Lockfile:
    """Read and check a lockfile: schema, integrity, and canonical form."""
    if not path.is_file():
        raise LockfileError(f"{path}: no lockfile; run `basekiln lock {path.name.split('.')[0]}`")
    raw = path.read_bytes()
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise LockfileError(
            f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); lockfiles are written by "
            "`basekiln lock`, regenerate it rather than editing it"
        ) from exc
    if not isinstance(data, dict):
        raise LockfileError(f"{path}: not a lockfile object; regenerate it with `basekiln lock`")
    claimed = data.pop("integrity", None)
    actual = "sha256:" + hashlib.sha256(_dump(data)).hexdigest()
    if claimed != actual:
        raise LockfileError(
            f"{path}: integrity is {claimed!r} but the content hashes to {actual}; the "
            "lockfile was edited by hand. Restore it from version control or regenerate it "
            "with `basekiln lock --update`"
        )
    try:
        lock = Lockfile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise LockfileError(f"{path}: {problems}; regenerate it with `basekiln lock`") from exc
    if canonical_bytes(lock) != raw:
        raise LockfileError(
            f"{path}: not in canonical form (keys, order or spacing differ from what "
            "`basekiln lock` writes); it was edited by hand. Restore it from version control "
            "or regenerate it with `basekiln lock --update`"
        )
    if lock.lockfile_version != LOCKFILE_VERSION:
        raise LockfileError(
            f"{path}: lockfile_version {lock.lockfile_version} is not supported (this "
            f"basekiln writes {LOCKFILE_VERSION}); regenerate it with `basekiln lock --update`"
        )
    return lock


def write_lockfile(path: Path, lock: Lockfile) -> bool:
    """Write atomically; return False (and leave the file alone) when nothing changed."""
    data = canonical_bytes(lock)
    if path.is_file() and path.read_bytes() == data:
        return False
    write_atomic(path, data)
    return True


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def lockfile_path(lockfiles_dir: Path, recipe_name: str) -> Path:
    return lockfiles_dir / f"{recipe_name}.lock.json"


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_lock_chain(lockfiles_dir: Path, lock: Lockfile) -> list[Lockfile]:
    """`lock` and its ancestors' lockfiles, the image's own first.

    Each parent must still be the file the child was locked against (its sha256 is in
    the child's `parent` field).
    """
    chain = [lock]
    seen = {lock.recipe.name}
    while (parent := chain[-1].parent) is not None:
        path = lockfile_path(lockfiles_dir, parent.recipe)
        if parent.recipe in seen:
            raise LockfileError(f"{path}: the parent chain loops back to {parent.recipe!r}")
        parent_lock = read_lockfile(path)
        if file_sha256(path) != parent.lockfile_sha256:
            raise LockfileError(
                f"{path}: changed since {chain[-1].recipe.name!r} was locked against it; "
                f"run `basekiln lock {chain[-1].recipe.name}` again"
            )
        chain.append(parent_lock)
        seen.add(parent.recipe)
    return chain
