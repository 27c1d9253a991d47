"""Signed in-toto Statements v1, stored where and how cosign 2.x stores attestations.

`cosign attest` 2.5 cannot attach a Statement it did not write: it wraps the predicate
in an in-toto Statement v0.1, and has no flag to take a whole Statement
(sigstore/cosign#4019, #4238, #4308; `attest-blob --statement` came after 2.5, in
#4306). basekiln's statements are v1, so it signs them itself and stores them in
cosign's layout, which stock `cosign verify-attestation` reads:

- the payload of each DSSE envelope (type `application/vnd.in-toto+json`) is the
  Statement's canonical bytes, exactly the file under `out/<recipe>/evidence/`;
- the signature is over DSSE's pre-authentication encoding (PAE) of that payload, made
  by `cosign sign-blob` with the publisher's key (offline for a key pair);
- the envelopes are the layers (`application/vnd.dsse.envelope.v1+json`, annotated with
  `predicateType` and an empty `dev.cosignproject.cosign/signature`) of an OCI image
  manifest tagged `sha256-<hex>.att` in the image's own repository, with the empty
  image config cosign writes;
- attaching replaces an earlier envelope of the same predicate type and keeps the
  others, as `cosign attest --replace` does, the new envelopes first.

Keyless signing passes the OIDC flags to `sign-blob` and stores the certificate and
Rekor bundle in the annotations cosign uses. It is not exercised by the tests, and the
Rekor entry `sign-blob` makes is a `hashedrekord` of the PAE rather than the `intoto`
entry `cosign attest` makes, so a verifier that checks the transparency log may refuse
it.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from basekiln import _cosign, oci
from basekiln.errors import InputError, VerificationError
from basekiln.provenance import STATEMENT_TYPE, statement_bytes
from basekiln.registry import Reference, RegistryClient, check_digest

log = logging.getLogger(__name__)

PAYLOAD_TYPE = "application/vnd.in-toto+json"
MEDIA_ENVELOPE = "application/vnd.dsse.envelope.v1+json"
ANNOTATION_PREDICATE_TYPE = "predicateType"
ANNOTATION_SIGNATURE = "dev.cosignproject.cosign/signature"
ANNOTATION_CERTIFICATE = "dev.sigstore.cosign/certificate"
ANNOTATION_BUNDLE = "dev.sigstore.cosign/bundle"
# Go's zero time: what cosign's attestation image config carries for `created`.
ZERO_TIME = "0001-01-01T00:00:00Z"

Json = dict[str, Any]


class StatementError(VerificationError):
    """An in-toto Statement that is not a v1 Statement about the expected digest."""


@dataclass(frozen=True)
class SignedStatement:
    """One DSSE envelope, ready to be a layer of the `.att` manifest."""

    predicate_type: str
    envelope: bytes
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return oci.sha256_digest(self.envelope)

    def descriptor(self) -> Json:
        return {
            "mediaType": MEDIA_ENVELOPE,
            "size": len(self.envelope),
            "digest": self.digest,
            "annotations": dict(sorted(self.annotations.items())),
        }


def in_toto_statement(image: str, digest: str, predicate_type: str, predicate: Any) -> Json:
    """A Statement v1 whose one subject is `image` (HOST/REPO) at `digest`."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": image, "digest": {"sha256": _hex(digest)}}],
        "predicateType": predicate_type,
        "predicate": predicate,
    }


def statement_problems(
    statement: Mapping[str, Any], digest: str, predicate_type: str | None = None
) -> list[str]:
    """Why `statement` is not a Statement v1 about `digest` (of `predicate_type`)."""
    problems = []
    if statement.get("_type") != STATEMENT_TYPE:
        problems.append(f"_type is {statement.get('_type')!r}, expected {STATEMENT_TYPE}")
    if predicate_type is not None and statement.get("predicateType") != predicate_type:
        problems.append(
            f"predicateType is {statement.get('predicateType')!r}, expected {predicate_type}"
        )
    subjects = statement.get("subject")
    found = [s.get("digest", {}).get("sha256") for s in subjects or [] if isinstance(s, Mapping)]
    if _hex(digest) not in found:
        problems.append(f"subject digests are {found or 'absent'}, expected {_hex(digest)}")
    return problems


