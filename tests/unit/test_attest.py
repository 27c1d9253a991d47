"""Statements, DSSE envelopes and the `.att` layout, without cosign or a registry."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import IO, Any

import pytest

from basekiln import _cosign, attest, oci
from basekiln._cosign import BlobSignature, Failure, Keyless
from basekiln.errors import ExitCode, InputError
from basekiln.provenance import statement_bytes
from basekiln.registry import ManifestInfo, Reference, parse_reference

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32
IMAGE = "127.0.0.1:5999/test/img"
TARGET = parse_reference(f"{IMAGE}@{DIGEST}")
SLSA = "https://slsa.dev/provenance/v1"
SPDX = "https://spdx.dev/Document"
REPRODUCIBLE = "https://basekiln.dev/attestations/reproducible/v1"


def _statement(predicate_type: str = SLSA, digest: str = DIGEST) -> dict[str, Any]:
    return attest.in_toto_statement(IMAGE, digest, predicate_type, {"k": "v"})


# --- statements ---------------------------------------------------------------------


def test_statement_is_v1_with_the_image_as_subject() -> None:
    statement = _statement()

    assert statement == {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": IMAGE, "digest": {"sha256": "ab" * 32}}],
        "predicateType": SLSA,
        "predicate": {"k": "v"},
    }
    assert attest.statement_problems(statement, DIGEST, SLSA) == []


def test_statement_problems_name_each_difference() -> None:
    statement = {**_statement(digest=OTHER), "_type": "https://in-toto.io/Statement/v0.1"}

    problems = attest.statement_problems(statement, DIGEST, SPDX)

    assert problems == [
        "_type is 'https://in-toto.io/Statement/v0.1', expected https://in-toto.io/Statement/v1",
        f"predicateType is '{SLSA}', expected {SPDX}",
        f"subject digests are ['{'cd' * 32}'], expected {'ab' * 32}",
    ]
    with pytest.raises(attest.StatementError, match=r"v0\.1") as caught:
        attest.check_statement(statement, DIGEST, SPDX)
    assert caught.value.exit_code == ExitCode.VERIFICATION


def test_a_statement_without_subjects_is_refused() -> None:
    statement = {**_statement(), "subject": None}
    assert attest.statement_problems(statement, DIGEST) == [
        f"subject digests are absent, expected {'ab' * 32}"
    ]


# --- DSSE -----------------------------------------------------------------------------


def test_pae_matches_the_dsse_specification_example() -> None:
    encoded = attest.pae("http://example.com/HelloWorld", b"hello world")
    assert encoded == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"


def test_pae_counts_bytes_not_characters() -> None:
    assert attest.pae("t", "é".encode()) == b"DSSEv1 1 t 2 \xc3\xa9"


def test_envelope_is_compact_json_with_an_empty_key_id() -> None:
    data = attest.envelope_bytes(b'{"a": 1}\n', ["c2ln"])

    assert data == (
        b'{"payloadType":"application/vnd.in-toto+json","payload":"eyJhIjogMX0K",'
        b'"signatures":[{"keyid":"","sig":"c2ln"}]}'
    )


KEY_SIGNATURE = BlobSignature("c2ln")


def _fake_signer(
    monkeypatch: pytest.MonkeyPatch, signature: BlobSignature = KEY_SIGNATURE
) -> list[bytes]:
    signed: list[bytes] = []

    def sign_blob(data: bytes, signer: Any, **kwargs: Any) -> BlobSignature:
        signed.append(data)
        return signature

    monkeypatch.setattr(_cosign, "sign_blob", sign_blob)
    return signed


def test_sign_statement_signs_the_pae_of_the_exact_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    signed = _fake_signer(monkeypatch)
    payload = statement_bytes(_statement())

    result = attest.sign_statement(payload, DIGEST, "cosign.key")

    assert signed == [attest.pae("application/vnd.in-toto+json", payload)]
    envelope = json.loads(result.envelope)
    assert base64.b64decode(envelope["payload"]) == payload
    assert result.predicate_type == SLSA
    assert result.descriptor() == {
        "mediaType": "application/vnd.dsse.envelope.v1+json",
        "size": len(result.envelope),
        "digest": oci.sha256_digest(result.envelope),
        "annotations": {"dev.cosignproject.cosign/signature": "", "predicateType": SLSA},
    }


def test_keyless_signatures_carry_certificate_and_bundle(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_signer(monkeypatch, BlobSignature("c2ln", "-----BEGIN CERTIFICATE-----", '{"x":1}'))

    result = attest.sign_statement(statement_bytes(_statement()), DIGEST, Keyless())

    assert result.annotations["dev.sigstore.cosign/certificate"] == "-----BEGIN CERTIFICATE-----"
    assert result.annotations["dev.sigstore.cosign/bundle"] == '{"x":1}'


@pytest.mark.parametrize(
    ("payload", "error", "says"),
    [
        (statement_bytes(_statement(digest=OTHER)), attest.StatementError, "subject digests"),
        (json.dumps(_statement()).encode(), InputError, "canonical form"),
        (b"not json", InputError, "not valid JSON"),
        (b"[]", InputError, "predicateType"),
    ],
)
def test_sign_statement_refuses_before_signing(
    monkeypatch: pytest.MonkeyPatch, payload: bytes, error: type[Exception], says: str
) -> None:
    signed = _fake_signer(monkeypatch)
    with pytest.raises(error, match=says):
        attest.sign_statement(payload, DIGEST, "cosign.key")
    assert signed == []


def test_sign_statements_keeps_the_order(monkeypatch: pytest.MonkeyPatch) -> None:
    signed = _fake_signer(monkeypatch)
    payloads = [statement_bytes(_statement(t)) for t in (SPDX, SLSA, REPRODUCIBLE)]

    for signer in ("cosign.key", Keyless()):
        results = attest.sign_statements(payloads, DIGEST, signer)
        assert [r.predicate_type for r in results] == [SPDX, SLSA, REPRODUCIBLE]
    assert len(signed) == 6


# --- the .att image -------------------------------------------------------------------


def test_attestation_tag() -> None:
    assert attest.attestation_tag(DIGEST) == f"sha256-{'ab' * 32}.att"


def test_attestation_image_is_the_one_cosign_writes() -> None:
    layers = [{"mediaType": "m", "size": 1, "digest": DIGEST}, {"digest": OTHER}]

    config, manifest = attest.attestation_image(layers)

    assert json.loads(config) == {
        "architecture": "",
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}] * 2,
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": [DIGEST, OTHER]},
        "config": {},
    }
    body = json.loads(manifest)
    assert body["mediaType"] == oci.MEDIA_MANIFEST and body["layers"] == layers
    assert body["config"] == {
        "mediaType": oci.MEDIA_CONFIG,
        "size": len(config),
        "digest": oci.sha256_digest(config),
    }
    assert b" " not in manifest


class FakeRegistry:
    """Enough of RegistryClient for `attest.attach`: blobs and manifests in memory."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, bytes] = {}
        self.uploads: list[str] = []

    def head_manifest(self, ref: Reference) -> ManifestInfo | None:
        data = self.manifests.get(ref.identifier)
        return None if data is None else ManifestInfo(oci.sha256_digest(data), "", len(data))

    def get_manifest(self, ref: Reference) -> Any:
        data = self.manifests[ref.identifier]
        return type("M", (), {"json": lambda self: json.loads(data)})()

    def put_manifest(self, ref: Reference, data: bytes, media_type: str) -> None:
        for layer in json.loads(data)["layers"]:
            assert layer["digest"] in self.blobs, "a manifest must only name stored blobs"
        self.manifests[ref.identifier] = data

    def blob_exists(self, repository: str, digest: str) -> bool:
        return digest in self.blobs

    def upload_blob(self, repository: str, digest: str, source: IO[bytes]) -> None:
        data = source.read()
        assert oci.sha256_digest(data) == digest
        self.blobs[digest] = data
        self.uploads.append(digest)

    def fetch_blob(self, repository: str, digest: str, target: IO[bytes]) -> None:
        target.write(self.blobs[digest])


