"""Publish: push an accepted image by digest, sign it, attest it, verify, then tag.

The order is the guarantee: a tag is only ever set on a digest whose signature and
every attestation verified with the publisher's key. An image whose digest already
carries a valid signature and attestations from the same key (a reproducible rebuild
of unchanged inputs) is neither pushed nor signed again; one that is signed but lacks
a valid attestation is attested again without a second signature.

The three Statements (SBOM, provenance, reproducibility) are signed before anything
is pushed, so a missing key or a wrong password stops the run with the registry
untouched. They are attached by `basekiln.attest`, not `cosign attest`, so that the
registry holds basekiln's in-toto Statements v1 rather than cosign's v0.1 wrapping.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from basekiln import _cosign, attest
from basekiln.config import Config, is_key_path
from basekiln.errors import InputError, VerificationError
from basekiln.evidence import SPDX_PREDICATE, Evidence, produce_evidence
from basekiln.oci import read_image
from basekiln.provenance import REPRODUCIBLE_PREDICATE, SLSA_PROVENANCE
from basekiln.registry import (
    Endpoint,
    Reference,
    RegistryClient,
    endpoint_from_env,
    is_loopback,
    parse_reference,
)
from basekiln.results import BuildResult

log = logging.getLogger(__name__)

# What `cosign verify-attestation --type` is given for each attestation basekiln attaches.
REQUIRED_ATTESTATIONS = {
    SPDX_PREDICATE: "spdxjson",
    SLSA_PROVENANCE: "slsaprovenance1",
    REPRODUCIBLE_PREDICATE: REPRODUCIBLE_PREDICATE,
}


@dataclass(frozen=True)
class Signing:
    """Who signs: a key (file, env://NAME or KMS URI) or cosign's keyless flow."""

    signer: _cosign.Signer
    verifier: _cosign.Verifier


@dataclass(frozen=True)
class PublishResult:
    image: str
    digest: str
    tags: tuple[str, ...]
    attestations: tuple[str, ...]
    reused: bool
    evidence: str | None
    # Wall seconds per stage: check, sbom, provenance, signing, push, verify, tag.
    seconds: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _Published:
    """What the registry already holds for a digest, as verified with the key."""

    present: bool = False
    signed: bool = False
    attested: bool = False


def repository_reference(text: str) -> Reference:
    """`HOST/REPO`: where an image goes, without tag or digest."""
    ref = parse_reference(text)
    if ref.tag or ref.digest:
        raise InputError(
            f"--registry {text}: name a repository (HOST/REPO), without a tag or "
            "digest; basekiln chooses the tags and pushes by digest"
        )
    return ref


def registry_endpoint(ref: Reference, ca_bundle: Path | None = None) -> Endpoint:
    """Plain HTTP only for loopback registries; TLS (with an optional CA) otherwise."""
    plain = is_loopback(ref.registry) and ca_bundle is None
    return endpoint_from_env(ref.registry, plain_http=plain, ca_bundle=ca_bundle)


def signing_for_key(key: str, work: Path) -> Signing:
    """A key-pair signing setup; the public half is derived from the private key.

    A relative key path is made absolute here: cosign runs in other directories.
    """
    if is_key_path(key):
        key = str(Path(key).resolve())
    public = Path(key).with_suffix(".pub") if is_key_path(key) else None
    if public is None or not public.is_file():
        public = _cosign.public_key(key, work / "signer.pub")
    return Signing(signer=key, verifier=public)


def release_tags(recipe: str, digest: str, today: datetime | None = None) -> tuple[str, ...]:
    """A dated tag never reused for another digest, and the moving `-latest`."""
    day = (today or datetime.now(UTC)).strftime("%Y%m%d")
    short = digest.removeprefix("sha256:")[:12]
    return (f"{recipe}-{day}-{short}", f"{recipe}-latest")


def verify_published(target: Reference, signing: Signing, endpoint: Endpoint) -> tuple[str, ...]:
    """Verify the signature and every required attestation; their predicate types.

    An attestation counts only when cosign verifies it and it is a Statement v1 about
    `target`'s digest, so an older cosign-wrapped (v0.1) attestation is attested again.
    """
    _cosign.verify(target, signing.verifier, endpoint)
    verify_attestations(target, signing, endpoint)
    return tuple(REQUIRED_ATTESTATIONS)


def verify_attestations(target: Reference, signing: Signing, endpoint: Endpoint) -> None:
    assert target.digest is not None
    for predicate_type, cosign_type in REQUIRED_ATTESTATIONS.items():
        found = _cosign.verify_attestation(target, signing.verifier, cosign_type, endpoint)
        for attestation in found:
            attest.check_statement(attestation.statement, target.digest, predicate_type)


def publish(
    config: Config,
    result: BuildResult,
    repository: str,
    signing: Signing,
    ca_bundle: Path | None = None,
    today: datetime | None = None,
    evidence: Evidence | None = None,
) -> PublishResult:
    """Push, sign, attest and verify `result`'s image, then set its tags.

    `evidence` already produced for this result (a flow's earlier step) is used as it
    is; otherwise it is produced here, and only when the image needs signing.
    """
    repo = repository_reference(repository)
    target = repo.by_digest(result.digest)
    endpoint = registry_endpoint(repo, ca_bundle)
    tags = release_tags(result.recipe, result.digest, today)
    _cosign.check_signer(signing.signer)
    seconds: dict[str, float] = {}

    with RegistryClient(endpoint) as client:
        with _timed(seconds, "check"):
            state = _already_published(target, signing, endpoint, client)
        reused = state.signed and state.attested
        if reused:  # the check above just verified all of it
            log.info("%s already carries a valid signature and attestations", target)
            evidence = None
        else:
            evidence = evidence or produce_evidence(config, result, repo.name)
            seconds.update(evidence.seconds)
            _push_and_sign(client, target, result, signing, evidence, state, seconds)
            with _timed(seconds, "verify"):
                verify_published(target, signing, endpoint)
        with _timed(seconds, "tag"):
            _move_tags(client, target, tags)
    return PublishResult(
        image=str(target),
        digest=result.digest,
        tags=tags,
        attestations=tuple(REQUIRED_ATTESTATIONS),
        reused=reused,
        evidence=str(evidence.folder) if evidence else None,
        seconds=seconds,
    )


def _push_and_sign(
    client: RegistryClient,
    target: Reference,
    result: BuildResult,
    signing: Signing,
    evidence: Evidence,
    state: _Published,
    seconds: dict[str, float],
) -> None:
    with _timed(seconds, "signing"):
        payloads = [a.statement.read_bytes() for a in evidence.attachments]
        signed = attest.sign_statements(payloads, result.digest, signing.signer)
    with _timed(seconds, "push"):
        if not state.present:
            image = read_image(Path(result.oci_layout), result.platform)
            pushed = client.push_image(image, target)
            log.info(
                "pushed %s (%d blobs uploaded, %d present)",
                target,
                len(pushed.uploaded),
                len(pushed.skipped),
            )
    if not state.signed:
        with _timed(seconds, "signing"):
            _cosign.sign(target, signing.signer, client.endpoint)
    with _timed(seconds, "push"):
        attest.attach(client, target, signed)
    log.info("attached %s to %s", ", ".join(s.predicate_type for s in signed), target)


def _already_published(
    target: Reference, signing: Signing, endpoint: Endpoint, client: RegistryClient
) -> _Published:
    if client.head_manifest(target) is None:
        return _Published()
    try:
        _cosign.verify(target, signing.verifier, endpoint)
    except VerificationError as exc:
        log.info("%s is in the registry but not signed with this key (%s)", target, _first(exc))
        return _Published(present=True)
    try:
        verify_attestations(target, signing, endpoint)
    except VerificationError as exc:
        log.info("%s is signed but not fully attested (%s); attesting it", target, _first(exc))
        return _Published(present=True, signed=True)
    return _Published(present=True, signed=True, attested=True)


def _first(exc: VerificationError) -> str:
    return exc.message.splitlines()[0]


def _move_tags(client: RegistryClient, target: Reference, tags: tuple[str, ...]) -> None:
    stale = []
    for tag in tags:
        current = client.head_manifest(target.by_tag(tag))
        if current is None or current.digest != target.digest:
            stale.append(tag)
    if stale:
        client.put_tags(target, stale)
        log.info("tagged %s as %s", target, ", ".join(stale))


@contextmanager
def _timed(seconds: dict[str, float], stage: str) -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    finally:
        seconds[stage] = seconds.get(stage, 0.0) + time.monotonic() - start


def temporary_workdir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="basekiln-publish-")
