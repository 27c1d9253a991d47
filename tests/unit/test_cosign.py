"""The cosign wrapper without cosign: argv, environment, output parsing, error mapping.

The stderr samples were captured from cosign 2.5.0 against Debian's docker-registry.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from basekiln import _cosign
from basekiln._cosign import Failure, Keyless, KeylessPolicy
from basekiln.errors import ExitCode, InputError, VerificationError
from basekiln.registry import (
    Credentials,
    Endpoint,
    RegistryAuthError,
    RegistryUnreachableError,
    parse_reference,
)

DIGEST = "sha256:" + "f0" * 32
IMAGE = parse_reference(f"127.0.0.1:5999/test/img@{DIGEST}")
PLAIN = Endpoint("127.0.0.1:5999", plain_http=True)
TLS = Endpoint("127.0.0.1:5999", ca_bundle=Path("/nonexistent/ca.crt"))
SLSA = "https://slsa.dev/provenance/v1"
WARN = (
    "WARNING: Skipping tlog verification is an insecure practice that lacks transparency "
    "and auditability verification for the signature.\n"
)


def _error(line: str) -> str:
    return f"Error: {line}\nerror during command execution: {line}\n"


SAMPLES = {
    "wrong password": (1, _error(
        f"signing [{IMAGE}]: getting signer: reading key: decrypt: encrypted: decryption failed"
    ), Failure.KEY_PASSWORD),
    "missing key file": (1, _error(
        f"signing [{IMAGE}]: getting signer: reading key: open nokey.key: no such file or "
        "directory"
    ), Failure.KEY_MISSING),
    "missing key variable": (1, _error(
        f"signing [{IMAGE}]: getting signer: reading key: loading URL: env var $NOPE not found"
    ), Failure.KEY_MISSING),
    "missing public key": (1, WARN + _error(
        "loading public key: open none.pub: no such file or directory"
    ), Failure.KEY_MISSING),
    "no password to prompt with": (1, "Enter password for private key: " + _error(
        f"signing [{IMAGE}]: getting signer: reading key: inappropriate ioctl for device"
    ), Failure.PASSWORD_UNSET),
    "unsigned": (10, WARN + _error("no signatures found"), Failure.NO_SIGNATURE),
    "signed by another key": (12, WARN + _error(
        "no matching signatures: invalid signature when validating ASN.1 encoded signature"
    ), Failure.NO_MATCHING_SIGNATURE),
    "no attestation": (1, WARN + _error("no matching attestations: "), Failure.NO_ATTESTATION),
    "tampered attestation": (1, WARN + _error(
        "no matching attestations: invalid signature when validating ASN.1 encoded signature"
    ), Failure.NO_ATTESTATION),
    "attestation of another type": (1, WARN + _error(
        f"none of the attestations matched the predicate type: https://spdx.dev/Document, "
        f"found: {SLSA}"
    ), Failure.WRONG_PREDICATE_TYPE),
    "download without attestations": (1, _error("found no attestations"),
                                      Failure.NO_ATTESTATION),
    "refused": (1, WARN + _error(
        'Get "https://127.0.0.1:5998/v2/": dial tcp 127.0.0.1:5998: connect: connection '
        'refused; Get "http://127.0.0.1:5998/v2/": dial tcp 127.0.0.1:5998: connect: '
        "connection refused"
    ), Failure.REGISTRY_UNREACHABLE),
    "unknown CA": (1, _error(
        f"signing [{IMAGE}]: accessing image: Get \"https://127.0.0.1:45913/v2/\": tls: failed "
        "to verify certificate: x509: certificate signed by unknown authority; GET "
        "http://127.0.0.1:45913/v2/: unexpected status code 400 Bad Request: Client sent an "
        "HTTP request to an HTTPS server."
    ), Failure.REGISTRY_TLS),
    "unknown CA, plain-HTTP fallback only": (1, WARN + _error(
        "GET http://127.0.0.1:45913/v2/: unexpected status code 400 Bad Request: Client sent "
        "an HTTP request to an HTTPS server."
    ), Failure.REGISTRY_TLS),
    "no login": (1, WARN + _error(
        f"GET https://127.0.0.1:45913/v2/a/b/manifests/sha256-{'f0' * 32}.sig: UNAUTHORIZED: "
        "authentication required; [map[Action:pull Class: Name:a/b Type:repository]]"
    ), Failure.REGISTRY_AUTH),
    "unavailable": (1, _error(
        "GET http://127.0.0.1:5999/v2/: unexpected status code 503 Service Unavailable"
    ), Failure.REGISTRY_UNAVAILABLE),
    "something else": (1, _error("flux capacitor misaligned"), Failure.UNKNOWN),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_classify_captured_failures(name: str) -> None:
    returncode, stderr, expected = SAMPLES[name]
    assert _cosign.classify(returncode, stderr) is expected


@pytest.mark.parametrize(
    ("failure", "kind", "exit_code", "says"),
    [
        (Failure.KEY_MISSING, _cosign.SigningKeyError, ExitCode.INPUT, "key is missing"),
        (Failure.KEY_PASSWORD, _cosign.SigningKeyError, ExitCode.INPUT, "set COSIGN_PASSWORD"),
        (Failure.PASSWORD_UNSET, _cosign.SigningKeyError, ExitCode.INPUT, "set COSIGN_PASSWORD"),
        (Failure.NO_SIGNATURE, VerificationError, ExitCode.VERIFICATION, "not signed"),
        (Failure.NO_MATCHING_SIGNATURE, VerificationError, ExitCode.VERIFICATION, "this key"),
        (Failure.NO_ATTESTATION, VerificationError, ExitCode.VERIFICATION, "no attestation"),
        (Failure.WRONG_PREDICATE_TYPE, VerificationError, ExitCode.VERIFICATION, "detail"),
        (Failure.REGISTRY_AUTH, RegistryAuthError, ExitCode.INPUT, "BASEKILN_REGISTRY_PASSWORD"),
        (Failure.REGISTRY_TLS, RegistryUnreachableError, ExitCode.FAILURE, "CA bundle"),
        (Failure.REGISTRY_UNREACHABLE, RegistryUnreachableError, ExitCode.FAILURE, "5999"),
        (Failure.REGISTRY_UNAVAILABLE, RegistryUnreachableError, ExitCode.FAILURE, "5999"),
        (Failure.UNKNOWN, _cosign.CosignError, ExitCode.FAILURE, "cosign failed: detail"),
    ],
)
def test_failure_errors(failure: Failure, kind: type, exit_code: ExitCode, says: str) -> None:
    error = _cosign.failure_error(failure, "signing x", PLAIN, "detail")
    assert isinstance(error, kind)
    assert error.exit_code == exit_code  # type: ignore[attr-defined]
    assert says in str(error) and str(error).startswith("signing x")


def test_every_failure_has_an_error() -> None:
    for failure in Failure:
        assert _cosign.failure_error(failure, "x", None, "d") is not None


# --- argv ---------------------------------------------------------------------------


def _flags(argv: list[str]) -> set[str]:
    return set(argv[1:-1])


def test_sign_argv_pins_the_legacy_layout_offline() -> None:
    argv = _cosign.sign_argv(IMAGE, "/keys/cosign.key", PLAIN, timeout=120)
    assert argv[:2] == ["cosign", "sign"] and argv[-1] == str(IMAGE)
    assert {
        "--key=/keys/cosign.key",
        "--tlog-upload=false",
        "--registry-referrers-mode=legacy",
        "--attachment-tag-prefix=",
        "--upload=true",
        "--yes",
        "--allow-http-registry=true",
        "--allow-insecure-registry=true",
        "--timeout=115s",
    } <= _flags(argv)
    assert not any("password" in flag for flag in argv)


def test_tls_registries_never_get_insecure_flags() -> None:
    for argv in (
        _cosign.sign_argv(IMAGE, "k.key", TLS, 60),
        _cosign.verify_argv(IMAGE, "k.pub", TLS, 60),
        _cosign.download_attestation_argv(IMAGE, TLS, 60),
    ):
        assert not [flag for flag in argv if "insecure-registry" in flag or "http-registry" in flag]


def test_attest_argv() -> None:
    argv = _cosign.attest_argv(IMAGE, "env://SIGNING_KEY", Path("p.json"), SLSA, PLAIN, 60, True)
    assert argv[:2] == ["cosign", "attest"]
    assert {
        "--key=env://SIGNING_KEY",
        "--predicate=p.json",
        f"--type={SLSA}",
        "--replace=true",
        "--new-bundle-format=false",
        "--tlog-upload=false",
    } <= _flags(argv)


def test_verify_argvs_need_no_transparency_log() -> None:
    verify = _cosign.verify_argv(IMAGE, "k.pub", PLAIN, 60)
    attestation = _cosign.verify_attestation_argv(IMAGE, "k.pub", SLSA, PLAIN, 60)
    for argv in (verify, attestation):
        assert {
            "--key=k.pub",
            "--insecure-ignore-tlog=true",
            "--offline=true",
            "--new-bundle-format=false",
            "--experimental-oci11=false",
            "--attachment-tag-prefix=",
        } <= _flags(argv)
    assert "--output=json" in verify
    assert f"--type={SLSA}" in attestation


def test_download_argv() -> None:
    argv = _cosign.download_attestation_argv(IMAGE, PLAIN, 60, SLSA)
    assert argv[:3] == ["cosign", "download", "attestation"]
    assert f"--predicate-type={SLSA}" in argv


def test_keyless_flags_pass_through() -> None:
    signer = Keyless("/run/token", "https://issuer.example", "https://fulcio.example", None)
    argv = _cosign.sign_argv(IMAGE, signer, TLS, 60)
    assert {
        "--identity-token=/run/token",
        "--oidc-issuer=https://issuer.example",
        "--fulcio-url=https://fulcio.example",
        "--tlog-upload=true",
    } <= _flags(argv)
    assert not any(flag.startswith("--key") or flag.startswith("--rekor") for flag in argv)
    assert "/run/token" not in repr(signer)
    policy = KeylessPolicy("ci@example.org", "https://issuer.example")
    verify = _cosign.verify_argv(IMAGE, policy, TLS, 60)
    assert "--certificate-identity=ci@example.org" in verify
    assert "--insecure-ignore-tlog=true" not in verify


def test_only_digests_are_signed() -> None:
    with pytest.raises(InputError, match="never a tag"):
        _cosign.sign_argv(parse_reference("127.0.0.1:5999/test/img:latest"), "k", PLAIN, 60)


# --- environment and pre-checks ------------------------------------------------------


def test_child_env_has_private_docker_config_and_ca_bundle(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\nTEST CA\n-----END CERTIFICATE-----\n")
    endpoint = Endpoint("127.0.0.1:5999", ca_bundle=ca, credentials=Credentials("u", "p w"))
    base = {"PATH": "/bin", "COSIGN_REPOSITORY": "elsewhere/sigs", "COSIGN_EXPERIMENTAL": "1"}
    with _cosign._call_env(endpoint, base) as env:
        config = json.loads((Path(env["DOCKER_CONFIG"]) / "config.json").read_text())
        assert config == {
            "auths": {"127.0.0.1:5999": {"auth": base64.b64encode(b"u:p w").decode()}}
        }
        assert (Path(env["DOCKER_CONFIG"]) / "config.json").stat().st_mode & 0o077 == 0
        assert "TEST CA" in Path(env["SSL_CERT_FILE"]).read_text()
        assert "COSIGN_REPOSITORY" not in env and "COSIGN_EXPERIMENTAL" not in env
        scratch = Path(env["DOCKER_CONFIG"])
    assert not scratch.exists()


def test_child_env_never_reads_the_users_docker_config() -> None:
    with _cosign._call_env(PLAIN, {"DOCKER_CONFIG": "/home/me/.docker"}) as env:
        assert env["DOCKER_CONFIG"] != "/home/me/.docker"
        assert not (Path(env["DOCKER_CONFIG"]) / "config.json").exists()


def test_missing_key_file_is_caught_before_cosign(tmp_path: Path) -> None:
    with pytest.raises(_cosign.SigningKeyError, match="does not exist") as caught:
        _cosign._check_signer(tmp_path / "none.key", {"COSIGN_PASSWORD": "x"})
    assert caught.value.failure is Failure.KEY_MISSING


def test_missing_key_variable_is_caught_before_cosign() -> None:
    with pytest.raises(_cosign.SigningKeyError, match=r"\$SIGNING_KEY is not set"):
        _cosign._check_signer("env://SIGNING_KEY", {"COSIGN_PASSWORD": "x"})


def test_password_must_be_set_even_if_empty(tmp_path: Path) -> None:
    key = tmp_path / "cosign.key"
    key.write_text("key")
    _cosign._check_signer(key, {"COSIGN_PASSWORD": ""})
    with pytest.raises(_cosign.SigningKeyError, match="set COSIGN_PASSWORD") as caught:
        _cosign._check_signer(key, {})
    assert caught.value.failure is Failure.PASSWORD_UNSET
    _cosign._check_signer("awskms:///alias/key", {})  # KMS keys have no password


def test_missing_public_key(tmp_path: Path) -> None:
    with pytest.raises(_cosign.SigningKeyError, match=r"public key .* does not exist"):
        _cosign.verify(IMAGE, tmp_path / "none.pub", PLAIN)


# --- output parsing -----------------------------------------------------------------


def test_parse_verify_output() -> None:
    payload = {
        "critical": {
            "identity": {"docker-reference": "127.0.0.1:5999/test/img"},
            "image": {"docker-manifest-digest": DIGEST},
            "type": "cosign container image signature",
        },
        "optional": None,
    }
    stdout = ("\n" + json.dumps([payload]) + "\n").encode()
    assert _cosign.parse_verify_output(stdout) == [payload]
    assert _cosign.parse_verify_output(b"") == []


def test_parse_attestations() -> None:
    statement = {
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": SLSA,
        "subject": [{"name": "127.0.0.1:5999/test/img", "digest": {"sha256": "f0" * 32}}],
        "predicate": {"buildDefinition": {"buildType": "x"}},
    }
    envelope = {
        "payloadType": "application/vnd.in-toto+json",
        "payload": base64.b64encode(json.dumps(statement).encode()).decode(),
        "signatures": [{"keyid": "", "sig": "MEYCIQ..."}],
    }
    stdout = (json.dumps(envelope) + "\n" + json.dumps(envelope) + "\n").encode()
    found = _cosign.parse_attestations(stdout)
    assert len(found) == 2
    assert found[0].predicate_type == SLSA
    assert found[0].predicate == {"buildDefinition": {"buildType": "x"}}
    assert found[0].envelope == envelope


def test_last_error_line() -> None:
    stderr = WARN + _error("no signatures found")
    assert _cosign._last_error(stderr) == "no signatures found"
    assert _cosign._last_error("") == "no output"
