"""Publish: push an accepted image by digest, sign it, attest it, verify, then tag.

The order is the guarantee: a tag is only ever set on a digest whose signature and
every attestation verified with the publisher's key. An image whose digest already
carries a valid signature and attestations from the same key (a reproducible rebuild
of unchanged inputs) is neither pushed nor signed again.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from basekiln import _cosign
from basekiln.config import Config
from basekiln.errors import InputError
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
    """A key-pair signing setup; the public half is derived from the private key."""
    public = Path(key).with_suffix(".pub") if not key.startswith("env://") else None
    if public is None or not public.is_file():
        public = _cosign.public_key(key, work / "signer.pub")
    return Signing(signer=key, verifier=public)


def release_tags(recipe: str, digest: str, today: datetime | None = None) -> tuple[str, ...]:
    """A dated tag never reused for another digest, and the moving `-latest`."""
    day = (today or datetime.now(UTC)).strftime("%Y%m%d")
    short = digest.removeprefix("sha256:")[:12]
    return (f"{recipe}-{day}-{short}", f"{recipe}-latest")


def verify_published(target: Reference, signing: Signing, endpoint: Endpoint) -> tuple[str, ...]:
    """Verify the signature and every required attestation; their predicate types."""
    _cosign.verify(target, signing.verifier, endpoint)
    for cosign_type in REQUIRED_ATTESTATIONS.values():
        _cosign.verify_attestation(target, signing.verifier, cosign_type, endpoint)
    return tuple(REQUIRED_ATTESTATIONS)


def _already_published(
    target: Reference, signing: Signing, endpoint: Endpoint, client: RegistryClient
) -> bool:
    if client.head_manifest(target) is None:
        return False
    try:
        verify_published(target, signing, endpoint)
    except _cosign.SignatureVerificationError as exc:
        log.info(
            "%s is in the registry but not fully signed (%s); publishing it",
            target,
            exc.message.splitlines()[0],
        )
        return False
    return True


def publish(
    config: Config,
    result: BuildResult,
    repository: str,
    signing: Signing,
    ca_bundle: Path | None = None,
    today: datetime | None = None,
) -> PublishResult:
    """Push, sign, attest and verify `result`'s image, then set its tags."""
    repo = repository_reference(repository)
    target = repo.by_digest(result.digest)
    endpoint = registry_endpoint(repo, ca_bundle)
    tags = release_tags(result.recipe, result.digest, today)
    evidence: Evidence | None = None

    with RegistryClient(endpoint) as client:
        reused = _already_published(target, signing, endpoint, client)
        if reused:
            log.info("%s already carries a valid signature and attestations", target)
        else:
            evidence = produce_evidence(config, result, repo.name)
            pushed = client.push_image(read_image(Path(result.oci_layout), result.platform), target)
            log.info(
                "pushed %s (%d blobs uploaded, %d present)",
                target,
                len(pushed.uploaded),
                len(pushed.skipped),
            )
            _cosign.sign(target, signing.signer, endpoint)
            for attachment in evidence.attachments:
                _cosign.attest(
                    target,
                    signing.signer,
                    attachment.predicate,
                    attachment.cosign_type,
                    endpoint,
                    replace=True,
                )
        attestations = verify_published(target, signing, endpoint)
        _move_tags(client, target, tags)
    return PublishResult(
        image=str(target),
        digest=result.digest,
        tags=tags,
        attestations=attestations,
        reused=reused,
        evidence=str(evidence.folder) if evidence else None,
    )


def _move_tags(client: RegistryClient, target: Reference, tags: tuple[str, ...]) -> None:
    stale = []
    for tag in tags:
        current = client.head_manifest(target.by_tag(tag))
        if current is None or current.digest != target.digest:
            stale.append(tag)
    if stale:
        client.put_tags(target, stale)
        log.info("tagged %s as %s", target, ", ".join(stale))


def temporary_workdir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="basekiln-publish-")
