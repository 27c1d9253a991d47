"""What a double build produces, as later stages (evidence, publish) consume it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SandboxBuild:
    """One of the two builds: where it ran, how it was perturbed, what it gave."""

    sandbox: str
    digest: str
    perturbations: dict[str, str]
    oci_layout: str
    seconds: float


@dataclass(frozen=True)
class BuildResult:
    """The verdict of a double build, recorded as `out/<recipe>/build.json`."""

    recipe: str
    recipe_path: str
    recipe_sha256: str
    lockfile_path: str
    lockfile_sha256: str
    platform: str
    digest: str
    reproducible: bool
    builds: tuple[SandboxBuild, ...]
    oci_layout: str
    buildkit_version: str
    source_date_epoch: int
    started_on: str
    finished_on: str
    seconds: float
    parent_digest: str | None = None
    report: str | None = None
    inputs_digest: str = ""
    revision: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BuildResult:
        builds = tuple(SandboxBuild(**b) for b in data.pop("builds"))
        return cls(builds=builds, **data)

    @classmethod
    def read(cls, path: Path) -> BuildResult:
        return cls.from_json(json.loads(path.read_text()))
