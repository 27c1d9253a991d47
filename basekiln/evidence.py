"""Evidence for one accepted build: SBOM, cross-check, provenance, reproducibility.

Written under `out/<recipe>/evidence/`. The SBOM cross-check runs here, before
anything is published: a package the lockfile does not pin, or one missing or at
another version, fails the run (this is how a dependency swapped during the build is
caught).

Three in-toto Statements v1 are written beside the SBOM documents, in canonical form,
and are what `basekiln.attest` signs byte for byte: `sbom.statement.json` (the SPDX
document as the predicate of `https://spdx.dev/Document`), `provenance.statement.json`
and `reproducibility.statement.json`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from basekiln.attest import in_toto_statement
from basekiln.config import Config
from basekiln.lockfile import load_lock_chain, lockfile_path, read_lockfile, write_atomic
from basekiln.provenance import (
    REPRODUCIBLE_PREDICATE,
    SLSA_PROVENANCE,
    build_provenance,
    build_reproducibility_statement,
    statement_bytes,
)
from basekiln.results import BuildResult
from basekiln.sbom import (
    CrossCheck,
    Sbom,
    cross_check,
    generate_sbom,
    locked_union,
)

log = logging.getLogger(__name__)

SPDX_PREDICATE = "https://spdx.dev/Document"


@dataclass(frozen=True)
class Attachment:
    """One Statement to sign and attach, and its predicate type."""

    statement: Path
    predicate_type: str


@dataclass(frozen=True)
class Evidence:
    folder: Path
    sbom: Sbom
    cross_check: CrossCheck
    sbom_statement: Path
    provenance: Path
    reproducibility: Path
    seconds: dict[str, float] = field(default_factory=dict)  # "sbom", "provenance"

    @property
    def attachments(self) -> tuple[Attachment, ...]:
        return (
            Attachment(self.sbom_statement, SPDX_PREDICATE),
            Attachment(self.provenance, SLSA_PROVENANCE),
            Attachment(self.reproducibility, REPRODUCIBLE_PREDICATE),
        )


def produce_evidence(config: Config, result: BuildResult, image_name: str) -> Evidence:
    """SBOM (SPDX and CycloneDX), its cross-check, and the three in-toto Statements."""
    folder = config.root / "out" / result.recipe / "evidence"
    folder.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    lock = read_lockfile(lockfile_path(config.lockfiles_dir, result.recipe))
    chain = load_lock_chain(config.lockfiles_dir, lock)

    sbom = generate_sbom(Path(result.oci_layout), folder, platform=result.platform, name=image_name)
    check = cross_check(
        sbom.packages, locked_union(chain, result.platform), where=f"the {result.recipe} image"
    )
    log.info("%s: SBOM lists exactly the %d locked packages", result.recipe, len(check.matched))
    scanned = time.monotonic()

    spdx = json.loads(sbom.spdx_json.read_bytes())
    sbom_statement = _write_statement(
        folder, "sbom", in_toto_statement(image_name, result.digest, SPDX_PREDICATE, spdx)
    )
    provenance = _write_statement(folder, "provenance", build_provenance(result, chain, image_name))
    reproducibility = _write_statement(
        folder, "reproducibility", build_reproducibility_statement(result, image_name)
    )
    seconds = {"sbom": scanned - start, "provenance": time.monotonic() - scanned}
    return Evidence(folder, sbom, check, sbom_statement, provenance, reproducibility, seconds)


def _write_statement(folder: Path, name: str, statement: dict[str, Any]) -> Path:
    path = folder / f"{name}.statement.json"
    write_atomic(path, statement_bytes(statement))
    return path
