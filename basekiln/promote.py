"""Promote: copy a verified staging image, by digest, to a release repository.

The order is the guarantee, as in publish: nothing is written to the release
repository until the source's signature and every attestation verify and the
promotion policy passes; the copy is verified again where it landed; the signed
promotion record (a SLSA verification summary, predicate
`https://slsa.dev/verification_summary/v1`) is attached and verified; only then are
tags set. Any failure raises `PromotionError` (exit code 4) and leaves no tag moved.

The policy (`[promotion]` in basekiln.toml) is checked against the attestations
themselves, not against this checkout, so a release engineer can promote an image
whose lockfiles have since moved on:

- reproducible: the reproducibility statement names at least two builds, each of
  the promoted digest;
- SBOM cross-check: the Debian packages the SPDX SBOM lists are exactly the `.deb`
  files the provenance says went into the image;
- builder: the provenance's `runDetails.builder.id` is an allowed builder;
- age: the provenance's `finishedOn` is at most `max_age_days` old.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import hashlib
import json
import logging
import os
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from basekiln import __version__, _cosign, attest
from basekiln._syft import parse_deb_purl, parse_spdx_debs
from basekiln.config import Config, PromotionConfig
from basekiln.errors import BasekilnError, ExitCode, VerificationError
from basekiln.evidence import SPDX_PREDICATE
from basekiln.lockfile import write_atomic
from basekiln.provenance import REPRODUCIBLE_PREDICATE, SLSA_PROVENANCE, statement_bytes
from basekiln.publish import REQUIRED_ATTESTATIONS, Signing, registry_endpoint
from basekiln.registry import Endpoint, Reference, RegistryClient, copy_image, parse_reference

log = logging.getLogger(__name__)

VSA_PREDICATE = "https://slsa.dev/verification_summary/v1"
PROMOTER_ID = "https://basekiln.dev/promoter/v1"
POLICY_URI = "https://basekiln.dev/policies/promotion/v1"
PROMOTER_ENV = "BASEKILN_PROMOTER"

Json = dict[str, Any]


class PromotionError(VerificationError):
    """Promotion refused or failed; nothing was tagged in the release repository."""

    exit_code = ExitCode.VERIFICATION


@dataclass(frozen=True)
class PolicyCheck:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Verified:
    """The source image's verified attestations: statements and payload digests."""

    statements: Mapping[str, tuple[Json, ...]]  # by predicate type
    payload_digests: Mapping[str, tuple[str, ...]]  # sha256 hex of each DSSE payload

    def one(self, predicate_type: str) -> Json:
        found = self.statements.get(predicate_type, ())
        if not found:
            raise PromotionError(f"no verified {predicate_type} attestation")
        return found[-1]


@dataclass(frozen=True)
class Promotion:
    source: str
    promoted: str  # HOST/REPO@sha256:… in the release repository
    digest: str
    tags: tuple[str, ...]
    checks: tuple[PolicyCheck, ...]
    record: Json  # the signed verification summary Statement
    record_file: str | None = None

    def to_json(self) -> Json:
        return {
            "promoted": self.promoted,
            "source": self.source,
            "digest": self.digest,
            "tags": list(self.tags),
            "checks": [vars(c) for c in self.checks],
            "record": {"predicateType": VSA_PREDICATE, "file": self.record_file},
        }


def source_reference(text: str) -> Reference:
    """The image to promote, which must name a digest."""
    try:
        ref = parse_reference(text)
    except BasekilnError as exc:
        raise PromotionError(f"cannot promote {text!r}: {exc.message}") from exc
    if ref.digest is None:
        raise PromotionError(
            f"{text} names a tag, and a tag can move; promote by digest: pass "
            f"{ref.name}@sha256:<digest> (`basekiln verify` or the nightly report shows it)"
        )
    return ref


def destination_reference(text: str, source: Reference) -> Reference:
    """The release repository (HOST/REPO), different from the source's."""
    try:
        ref = parse_reference(text)
    except BasekilnError as exc:
        raise PromotionError(f"--to {text!r}: {exc.message}") from exc
    if ref.tag or ref.digest:
        raise PromotionError(
            f"--to {text}: name the release repository only (HOST/REPO); the digest is "
            "kept and tags are given with --tag"
        )
    if ref.name == source.name:
        raise PromotionError(f"--to {text} is the repository the image is already in")
    return ref


