"""cosign 2.5.0 against real docker-registry processes: keys, sign, attest, verify, tamper."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import socket
from dataclasses import replace
from pathlib import Path

import pytest

from basekiln import _cosign
from basekiln._cosign import Failure, SignatureVerificationError, SigningKeyError
from basekiln._registry_server import LocalRegistry
from basekiln.errors import InputError
from basekiln.registry import (
    Endpoint,
    Reference,
    RegistryAuthError,
    RegistryClient,
    RegistryUnreachableError,
    copy_image,
)
from tests.fixtures.registry import (
    client,
    cosign_env,
    cosign_keys,
    make_image,
    plain_registry,
    repo_ref,
    tls_registry,
)

pytestmark = pytest.mark.slow
__all__ = ["cosign_keys", "plain_registry", "tls_registry"]

SLSA = "https://slsa.dev/provenance/v1"
SPDX = "https://spdx.dev/Document"


def _push(info: LocalRegistry, layout: Path, name: str = "img") -> Reference:
    with client(info.endpoint()) as registry:
        return registry.push_image(make_image(layout), repo_ref(info, name)).reference


def _predicate(path: Path, build_type: str = "https://basekiln.invalid/build/v1") -> Path:
    path.write_text(json.dumps({"buildDefinition": {"buildType": build_type}, "runDetails": {}}))
    return path


@pytest.mark.parametrize("kind", ["plain", "tls"])
def test_sign_attest_and_verify(
    kind: str,
    plain_registry: LocalRegistry,
    tls_registry: LocalRegistry,
    cosign_keys: _cosign.KeyPair,
    tmp_path: Path,
) -> None:
    info = plain_registry if kind == "plain" else tls_registry
    endpoint, env = info.endpoint(), cosign_env()
    image = _push(info, tmp_path / "layout")
    assert image.digest is not None

    _cosign.sign(image, cosign_keys.private_key, endpoint, env=env)
    _cosign.attest(image, cosign_keys.private_key, _predicate(tmp_path / "p.json"), SLSA,
                   endpoint, env=env)  # fmt: skip

    payloads = _cosign.verify(image, cosign_keys.public_key, endpoint, env=env)
    assert [p["critical"]["image"]["docker-manifest-digest"] for p in payloads] == [image.digest]
    verified = _cosign.verify_attestation(image, cosign_keys.public_key, SLSA, endpoint, env=env)
    assert [a.predicate_type for a in verified] == [SLSA]
    assert verified[0].statement["subject"][0]["digest"] == {"sha256": image.digest[7:]}
    downloaded = _cosign.download_attestations(image, endpoint, env=env)
    assert [a.predicate for a in downloaded] == [a.predicate for a in verified]

    stem = image.digest.replace(":", "-")
    with client(endpoint) as registry:
        assert registry.list_tags(image) == [f"{stem}.att", f"{stem}.sig"]


def test_generate_key_pair_needs_a_password_and_never_overwrites(
    cosign_keys: _cosign.KeyPair, tmp_path: Path
) -> None:
    with pytest.raises(SigningKeyError, match="set COSIGN_PASSWORD") as caught:
        _cosign.generate_key_pair(tmp_path, env=cosign_env(password=None))
    assert caught.value.failure is Failure.PASSWORD_UNSET
    folder = cosign_keys.private_key.parent
    with pytest.raises(InputError, match="refusing to overwrite"):
        _cosign.generate_key_pair(folder, env=cosign_env())


def test_key_from_an_environment_variable(
    plain_registry: LocalRegistry, cosign_keys: _cosign.KeyPair, tmp_path: Path
) -> None:
    image = _push(plain_registry, tmp_path)
    env = {**cosign_env(), "BASEKILN_TEST_KEY": cosign_keys.private_key.read_text()}
    _cosign.sign(image, "env://BASEKILN_TEST_KEY", plain_registry.endpoint(), env=env)
    _cosign.verify(image, cosign_keys.public_key, plain_registry.endpoint(), env=env)


def test_missing_key(plain_registry: LocalRegistry, tmp_path: Path) -> None:
    image = _push(plain_registry, tmp_path)
    with pytest.raises(SigningKeyError, match="does not exist") as caught:
        _cosign.sign(image, tmp_path / "absent.key", plain_registry.endpoint(), env=cosign_env())
    assert caught.value.failure is Failure.KEY_MISSING
    with pytest.raises(SigningKeyError, match="BASEKILN_ABSENT_KEY is not set"):
        _cosign.sign(image, "env://BASEKILN_ABSENT_KEY", plain_registry.endpoint(),
                     env=cosign_env())  # fmt: skip


def test_wrong_key_password(
    plain_registry: LocalRegistry, cosign_keys: _cosign.KeyPair, tmp_path: Path
) -> None:
    image = _push(plain_registry, tmp_path)
    with pytest.raises(SigningKeyError, match="wrong password") as caught:
        _cosign.sign(image, cosign_keys.private_key, plain_registry.endpoint(),
                     env=cosign_env("not the password"))  # fmt: skip
    assert caught.value.failure is Failure.KEY_PASSWORD
    with client(plain_registry.endpoint()) as registry:
        assert registry.list_tags(image) == [], "a failed sign must push nothing"


def test_unsigned_and_wrongly_signed_images_fail_verification(
    plain_registry: LocalRegistry, cosign_keys: _cosign.KeyPair, tmp_path: Path
) -> None:
    endpoint, env = plain_registry.endpoint(), cosign_env()
    image = _push(plain_registry, tmp_path / "layout")
    with pytest.raises(SignatureVerificationError) as unsigned:
        _cosign.verify(image, cosign_keys.public_key, endpoint, env=env)
    assert unsigned.value.failure is Failure.NO_SIGNATURE
    assert unsigned.value.exit_code == 4
    with pytest.raises(SignatureVerificationError) as unattested:
        _cosign.verify_attestation(image, cosign_keys.public_key, SLSA, endpoint, env=env)
    assert unattested.value.failure is Failure.NO_ATTESTATION
    assert _cosign.download_attestations(image, endpoint, env=env) == []

    other = _cosign.generate_key_pair(tmp_path / "other", env=env)
    _cosign.sign(image, other.private_key, endpoint, env=env)
    with pytest.raises(SignatureVerificationError) as mismatched:
        _cosign.verify(image, cosign_keys.public_key, endpoint, env=env)
    assert mismatched.value.failure is Failure.NO_MATCHING_SIGNATURE


def test_attestation_of_another_type_does_not_verify(
    plain_registry: LocalRegistry, cosign_keys: _cosign.KeyPair, tmp_path: Path
) -> None:
    endpoint, env = plain_registry.endpoint(), cosign_env()
    image = _push(plain_registry, tmp_path)
    predicate = _predicate(tmp_path / "p.json")
    _cosign.attest(image, cosign_keys.private_key, predicate, SLSA, endpoint, env=env)
    with pytest.raises(SignatureVerificationError) as caught:
        _cosign.verify_attestation(image, cosign_keys.public_key, SPDX, endpoint, env=env)
    assert caught.value.failure is Failure.WRONG_PREDICATE_TYPE


def test_tampered_attestation_fails_verification(
    plain_registry: LocalRegistry, cosign_keys: _cosign.KeyPair, tmp_path: Path
) -> None:
    endpoint, env = plain_registry.endpoint(), cosign_env()
    image = _push(plain_registry, tmp_path)
    predicate = _predicate(tmp_path / "p.json")
    _cosign.attest(image, cosign_keys.private_key, predicate, SLSA, endpoint, env=env)
    _cosign.verify_attestation(image, cosign_keys.public_key, SLSA, endpoint, env=env)

    with client(endpoint) as registry:
        _rewrite_attestation(registry, image, "https://evil.invalid/build")
    stored = _cosign.download_attestations(image, endpoint, env=env)
    assert stored[0].predicate["buildDefinition"]["buildType"] == "https://evil.invalid/build"
    with pytest.raises(SignatureVerificationError) as caught:
        _cosign.verify_attestation(image, cosign_keys.public_key, SLSA, endpoint, env=env)
    assert caught.value.failure is Failure.NO_ATTESTATION


def _rewrite_attestation(registry: RegistryClient, image: Reference, build_type: str) -> None:
    """Change the predicate inside the stored DSSE envelope, keeping its signature."""
    assert image.digest is not None
    tag = image.by_tag(image.digest.replace(":", "-") + ".att")
    manifest = registry.get_manifest(tag)
    body = manifest.json()
    layer = body["layers"][0]
    spool = io.BytesIO()
    registry.fetch_blob(image.repository, layer["digest"], spool)

    envelope = json.loads(spool.getvalue())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["predicate"]["buildDefinition"]["buildType"] = build_type
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    data = json.dumps(envelope).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    registry.upload_blob(image.repository, digest, io.BytesIO(data))

    body["layers"][0] = {**layer, "digest": digest, "size": len(data)}
    registry.put_manifest(tag, json.dumps(body).encode(), manifest.media_type)


def test_copy_keeps_signature_and_attestation_verifiable(
    plain_registry: LocalRegistry,
    tls_registry: LocalRegistry,
    cosign_keys: _cosign.KeyPair,
    tmp_path: Path,
) -> None:
    env = cosign_env()
    staging = _push(plain_registry, tmp_path, "staging")
    _cosign.sign(staging, cosign_keys.private_key, plain_registry.endpoint(), env=env)
    _cosign.attest(staging, cosign_keys.private_key, _predicate(tmp_path / "p.json"), SLSA,
                   plain_registry.endpoint(), env=env)  # fmt: skip

    with client(plain_registry.endpoint()) as source, client(tls_registry.endpoint()) as target:
        same = copy_image(source, staging, source, repo_ref(plain_registry, "release"),
                          tags=["v1"])  # fmt: skip
        other = copy_image(source, staging, target, repo_ref(tls_registry, "release"))
    assert len(same.artifact_tags) == 2 and same.tags == ("v1",)

    for copied, info in ((same.reference, plain_registry), (other.reference, tls_registry)):
        _cosign.verify(copied, cosign_keys.public_key, info.endpoint(), env=env)
        _cosign.verify_attestation(copied, cosign_keys.public_key, SLSA, info.endpoint(), env=env)


def test_registry_login_and_tls_failures(
    tls_registry: LocalRegistry, cosign_keys: _cosign.KeyPair, tmp_path: Path
) -> None:
    image = _push(tls_registry, tmp_path)
    env = cosign_env()
    anonymous = replace(tls_registry.endpoint(), credentials=None)
    with pytest.raises(RegistryAuthError, match="BASEKILN_REGISTRY_USERNAME"):
        _cosign.sign(image, cosign_keys.private_key, anonymous, env=env)
    with pytest.raises(RegistryAuthError):
        _cosign.verify(image, cosign_keys.public_key, anonymous, env=env)
    untrusted = replace(tls_registry.endpoint(), ca_bundle=None)
    with pytest.raises(RegistryUnreachableError, match="CA bundle"):
        _cosign.verify(image, cosign_keys.public_key, untrusted, env=env)


def test_unreachable_registry(cosign_keys: _cosign.KeyPair) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{sock.getsockname()[1]}"
        image = repo_ref(host).by_digest("sha256:" + "ab" * 32)
        endpoint = Endpoint(host, plain_http=True)
        with pytest.raises(RegistryUnreachableError, match=f"cannot use registry {host}"):
            _cosign.sign(image, cosign_keys.private_key, endpoint, env=cosign_env())
        with pytest.raises(RegistryUnreachableError, match="connection refused"):
            _cosign.verify(image, cosign_keys.public_key, endpoint, env=cosign_env())
