"""Evidence for one accepted build: SBOM, cross-check, provenance, reproducibility.

Written under `out/<recipe>/evidence/`. The SBOM cross-check runs here, before
anything is published: a package the lockfile does not pin, or one missing or at
another version, fails the run (this is how a dependency swapped during the build is
caught).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from basekiln.config import Config
from basekiln.lockfile import lockfile_path, read_lockfile, write_atomic
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
    load_lock_chain,
    locked_union,
)

log = logging.getLogger(__name__)

SPDX_PREDICATE = "https://spdx.dev/Document"


@dataclass(frozen=True)
class Attachment:
    """One attestation to attach: the predicate file and the type cosign is given."""

    predicate: Path
    cosign_type: str  # what `cosign attest --type` takes
    predicate_type: str  # the predicateType it produces


@dataclass(frozen=True)
class Evidence:
    folder: Path
    sbom: Sbom
    cross_check: CrossCheck
    provenance: Path
    reproducibility: Path

    @property
    def attachments(self) -> tuple[Attachment, ...]:
        return (
            Attachment(self.sbom.spdx_json, "spdxjson", SPDX_PREDICATE),
            Attachment(_predicate_file(self.provenance), "slsaprovenance1", SLSA_PROVENANCE),
            Attachment(
                _predicate_file(self.reproducibility),
                REPRODUCIBLE_PREDICATE,
                REPRODUCIBLE_PREDICATE,
            ),
        )


def _predicate_file(statement: Path) -> Path:
    return statement.with_name(statement.name.replace(".statement.", ".predicate."))


def produce_evidence(config: Config, result: BuildResult, image_name: str) -> Evidence:
    """SBOM (SPDX and CycloneDX), its cross-check, and the two in-toto statements."""
    folder = config.root / "out" / result.recipe / "evidence"
    folder.mkdir(parents=True, exist_ok=True)
    lock = read_lockfile(lockfile_path(config.lockfiles_dir, result.recipe))
    chain = load_lock_chain(config.lockfiles_dir, lock)

    sbom = generate_sbom(Path(result.oci_layout), folder, platform=result.platform, name=image_name)
    check = cross_check(
        sbom.packages, locked_union(chain, result.platform), where=f"the {result.recipe} image"
    )
    log.info("%s: SBOM lists exactly the %d locked packages", result.recipe, len(check.matched))

    provenance = _write_statement(folder, "provenance", build_provenance(result, chain, image_name))
    reproducibility = _write_statement(
        folder, "reproducibility", build_reproducibility_statement(result, image_name)
    )
    return Evidence(folder, sbom, check, provenance, reproducibility)


def _write_statement(folder: Path, name: str, statement: dict[str, Any]) -> Path:
    path = folder / f"{name}.statement.json"
    write_atomic(path, statement_bytes(statement))
    predicate = (json.dumps(statement["predicate"], sort_keys=True, indent=2) + "\n").encode()
    write_atomic(_predicate_file(path), predicate)
    return path