def default_destination(config: Config, source: Reference) -> str:
    release = config.file.registry.release
    if not release:
        raise PromotionError(
            "name the release repository with --to HOST/REPO/NAME, or set [registry] "
            "release in basekiln.toml"
        )
    return f"{release.rstrip('/')}/{source.repository.rpartition('/')[2]}"


def default_tags(digest: str, now: datetime) -> tuple[str, ...]:
    return ("latest", f"{now:%Y%m%d}-{digest.removeprefix('sha256:')[:12]}")


def promoter_identity() -> str:
    """Who promotes: $BASEKILN_PROMOTER, else user@host."""
    explicit = os.environ.get(PROMOTER_ENV)
    if explicit:
        return explicit
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


# --- verification ---------------------------------------------------------------------


def verify_source(target: Reference, verifier: _cosign.Verifier, endpoint: Endpoint) -> Verified:
    """Verify the signature and every required attestation, reporting every failure."""
    problems: list[str] = []
    try:
        _cosign.verify(target, verifier, endpoint)
    except BasekilnError as exc:
        problems.append(f"signature: {exc.message}")
    statements: dict[str, tuple[Json, ...]] = {}
    payloads: dict[str, tuple[str, ...]] = {}
    for predicate_type, cosign_type in REQUIRED_ATTESTATIONS.items():
        try:
            found = _cosign.verify_attestation(target, verifier, cosign_type, endpoint)
            for attestation in found:
                attest.check_statement(attestation.statement, str(target.digest), predicate_type)
        except BasekilnError as exc:
            problems.append(f"attestation {predicate_type}: {exc.message}")
            continue
        statements[predicate_type] = tuple(a.statement for a in found)
        payloads[predicate_type] = tuple(_payload_digest(a.envelope) for a in found)
    if problems:
        raise PromotionError(
            f"{target} did not verify, so it is not promoted:\n"
            + "\n".join(f"  - {p.splitlines()[0]}" for p in problems)
        )
    return Verified(statements, payloads)


def _payload_digest(envelope: Mapping[str, Any]) -> str:
    payload = envelope.get("payload") or envelope.get("dsseEnvelope", {}).get("payload", "")
    return hashlib.sha256(base64.b64decode(payload)).hexdigest()


# --- policy (pure) ----------------------------------------------------------------------


def evaluate_policy(
    policy: PromotionConfig, digest: str, verified: Verified, now: datetime
) -> tuple[PolicyCheck, ...]:
    """Every policy check, passed or not, in a fixed order."""
    checks: list[tuple[str, bool, Callable[[], str]]] = [
        ("reproducible", policy.require_reproducible, lambda: _reproducible(verified, digest)),
        ("sbom cross-check", policy.require_sbom_cross_check, lambda: _sbom_matches(verified)),
        ("builder", True, lambda: _builder(verified, policy.allowed_builders)),
        ("age", policy.max_age_days > 0, lambda: _age(verified, policy.max_age_days, now)),
    ]
    results = []
    for name, required, check in checks:
        if not required:
            results.append(PolicyCheck(name, True, "not required by the policy"))
            continue
        try:
            results.append(PolicyCheck(name, True, check()))
        except PromotionError as exc:
            results.append(PolicyCheck(name, False, exc.message))
    return tuple(results)


def _reproducible(verified: Verified, digest: str) -> str:
    predicate = verified.one(REPRODUCIBLE_PREDICATE).get("predicate") or {}
    builds = predicate.get("builds") or []
    digests = [b.get("digest") for b in builds if isinstance(b, Mapping)]
    if predicate.get("matched") is not True or len(digests) < 2:
        raise PromotionError(f"the reproducibility statement shows {len(digests)} matching builds")
    if set(digests) != {digest}:
        raise PromotionError(f"the builds gave {sorted(set(map(str, digests)))}, not {digest}")
    return f"{len(digests)} independent builds gave {digest}"


def _sbom_matches(verified: Verified) -> str:
    document = verified.one(SPDX_PREDICATE).get("predicate") or {}
    listed = {(p.name, p.version, p.architecture) for p in parse_spdx_debs(document).packages}
    built = set()
    for dep in _predicate(verified.one(SLSA_PROVENANCE), "buildDefinition").get(
        "resolvedDependencies", []
    ):
        if (dep.get("annotations") or {}).get("role") != "content":
            continue
        deb = parse_deb_purl(str(dep.get("uri", "")))
        if deb is not None:
            built.add((deb.name, deb.version, deb.architecture))
    if not listed or listed != built:
        missing = sorted(f"{n} {v}" for n, v, _ in built - listed)
        extra = sorted(f"{n} {v}" for n, v, _ in listed - built)
        raise PromotionError(
            f"the SBOM and the provenance disagree: missing from the SBOM {missing or 'none'}, "
            f"not in the provenance {extra or 'none'}"
        )
    return f"the SBOM lists exactly the {len(listed)} packages the provenance names"