def _signed(predicate_type: str, marker: str = "") -> attest.SignedStatement:
    payload = statement_bytes({**_statement(predicate_type), "predicate": {"m": marker}})
    return attest.SignedStatement(
        predicate_type,
        attest.envelope_bytes(payload, ["c2ln"]),
        {"dev.cosignproject.cosign/signature": "", "predicateType": predicate_type},
    )


def _layers(registry: FakeRegistry) -> list[dict[str, Any]]:
    manifest = registry.manifests[attest.attestation_tag(DIGEST)]
    layers: list[dict[str, Any]] = json.loads(manifest)["layers"]
    return layers


def _predicate_types(registry: FakeRegistry) -> list[tuple[str, str]]:
    found = []
    for layer in _layers(registry):
        envelope = json.loads(registry.blobs[layer["digest"]])
        statement = json.loads(base64.b64decode(envelope["payload"]))
        found.append((statement["predicateType"], statement["predicate"]["m"]))
    return found


def test_attach_to_a_digest_without_attestations() -> None:
    registry = FakeRegistry()

    digest = attest.attach(registry, TARGET, [_signed(SPDX), _signed(SLSA)])

    assert _predicate_types(registry) == [(SPDX, ""), (SLSA, "")]
    assert digest == oci.sha256_digest(registry.manifests[attest.attestation_tag(DIGEST)])
    assert len(registry.uploads) == 3  # two envelopes and the config


