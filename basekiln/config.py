"""basekiln.toml: where the project lives, its mirrors, cache, and daemons.

Environment variables override the file; secrets never live in it.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from basekiln.errors import InputError

CONFIG_NAME = "basekiln.toml"
DEFAULT_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArchiveConfig(_Strict):
    """A Debian archive: the mirrors that serve it and the keyring that signs it."""

    mirrors: list[str] = Field(min_length=1)
    keyring: str = DEFAULT_KEYRING
    components: list[str] = ["main"]


class CacheConfig(_Strict):
    dir: str = ".cache/basekiln"


class FetchConfig(_Strict):
    parallel: int = Field(default=8, ge=1, le=64)
    timeout_seconds: float = Field(default=60, gt=0)
    attempts: int = Field(default=4, ge=1, le=20)


class BuildkitConfig(_Strict):
    """Where builds run: empty means basekiln starts its own sandboxes."""

    endpoints: list[str] = []
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    timeout_seconds: float = 1800


class RegistryConfig(_Strict):
    """Default repositories (HOST/REPO), so that commands need not name them each time.

    `rebuild` and `nightly` publish to STAGING/<recipe>; `promote` copies to
    RELEASE/<name> unless given `--to`.
    """

    staging: str | None = None
    release: str | None = None


class SigningConfig(_Strict):
    """The signing key: a path or env://NAME, never the key itself ($COSIGN_PASSWORD)."""

    key: str | None = None


class NightlyConfig(_Strict):
    """How `nightly` runs: parallel images, audit cadence, reports, cross-run limits."""

    # Double builds at once (each runs two BuildKit daemons); other steps overlap.
    concurrency: int = Field(default=2, ge=1, le=32)
    # An unchanged image is rebuilt anyway (and must reproduce its published digest)
    # once its last reproduction is this many days old; 0 turns the cadence off.
    audit_after_days: int = Field(default=7, ge=0)
    reports_dir: str = "reports"
    # How long a run waits for another run of this checkout to finish.
    lock_timeout_seconds: float = Field(default=6 * 3600, ge=0)
    # A Prefect global concurrency limit every double build takes one slot of, to cap
    # builds across workers and hosts (`prefect gcl create NAME --limit N`); empty: none.
    prefect_limit: str = ""


class PromotionConfig(_Strict):
    """What an image must show before `promote` copies it to the release repository."""

    require_reproducible: bool = True
    require_sbom_cross_check: bool = True
    allowed_builders: list[str] = ["https://basekiln.dev/builders/local/v1"]
    # The newest provenance may be at most this old; 0: no limit.
    max_age_days: int = Field(default=30, ge=0)
    # The SLSA Build level the allowed builders reach, stated in the promotion record.
    slsa_build_level: int = Field(default=1, ge=0, le=3)


class FileConfig(_Strict):
    cache: CacheConfig = CacheConfig()
    fetch: FetchConfig = FetchConfig()
    archives: dict[str, ArchiveConfig] = {
        "debian": ArchiveConfig(mirrors=["http://deb.debian.org/debian"]),
        "debian-security": ArchiveConfig(mirrors=["http://deb.debian.org/debian-security"]),
    }
    buildkit: BuildkitConfig = BuildkitConfig()
    registry: RegistryConfig = RegistryConfig()
    signing: SigningConfig = SigningConfig()
    nightly: NightlyConfig = NightlyConfig()
    promotion: PromotionConfig = PromotionConfig()


@dataclass(frozen=True)
class Config:
    """The resolved configuration of one project checkout."""

    root: Path
    file: FileConfig

    @property
    def recipes_dir(self) -> Path:
        return self.root / "recipes"

    @property
    def lockfiles_dir(self) -> Path:
        return self.root / "lockfiles"

    @property
    def builders_dir(self) -> Path:
        return self.root / "builders"

    @property
    def cache_dir(self) -> Path:
        override = os.environ.get("BASEKILN_CACHE")
        raw = Path(override) if override else Path(self.file.cache.dir)
        return raw if raw.is_absolute() else self.root / raw

    def signing_key(self) -> str | None:
        """[signing] key, a relative path taken from the repository root."""
        key = self.file.signing.key
        if key is None or not is_key_path(key) or Path(key).is_absolute():
            return key
        return str(self.root / key)

    def archive(self, name: str) -> ArchiveConfig:
        try:
            return self.file.archives[name]
        except KeyError:
            known = ", ".join(sorted(self.file.archives)) or "none"
            raise InputError(
                f"{self.root / CONFIG_NAME}: archive {name!r} is not configured "
                f"(known: {known}); add an [archives.{name}] table with its mirrors"
            ) from None


def is_key_path(key: str) -> bool:
    """Whether a cosign key reference is a file (not env://NAME, a KMS URI or pkcs11:)."""
    return "://" not in key and not key.startswith("pkcs11:")


def load_config(start: Path | None = None) -> Config:
    """Load basekiln.toml from $BASEKILN_CONFIG, or the nearest one above `start`."""
    explicit = os.environ.get("BASEKILN_CONFIG")
    if explicit:
        path = Path(explicit).resolve()
        if not path.is_file():
            raise InputError(f"BASEKILN_CONFIG names {path}, which does not exist")
        return _parse(path)
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / CONFIG_NAME
        if candidate.is_file():
            return _parse(candidate)
    return Config(root=here, file=FileConfig())


def _parse(path: Path) -> Config:
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML ({exc}); fix the syntax") from exc
    try:
        parsed = FileConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise InputError(f"{path}: {problems}") from exc
    return Config(root=path.parent, file=parsed)