def _builder(verified: Verified, allowed: Sequence[str]) -> str:
    builder = _predicate(verified.one(SLSA_PROVENANCE), "runDetails").get("builder") or {}
    found = builder.get("id")
    if found not in allowed:
        raise PromotionError(f"built by {found!r}, which is not an allowed builder {list(allowed)}")
    return f"built by {found}"


def _age(verified: Verified, max_days: int, now: datetime) -> str:
    metadata = _predicate(verified.one(SLSA_PROVENANCE), "runDetails").get("metadata") or {}
    text = str(metadata.get("finishedOn", ""))
    try:
        finished = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise PromotionError(f"the provenance has no readable finishedOn ({text!r})") from None
    finished = finished if finished.tzinfo else finished.replace(tzinfo=UTC)
    age = now - finished
    if age > timedelta(days=max_days):
        raise PromotionError(f"built {text}, {age.days} days ago; the policy allows {max_days}")
    return f"built {text}"


def _predicate(statement: Json, part: str) -> Json:
    value = (statement.get("predicate") or {}).get(part) or {}
    return value if isinstance(value, dict) else {}


# --- the promotion record -----------------------------------------------------------


def policy_json(policy: PromotionConfig) -> Json:
    return policy.model_dump(mode="json")


def policy_digest(policy: PromotionConfig) -> str:
    canonical = json.dumps(policy_json(policy), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def summary_predicate(
    *,
    source: Reference,
    destination: Reference,
    tags: Sequence[str],
    policy: PromotionConfig,
    verified: Verified,
    checks: Sequence[PolicyCheck],
    promoter: str,
    now: datetime,
) -> Json:
    """A SLSA verification summary v1: who promoted what, when, under which policy."""
    inputs = [
        {
            "name": predicate_type,
            "uri": f"{source.name}:{attest.attestation_tag(str(source.digest))}",
            "digest": {"sha256": digest},
        }
        for predicate_type, digests in sorted(verified.payload_digests.items())
        for digest in digests
    ]
    return {
        "verifier": {"id": PROMOTER_ID, "version": {"basekiln": __version__}},
        "timeVerified": now.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "resourceUri": str(destination),
        "policy": {"uri": POLICY_URI, "digest": {"sha256": policy_digest(policy)}},
        "inputAttestations": inputs,
        "verificationResult": "PASSED",
        "verifiedLevels": [f"SLSA_BUILD_LEVEL_{policy.slsa_build_level}"],
        "dependencyLevels": {},
        "slsaVersion": "1.0",
        # Extension fields (SLSA consumers ignore what they do not know):
        "promotion": {
            "promoter": promoter,
            "source": str(source),
            "destination": str(destination),
            "tags": list(tags),
            "policy": policy_json(policy),
            "checks": [vars(c) for c in checks],
        },
    }


# --- the whole promotion ------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """What a promotion was asked to do, checked before anything is read."""

    source: Reference
    destination: Reference  # the release repository
    digest: str
    tags: tuple[str, ...]
    promoter: str
    now: datetime
    ca_bundle: Path | None = None

    @property
    def target(self) -> Reference:
        return self.destination.by_digest(self.digest)


def request(
    config: Config,
    image: str,
    to: str | None,
    *,
    tags: Sequence[str] = (),
    promoter: str | None = None,
    ca_bundle: Path | None = None,
    now: datetime | None = None,
) -> Request:
    now = now or datetime.now(UTC)
    source = source_reference(image)
    destination = destination_reference(to or default_destination(config, source), source)
    digest = str(source.digest)
    return Request(
        source,
        destination,
        digest,
        tuple(tags) or default_tags(digest, now),
        promoter or promoter_identity(),
        now,
        ca_bundle,
    )


def check(
    config: Config, wanted: Request, signing: Signing
) -> tuple[Verified, tuple[PolicyCheck, ...]]:
    """Verify the source and apply the policy; PromotionError naming every failure."""
    with _as_promotion_error(wanted):
        _cosign.check_signer(signing.signer)
        verified = verify_source(
            wanted.source, signing.verifier, registry_endpoint(wanted.source, wanted.ca_bundle)
        )
    checks = evaluate_policy(config.file.promotion, wanted.digest, verified, wanted.now)
    failed = [c for c in checks if not c.passed]
    if failed:
        raise PromotionError(
            f"{wanted.source} does not meet the promotion policy, so it is not promoted:\n"
            + "\n".join(f"  - {c.name}: {c.detail}" for c in failed)
        )
    log.info("%s verified and meets the policy", wanted.source)
    return verified, checks


def copy(wanted: Request, signing: Signing) -> str:
    """Copy the image with its signature and attestations, by digest; verify the copy.

    Safe to repeat: everything is addressed by digest and no tag is set.
    """
    with _as_promotion_error(wanted):
        source_endpoint = registry_endpoint(wanted.source, wanted.ca_bundle)
        target_endpoint = registry_endpoint(wanted.destination, wanted.ca_bundle)
        with (
            RegistryClient(source_endpoint) as source_client,
            RegistryClient(target_endpoint) as target_client,
        ):
            copy_image(source_client, wanted.source, target_client, wanted.destination)
        verify_source(wanted.target, signing.verifier, target_endpoint)
    log.info("copied %s to %s", wanted.source, wanted.target)
    return str(wanted.target)


def record_and_tag(
    config: Config,
    wanted: Request,
    signing: Signing,
    verified: Verified,
    checks: Sequence[PolicyCheck],
) -> Promotion:
    """Attach the signed promotion record, verify it, then set the tags."""
    predicate = summary_predicate(
        source=wanted.source,
        destination=wanted.target,
        tags=wanted.tags,
        policy=config.file.promotion,
        verified=verified,
        checks=checks,
        promoter=wanted.promoter,
        now=wanted.now,
    )
    statement = attest.in_toto_statement(
        wanted.destination.name, wanted.digest, VSA_PREDICATE, predicate
    )
    payload = statement_bytes(statement)
    endpoint = registry_endpoint(wanted.destination, wanted.ca_bundle)
    with _as_promotion_error(wanted):
        signed = attest.sign_statement(payload, wanted.digest, signing.signer)
        with RegistryClient(endpoint) as client:
            attest.attach(client, wanted.target, [signed])
            found = _cosign.verify_attestation(
                wanted.target, signing.verifier, VSA_PREDICATE, endpoint
            )
            for attestation in found:
                attest.check_statement(attestation.statement, wanted.digest, VSA_PREDICATE)
            client.put_tags(wanted.target, wanted.tags)
    log.info("promoted %s as %s", wanted.target, ", ".join(wanted.tags))
    record_file = _keep_record(config, wanted.digest, wanted.now, payload)
    return Promotion(
        str(wanted.source),
        str(wanted.target),
        wanted.digest,
        wanted.tags,
        tuple(checks),
        statement,
        record_file,
    )


def promote(
    config: Config,
    image: str,
    to: str | None,
    signing: Signing,
    *,
    tags: Sequence[str] = (),
    promoter: str | None = None,
    ca_bundle: Path | None = None,
    now: datetime | None = None,
) -> Promotion:
    """Verify, check the policy, copy by digest, attest the promotion, then tag."""
    wanted = request(config, image, to, tags=tags, promoter=promoter, ca_bundle=ca_bundle, now=now)
    verified, checks = check(config, wanted, signing)
    copy(wanted, signing)
    return record_and_tag(config, wanted, signing, verified, checks)


@contextlib.contextmanager
def _as_promotion_error(wanted: Request) -> Iterator[None]:
    """Any basekiln error becomes exit code 4, saying that no tag was moved."""
    try:
        yield
    except PromotionError:
        raise
    except BasekilnError as exc:
        raise PromotionError(
            f"promoting {wanted.source} to {wanted.destination} failed, and no tag was "
            f"moved: {exc.message}"
        ) from exc


def _keep_record(config: Config, digest: str, now: datetime, payload: bytes) -> str:
    """A copy of the signed record's Statement under the reports folder."""
    folder = Path(config.file.nightly.reports_dir)
    folder = folder if folder.is_absolute() else config.root / folder
    short = digest.removeprefix("sha256:")[:12]
    path = folder / "promotions" / f"{now:%Y%m%dT%H%M%SZ}-{short}.statement.json"
    write_atomic(path, payload)
    return str(path)