def check_statement(
    statement: Mapping[str, Any], digest: str, predicate_type: str | None = None
) -> None:
    problems = statement_problems(statement, digest, predicate_type)
    if problems:
        kind = predicate_type or statement.get("predicateType") or "in-toto"
        raise StatementError(
            f"the {kind} statement is not basekiln's Statement v1 for {digest}:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what the envelope's signature is over."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


def envelope_bytes(payload: bytes, signatures: Iterable[str]) -> bytes:
    """A DSSE envelope as cosign writes it: compact JSON, empty key ids."""
    envelope = {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": [{"keyid": "", "sig": sig} for sig in signatures],
    }
    return json.dumps(envelope, separators=(",", ":")).encode()


def sign_statement(
    payload: bytes,
    digest: str,
    signer: _cosign.Signer,
    *,
    env: Mapping[str, str] | None = None,
) -> SignedStatement:
    """Sign a Statement's exact bytes, after checking it is a v1 Statement about `digest`.

    `payload` must be canonical (`provenance.statement_bytes`), so that what is signed
    is byte for byte the evidence file it was read from.
    """
    statement = _parse_statement(payload)
    check_statement(statement, digest)
    predicate_type = str(statement["predicateType"])
    signed = _cosign.sign_blob(
        pae(PAYLOAD_TYPE, payload), signer, what=f"the {predicate_type} statement", env=env
    )
    annotations = {ANNOTATION_SIGNATURE: "", ANNOTATION_PREDICATE_TYPE: predicate_type}
    if signed.certificate:
        annotations[ANNOTATION_CERTIFICATE] = signed.certificate
    if signed.rekor_bundle:
        annotations[ANNOTATION_BUNDLE] = signed.rekor_bundle
    return SignedStatement(predicate_type, envelope_bytes(payload, [signed.signature]), annotations)


def sign_statements(
    payloads: Sequence[bytes],
    digest: str,
    signer: _cosign.Signer,
    *,
    env: Mapping[str, str] | None = None,
) -> list[SignedStatement]:
    """`sign_statement` for each payload, in order.

    With a key, the signatures are made concurrently: each `cosign sign-blob` spends most
    of its half second decrypting the key (scrypt), and they do not depend on each other.
    Keyless signing stays sequential, so that at most one OIDC flow is open at a time.
    """
    workers = 1 if isinstance(signer, _cosign.Keyless) else max(1, len(payloads))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sign-blob") as pool:
        futures = [pool.submit(sign_statement, p, digest, signer, env=env) for p in payloads]
        return [future.result() for future in futures]


def _parse_statement(payload: bytes) -> Json:
    try:
        statement = json.loads(payload)
    except ValueError as exc:
        raise InputError(f"an in-toto statement is not valid JSON ({exc})") from exc
    if not isinstance(statement, dict) or not statement.get("predicateType"):
        raise InputError("an in-toto statement must be a JSON object with a predicateType")
    if payload != statement_bytes(statement):
        raise InputError(
            f"the {statement['predicateType']} statement is not in canonical form; write it "
            "with basekiln.provenance.statement_bytes"
        )
    return statement


def attestation_tag(digest: str) -> str:
    """`sha256-<hex>.att`: cosign 2.x's tag for the attestations of `digest`."""
    return check_digest(digest).replace(":", "-") + ".att"


def attestation_image(layers: Sequence[Mapping[str, Any]]) -> tuple[bytes, bytes]:
    """The config and manifest bytes of an `.att` image with these layer descriptors.

    The config is the one cosign writes: empty platform, zero times, one history entry
    and one diff id per layer (the envelopes are stored uncompressed).
    """
    config = {
        "architecture": "",
        "created": ZERO_TIME,
        "history": [{"created": ZERO_TIME} for _ in layers],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
        "config": {},
    }
    config_data = json.dumps(config, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": oci.MEDIA_MANIFEST,
        "config": {
            "mediaType": oci.MEDIA_CONFIG,
            "size": len(config_data),
            "digest": oci.sha256_digest(config_data),
        },
        "layers": list(layers),
    }
    return config_data, json.dumps(manifest, separators=(",", ":")).encode()


def attach(client: RegistryClient, target: Reference, signed: Sequence[SignedStatement]) -> str:
    """Store `signed` under `target`'s `.att` tag; return the new manifest's digest.

    An envelope already stored with one of the same predicate types is dropped; the
    others are kept after the new ones.
    """
    if target.digest is None:
        raise InputError(f"{target}: attestations are attached to a digest; name one")
    types = [s.predicate_type for s in signed]
    if len(set(types)) != len(types):
        raise InputError(f"two statements of one predicate type: {', '.join(sorted(types))}")
    tag = target.by_tag(attestation_tag(target.digest))
    kept = [
        layer
        for layer in stored_layers(client, tag)
        if _predicate_type_of(client, target, layer) not in types
    ]

    for statement in signed:
        _upload(client, target, statement.digest, statement.envelope)
    config, manifest = attestation_image([*(s.descriptor() for s in signed), *kept])
    _upload(client, target, oci.sha256_digest(config), config)
    client.put_manifest(tag, manifest, oci.MEDIA_MANIFEST)
    log.debug("%s: %s now holds %d envelopes", target, tag.tag, len(signed) + len(kept))
    return oci.sha256_digest(manifest)


def stored_layers(client: RegistryClient, tag: Reference) -> list[Json]:
    """The layer descriptors of the `.att` manifest under `tag`; [] when there is none."""
    if client.head_manifest(tag) is None:
        return []
    layers = client.get_manifest(tag).json().get("layers") or []
    return [layer for layer in layers if isinstance(layer, dict)]


def _predicate_type_of(client: RegistryClient, target: Reference, layer: Mapping[str, Any]) -> str:
    """The layer's `predicateType` annotation, else the one inside its envelope."""
    annotated = (layer.get("annotations") or {}).get(ANNOTATION_PREDICATE_TYPE)
    if annotated:
        return str(annotated)
    with tempfile.SpooledTemporaryFile(max_size=1 << 20) as spool:
        client.fetch_blob(target.repository, str(layer["digest"]), spool)
        spool.seek(0)
        try:
            envelope = json.loads(spool.read())
            statement = json.loads(base64.b64decode(envelope["payload"]))
            return str(statement.get("predicateType", ""))
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("%s: kept an attestation layer that is not a readable envelope", target)
            return ""


def _upload(client: RegistryClient, target: Reference, digest: str, data: bytes) -> None:
    if client.blob_exists(target.repository, digest):
        return
    client.upload_blob(target.repository, digest, io.BytesIO(data))


def _hex(digest: str) -> str:
    return check_digest(digest).removeprefix("sha256:")