def test_attach_replaces_the_same_predicate_type_and_keeps_the_others() -> None:
    registry = FakeRegistry()
    attest.attach(registry, TARGET, [_signed(SLSA, "old"), _signed(REPRODUCIBLE, "kept")])

    attest.attach(registry, TARGET, [_signed(SLSA, "new")])

    assert _predicate_types(registry) == [(SLSA, "new"), (REPRODUCIBLE, "kept")]


def test_attach_reads_the_envelope_when_a_layer_has_no_annotation() -> None:
    registry = FakeRegistry()
    attest.attach(registry, TARGET, [_signed(SLSA, "old"), _signed(SPDX, "kept")])
    tag = attest.attestation_tag(DIGEST)
    body = json.loads(registry.manifests[tag])
    for layer in body["layers"]:
        del layer["annotations"]
    registry.manifests[tag] = json.dumps(body).encode()

    attest.attach(registry, TARGET, [_signed(SLSA, "new")])

    assert _predicate_types(registry) == [(SLSA, "new"), (SPDX, "kept")]


def test_attach_keeps_a_layer_it_cannot_read() -> None:
    registry = FakeRegistry()
    junk = b"not an envelope"
    registry.upload_blob("r", oci.sha256_digest(junk), io.BytesIO(junk))
    _, manifest = attest.attestation_image([{"digest": oci.sha256_digest(junk)}])
    registry.manifests[attest.attestation_tag(DIGEST)] = manifest

    attest.attach(registry, TARGET, [_signed(SLSA)])

    assert [layer["digest"] for layer in _layers(registry)][1:] == [oci.sha256_digest(junk)]


def test_attach_refuses_two_statements_of_one_type_and_a_tag() -> None:
    registry = FakeRegistry()
    with pytest.raises(InputError, match="two statements of one predicate type"):
        attest.attach(registry, TARGET, [_signed(SLSA), _signed(SLSA)])
    with pytest.raises(InputError, match="digest"):
        attest.attach(registry, TARGET.by_tag("latest"), [_signed(SLSA)])
    assert registry.manifests == {}


# --- cosign sign-blob -----------------------------------------------------------------


def test_sign_blob_argv_is_offline_for_a_key(tmp_path: Path) -> None:
    argv = _cosign.sign_blob_argv(tmp_path / "blob", "/keys/cosign.key", tmp_path, 120)

    assert argv[:2] == ["cosign", "sign-blob"] and argv[-1] == str(tmp_path / "blob")
    assert {
        "--key=/keys/cosign.key",
        "--tlog-upload=false",
        "--yes",
        "--new-bundle-format=false",
        f"--output-signature={tmp_path / 'signature'}",
        "--timeout=115s",
    } <= set(argv)
    assert not [a for a in argv if a.startswith(("--output-certificate", "--bundle"))]


def test_sign_blob_argv_passes_keyless_flags_through(tmp_path: Path) -> None:
    signer = Keyless(identity_token="/run/token", oidc_issuer="https://issuer.example")

    argv = _cosign.sign_blob_argv(tmp_path / "blob", signer, tmp_path, 120)

    assert {
        "--tlog-upload=true",
        "--identity-token=/run/token",
        "--oidc-issuer=https://issuer.example",
        f"--output-certificate={tmp_path / 'certificate'}",
        f"--bundle={tmp_path / 'bundle'}",
    } <= set(argv)


def test_read_blob_signature(tmp_path: Path) -> None:
    (tmp_path / "signature").write_text("c2ln")
    assert _cosign.read_blob_signature(tmp_path, keyless=False) == BlobSignature("c2ln")

    pem = "-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n"
    (tmp_path / "certificate").write_text(base64.b64encode(pem.encode()).decode())
    (tmp_path / "bundle").write_text(json.dumps({"rekorBundle": {"Payload": {}}}))
    read = _cosign.read_blob_signature(tmp_path, keyless=True)
    assert read == BlobSignature("c2ln", pem, '{"Payload": {}}')


def test_an_empty_signature_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "signature").write_text("")
    with pytest.raises(_cosign.CosignError, match="empty signature"):
        _cosign.read_blob_signature(tmp_path, keyless=False)


def test_sign_blob_wrong_password_is_classified() -> None:
    stderr = (
        "Using payload from: blob\nError: signing blob: reading key: decrypt: encrypted: "
        "decryption failed\nerror during command execution: signing blob: reading key: "
        "decrypt: encrypted: decryption failed\n"
    )
    assert _cosign.classify(1, stderr) is Failure.KEY_PASSWORD


def test_sign_blob_checks_the_key_before_running_cosign(tmp_path: Path) -> None:
    with pytest.raises(_cosign.SigningKeyError, match="does not exist"):
        _cosign.sign_blob(b"x", tmp_path / "absent.key", env={"COSIGN_PASSWORD": ""})
    (tmp_path / "present.key").write_text("key")
    with pytest.raises(_cosign.SigningKeyError, match="set COSIGN_PASSWORD"):
        _cosign.sign_blob(b"x", tmp_path / "present.key", env={})
