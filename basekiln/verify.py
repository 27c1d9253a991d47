"""Verify a published image from the outside: signature, attestations, provenance.

Every check runs, and the report names each that failed; `raise_on_failure` turns
any failure into exit code 4. An attestation passes when cosign verifies its envelope
with the key and the Statement inside is an in-toto Statement v1 about the digest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from basekiln import _cosign
from basekiln.attest import check_statement
from basekiln.config import Config
from basekiln.errors import BasekilnError, InputError, VerificationError
from basekiln.lockfile import file_sha256, lockfile_path
from basekiln.provenance import SLSA_PROVENANCE, verify_provenance_matches
from basekiln.publish import REQUIRED_ATTESTATIONS, registry_endpoint
from basekiln.registry import Reference, parse_reference

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class VerifyReport:
    image: str
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {"image": self.image, "verified": self.ok, "checks": [vars(c) for c in self.checks]}

    def raise_on_failure(self) -> None:
        failed = [c for c in self.checks if not c.passed]
        if failed:
            lines = "\n".join(f"  - {c.name}: {c.detail}" for c in failed)
            raise VerificationError(f"{self.image} failed {len(failed)} check(s):\n{lines}")


def by_digest(text: str) -> Reference:
    ref = parse_reference(text)
    if ref.digest is None:
        raise InputError(
            f"{text} names a tag, which can move; pass the image by digest "
            "(HOST/REPO@sha256:...) so what is checked is what is used"
        )
    return ref


def verify_image(
    config: Config,
    image: str,
    verifier: _cosign.Verifier,
    *,
    rebuild: bool = False,
    ca_bundle: Path | None = None,
) -> VerifyReport:
    target = by_digest(image)
    digest = str(target.digest)
    endpoint = registry_endpoint(target, ca_bundle)
    checks = [_attempt("signature", lambda: _signature(target, verifier, endpoint))]
    provenance: list[dict[str, Any]] = []
    for predicate_type, cosign_type in REQUIRED_ATTESTATIONS.items():

        def attestation(kind: str = cosign_type, wanted: str = predicate_type) -> str:
            found = _cosign.verify_attestation(target, verifier, kind, endpoint)
            for statement in (a.statement for a in found):
                check_statement(statement, digest, wanted)
            if wanted == SLSA_PROVENANCE:
                provenance.extend(a.statement for a in found)
            return f"{len(found)} verified"

        checks.append(_attempt(f"attestation {predicate_type}", attestation))
    if provenance:
        checks.append(
            _attempt(
                "provenance matches this repository",
                lambda: _matches_repository(config, provenance, target),
            )
        )
    if rebuild and provenance:
        checks.append(
            _attempt(
                "rebuild reproduces the digest", lambda: _rebuild(config, provenance[-1], target)
            )
        )
    return VerifyReport(str(target), tuple(checks))


def _attempt(name: str, check: Any) -> Check:
    try:
        return Check(name, True, str(check()))
    except BasekilnError as exc:
        log.debug("%s failed", name, exc_info=True)
        return Check(name, False, exc.message)


def _signature(target: Reference, verifier: _cosign.Verifier, endpoint: Any) -> str:
    payloads = _cosign.verify(target, verifier, endpoint)
    return f"{len(payloads)} valid signature(s)"


def _recipe_of(statement: dict[str, Any]) -> dict[str, Any]:
    external = statement["predicate"]["buildDefinition"]["externalParameters"]
    return dict(external["recipe"])


def _matches_repository(config: Config, statements: list[dict[str, Any]], target: Reference) -> str:
    problems = []
    for statement in statements:
        recipe = _recipe_of(statement)
        recipe_path = config.root / recipe["path"]
        lock_path = lockfile_path(config.lockfiles_dir, recipe["name"])
        if not recipe_path.is_file() or not lock_path.is_file():
            problems.append(f"recipe {recipe['path']} or its lockfile is not in this repository")
            continue
        try:
            verify_provenance_matches(
                statement, file_sha256(recipe_path), file_sha256(lock_path), digest=target.digest
            )
            return f"recipe {recipe['path']} and its lockfile match"
        except VerificationError as exc:
            problems.append(exc.message)
    raise VerificationError("\n".join(problems))


def _rebuild(config: Config, statement: dict[str, Any], target: Reference) -> str:
    from basekiln.build import BuildOptions, build_recipes, source_revision

    recipe = _recipe_of(statement)
    name = recipe["name"]
    recorded = statement["predicate"]["buildDefinition"]["externalParameters"].get("revision")
    here = source_revision(config, recipe["path"], lockfile_path(config.lockfiles_dir, name))
    if recorded != here:
        # The revision is in the image's labels: another one cannot give the same digest.
        raise VerificationError(
            f"{target} was built at revision {recorded or '(uncommitted files)'}, this "
            f"repository's {recipe['path']} and its lockfile are at "
            f"{here or '(uncommitted changes)'}; check out the image's revision and rebuild"
        )
    results = build_recipes(config, [name], BuildOptions(force=True, show_progress=False))
    rebuilt = next(r for r in results if r.recipe == name)
    if rebuilt.digest != target.digest:
        raise VerificationError(f"rebuilding {name} gave {rebuilt.digest}, not {target.digest}")
    return f"rebuilt {name} to {rebuilt.digest}"
