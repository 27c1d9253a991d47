"""The one wrapper around cosign 2.5.0: keys, sign, attest, verify, download.

Every call goes through `basekiln._run.run` with a timeout. The storage layout and
formats are set explicitly on every command, so that a change of cosign's defaults
(cosign 3 moved to Sigstore bundles stored as OCI 1.1 referrers) cannot change what
basekiln writes or expects:

- signatures are stored the cosign 2.x ("legacy") way, as the tag `sha256-<hex>.sig`
  in the image's own repository (`--registry-referrers-mode=legacy`, no tag prefix);
- attestations are DSSE envelopes under the tag `sha256-<hex>.att`
  (`--new-bundle-format=false`), and verification expects exactly that layout
  (`--new-bundle-format=false --experimental-oci11=false`);
- key-based signing is offline: nothing goes to a transparency log
  (`--tlog-upload=false`) and verification neither needs nor consults one
  (`--insecure-ignore-tlog=true --offline=true`);
- `COSIGN_REPOSITORY`, `COSIGN_EXPERIMENTAL` and `COSIGN_DOCKER_MEDIA_TYPES`, which
  would move signatures elsewhere or change their media types, are removed from the
  child's environment.

Registry credentials (the `Endpoint`'s, which `basekiln.registry` reads from
BASEKILN_REGISTRY_USERNAME and BASEKILN_REGISTRY_PASSWORD) reach cosign through a
private `DOCKER_CONFIG` folder written for the call, not `--registry-password`, so no
secret ever appears in an argv, a process list or an error message; without
credentials that folder is empty, so cosign never reads the user's `~/.docker`.

A private CA reaches cosign as `SSL_CERT_FILE`, a bundle of the system roots plus that
CA. Loopback plain-HTTP registries get `--allow-http-registry` and
`--allow-insecure-registry`; a TLS registry never does, so its certificate is always
checked.

`sign_blob` signs bytes offline (no registry, no transparency log for keys); basekiln
uses it to sign DSSE envelopes whose in-toto Statement it wrote itself, because `cosign
attest` 2.5 always wraps a predicate in a Statement v0.1 (sigstore/cosign#4019).

Keyless signing passes cosign's OIDC flags through (`Keyless`); it needs a network and
is not exercised by the tests.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import ssl
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from basekiln._run import Completed, run
from basekiln.errors import InputError, ToolError, VerificationError
from basekiln.registry import (
    PASSWORD_ENV as PASSWORD_ENV_REGISTRY,
)
from basekiln.registry import (
    USERNAME_ENV,
    Endpoint,
    Reference,
    RegistryAuthError,
    RegistryUnreachableError,
)

log = logging.getLogger(__name__)

COSIGN_VERSION = "2.5.0"
PASSWORD_ENV = "COSIGN_PASSWORD"  # noqa: S105 (a variable name)
TIMEOUT = 180.0
READ_ATTEMPTS = 3
# Variables that would change where or how cosign stores signatures.
_UNPINNED_ENV = ("COSIGN_REPOSITORY", "COSIGN_EXPERIMENTAL", "COSIGN_DOCKER_MEDIA_TYPES")
_SYSTEM_ROOTS = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
_KMS_SCHEMES = ("awskms://", "gcpkms://", "azurekms://", "hashivault://", "k8s://", "pkcs11:")
T = TypeVar("T")


class Failure(Enum):
    """Why a cosign command failed, read from its exit code and stderr."""

    KEY_MISSING = "key-missing"
    KEY_PASSWORD = "key-password"  # noqa: S105 (wrong password for an encrypted key)
    PASSWORD_UNSET = "password-unset"  # noqa: S105 (cosign would prompt for one)
    NO_SIGNATURE = "no-signature"
    NO_MATCHING_SIGNATURE = "no-matching-signature"
    NO_ATTESTATION = "no-attestation"
    WRONG_PREDICATE_TYPE = "wrong-predicate-type"
    REGISTRY_UNREACHABLE = "registry-unreachable"
    REGISTRY_UNAVAILABLE = "registry-unavailable"  # 429 or 5xx
    REGISTRY_TLS = "registry-tls"
    REGISTRY_AUTH = "registry-auth"
    UNKNOWN = "unknown"


class CosignError(ToolError):
    """cosign failed in a way basekiln has no better explanation for."""

    def __init__(self, message: str, failure: Failure = Failure.UNKNOWN) -> None:
        super().__init__(message)
        self.failure = failure


class SigningKeyError(InputError):
    """The signing or verification key is missing, locked, or its password is wrong."""

    def __init__(self, message: str, failure: Failure) -> None:
        super().__init__(message)
        self.failure = failure


class SignatureVerificationError(VerificationError):
    """No signature or attestation for the digest verified against the key."""

    def __init__(self, message: str, failure: Failure) -> None:
        super().__init__(message)
        self.failure = failure


@dataclass(frozen=True)
class KeyPair:
    private_key: Path
    public_key: Path


@dataclass(frozen=True)
class Keyless:
    """cosign's OIDC signing flow, passed through as flags (needs Fulcio and Rekor).

    `identity_token` may be the token or a path to a file holding it; prefer the path,
    since the argv is visible to other local users.
    """

    identity_token: str | None = field(default=None, repr=False)
    oidc_issuer: str | None = None
    fulcio_url: str | None = None
    rekor_url: str | None = None


@dataclass(frozen=True)
class KeylessPolicy:
    """Which certificate identity a keyless signature must carry to verify."""

    certificate_identity: str
    certificate_oidc_issuer: str
    rekor_url: str | None = None


@dataclass(frozen=True)
class Attestation:
    """One DSSE envelope from the registry and the in-toto statement inside it."""

    envelope: dict[str, Any]
    statement: dict[str, Any]

    @property
    def predicate_type(self) -> str:
        return str(self.statement.get("predicateType", ""))

    @property
    def predicate(self) -> Any:
        return self.statement.get("predicate")


@dataclass(frozen=True)
class BlobSignature:
    """What `cosign sign-blob` made: a base64 signature (and, keyless, its proof).

    For keyless signing, `certificate` is the Fulcio certificate (PEM) and `rekor_bundle`
    the Rekor bundle (JSON), as cosign's OCI annotations carry them.
    """

    signature: str
    certificate: str | None = None
    rekor_bundle: str | None = None


Signer = str | Path | Keyless
Verifier = str | Path | KeylessPolicy


# --- commands -----------------------------------------------------------------------


def generate_key_pair(
    directory: Path, *, prefix: str = "cosign", env: Mapping[str, str] | None = None
) -> KeyPair:
    """Write `<prefix>.key` (encrypted with $COSIGN_PASSWORD) and `<prefix>.pub`."""
    child = _child_env(env)
    _require_password(child, f"generating a key pair in {directory}")
    directory.mkdir(parents=True, exist_ok=True)
    pair = KeyPair(directory / f"{prefix}.key", directory / f"{prefix}.pub")
    existing = [p for p in (pair.private_key, pair.public_key) if p.exists()]
    if existing:
        raise InputError(f"{existing[0]} already exists; refusing to overwrite a key")
    argv = ["cosign", "generate-key-pair", f"--output-key-prefix={prefix}"]
    _check(run(argv, timeout=60, env=child, cwd=directory, check=False), "generating keys")
    log.debug("wrote cosign key pair %s and %s", pair.private_key, pair.public_key)
    return pair


def public_key(signer: str | Path, out: Path, *, env: Mapping[str, str] | None = None) -> Path:
    """Write the public half of a key-pair signer to `out` (to verify what it signed)."""
    child = _child_env(env)
    _check_signer(signer, child)
    argv = ["cosign", "public-key", f"--key={signer}", f"--outfile={out}"]
    _check(run(argv, timeout=60, env=child, check=False), f"reading the public key of {signer}")
    return out


def sign(
    image: Reference,
    signer: Signer,
    endpoint: Endpoint,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = TIMEOUT,
) -> None:
    """Sign `image` by digest; the signature lands under its `sha256-<hex>.sig` tag.

    Never retried: a sign that timed out may have pushed, and a second one would add
    a second signature.
    """
    argv = sign_argv(image, signer, endpoint, timeout)
    with _call_env(endpoint, env) as child:
        _check_signer(signer, child)
        _check(run(argv, timeout=timeout, env=child, check=False), f"signing {image}", endpoint)
    log.debug("signed %s", image)


def attest(
    image: Reference,
    signer: Signer,
    predicate: Path,
    predicate_type: str,
    endpoint: Endpoint,
    *,
    replace: bool = False,
    env: Mapping[str, str] | None = None,
    timeout: float = TIMEOUT,
) -> None:
    """Attach `predicate` as a signed in-toto attestation of `predicate_type`.

    With `replace`, an earlier attestation of the same predicate type is replaced
    rather than kept beside the new one. Never retried, like `sign`.
    """
    if not predicate.is_file():
        raise InputError(f"{predicate}: predicate file not found")
    argv = attest_argv(image, signer, predicate, predicate_type, endpoint, timeout, replace)
    with _call_env(endpoint, env) as child:
        _check_signer(signer, child)
        done = run(argv, timeout=timeout, env=child, check=False)
        _check(done, f"attesting {image} ({predicate_type})", endpoint)
    log.debug("attested %s with %s", image, predicate_type)


def sign_blob(
    data: bytes,
    signer: Signer,
    *,
    what: str = "a blob",
    env: Mapping[str, str] | None = None,
    timeout: float = TIMEOUT,
) -> BlobSignature:
    """Sign `data` (SHA-256, the key's algorithm); nothing is uploaded for a key.

    Never retried, like `sign`: a keyless signature that timed out may be in Rekor.
    """
    child = _child_env(env)
    _check_signer(signer, child)
    with tempfile.TemporaryDirectory(prefix="basekiln-sign-blob-") as scratch:
        folder = Path(scratch)
        blob = folder / "blob"
        blob.write_bytes(data)
        argv = sign_blob_argv(blob, signer, folder, timeout)
        _check(run(argv, timeout=timeout, env=child, cwd=folder, check=False), f"signing {what}")
        return read_blob_signature(folder, keyless=isinstance(signer, Keyless))


def check_signer(signer: Signer, env: Mapping[str, str] | None = None) -> None:
    """Fail early, before anything is pushed, when the key or its password is plainly missing."""
    _check_signer(signer, _child_env(env))


def verify(
    image: Reference,
    verifier: Verifier,
    endpoint: Endpoint,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = TIMEOUT,
) -> list[dict[str, Any]]:
    """Verify the signature on `image`; return the verified simple-signing payloads."""
    _check_verifier(verifier)
    argv = verify_argv(image, verifier, endpoint, timeout)
    done = _read_only(argv, endpoint, env, timeout, f"verifying the signature of {image}")
    payloads = parse_verify_output(done.stdout)
    log.debug("verified the signature of %s (%d signatures)", image, len(payloads))
    return payloads


def verify_attestation(
    image: Reference,
    verifier: Verifier,
    predicate_type: str,
    endpoint: Endpoint,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = TIMEOUT,
) -> list[Attestation]:
    """Verify the attestations of `predicate_type` on `image` and return them."""
    _check_verifier(verifier)
    argv = verify_attestation_argv(image, verifier, predicate_type, endpoint, timeout)
    what = f"verifying the {predicate_type} attestation of {image}"
    attestations = parse_attestations(_read_only(argv, endpoint, env, timeout, what).stdout)
    log.debug("verified %d %s attestations of %s", len(attestations), predicate_type, image)
    return attestations


def download_attestations(
    image: Reference,
    endpoint: Endpoint,
    *,
    predicate_type: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = TIMEOUT,
) -> list[Attestation]:
    """The attestations stored for `image`, UNVERIFIED: for listing, never for trust.

    An image with no attestations gives an empty list.
    """
    argv = download_attestation_argv(image, endpoint, timeout, predicate_type)
    try:
        done = _read_only(argv, endpoint, env, timeout, f"downloading attestations of {image}")
    except SignatureVerificationError as exc:
        if exc.failure is Failure.NO_ATTESTATION:
            return []
        raise
    return parse_attestations(done.stdout)


# --- argv construction (pure) -------------------------------------------------------


def sign_argv(image: Reference, signer: Signer, endpoint: Endpoint, timeout: float) -> list[str]:
    return [
        "cosign", "sign", *_signer_flags(signer), "--upload=true", "--yes",
        "--registry-referrers-mode=legacy", "--record-creation-timestamp=false",
        *_common_flags(endpoint, timeout), _target(image),
    ]  # fmt: skip


def attest_argv(
    image: Reference,
    signer: Signer,
    predicate: Path,
    predicate_type: str,
    endpoint: Endpoint,
    timeout: float,
    replace: bool = False,
) -> list[str]:
    return [
        "cosign", "attest", *_signer_flags(signer), "--yes",
        f"--predicate={predicate}", f"--type={predicate_type}", f"--replace={_b(replace)}",
        "--new-bundle-format=false", "--record-creation-timestamp=false",
        *_common_flags(endpoint, timeout), _target(image),
    ]  # fmt: skip


def sign_blob_argv(blob: Path, signer: Signer, out: Path, timeout: float) -> list[str]:
    """sign-blob writes into `out`: `signature`, and for keyless `certificate`, `bundle`."""
    argv = [
        "cosign", "sign-blob", *_signer_flags(signer), "--yes", "--b64=true",
        "--new-bundle-format=false", f"--output-signature={out / 'signature'}",
    ]  # fmt: skip
    if isinstance(signer, Keyless):
        argv += [f"--output-certificate={out / 'certificate'}", f"--bundle={out / 'bundle'}"]
    return [*argv, f"--timeout={max(1, int(timeout) - 5)}s", str(blob)]


def verify_argv(
    image: Reference, verifier: Verifier, endpoint: Endpoint, timeout: float
) -> list[str]:
    return [
        "cosign", "verify", *_verifier_flags(verifier), "--output=json",
        "--new-bundle-format=false", "--experimental-oci11=false", "--check-claims=true",
        *_common_flags(endpoint, timeout), _target(image),
    ]  # fmt: skip


def verify_attestation_argv(
    image: Reference, verifier: Verifier, predicate_type: str, endpoint: Endpoint, timeout: float
) -> list[str]:
    return [
        "cosign", "verify-attestation", *_verifier_flags(verifier), f"--type={predicate_type}",
        "--new-bundle-format=false", "--experimental-oci11=false", "--check-claims=true",
        *_common_flags(endpoint, timeout), _target(image),
    ]  # fmt: skip


def download_attestation_argv(
    image: Reference, endpoint: Endpoint, timeout: float, predicate_type: str | None = None
) -> list[str]:
    argv = ["cosign", "download", "attestation"]
    if predicate_type:
        argv.append(f"--predicate-type={predicate_type}")
    return [*argv, *_common_flags(endpoint, timeout), _target(image)]


def _signer_flags(signer: Signer) -> list[str]:
    if not isinstance(signer, Keyless):
        return [f"--key={signer}", "--tlog-upload=false"]
    flags = ["--tlog-upload=true"]
    for flag, value in (
        ("--identity-token", signer.identity_token),
        ("--oidc-issuer", signer.oidc_issuer),
        ("--fulcio-url", signer.fulcio_url),
        ("--rekor-url", signer.rekor_url),
    ):
        if value:
            flags.append(f"{flag}={value}")
    return flags


def _verifier_flags(verifier: Verifier) -> list[str]:
    if not isinstance(verifier, KeylessPolicy):
        return [f"--key={verifier}", "--insecure-ignore-tlog=true", "--offline=true"]
    flags = [
        f"--certificate-identity={verifier.certificate_identity}",
        f"--certificate-oidc-issuer={verifier.certificate_oidc_issuer}",
    ]
    if verifier.rekor_url:
        flags.append(f"--rekor-url={verifier.rekor_url}")
    return flags


def _common_flags(endpoint: Endpoint, timeout: float) -> list[str]:
    """No tag prefix, plain HTTP only for loopback endpoints, and cosign's own timeout."""
    flags = ["--attachment-tag-prefix="]
    if endpoint.plain_http:
        flags += ["--allow-http-registry=true", "--allow-insecure-registry=true"]
    return [*flags, f"--timeout={max(1, int(timeout) - 5)}s"]


def _target(image: Reference) -> str:
    if image.digest is None:
        raise InputError(f"{image}: cosign is only ever run on a digest, never a tag")
    return f"{image.name}@{image.digest}"


def _b(value: bool) -> str:
    return "true" if value else "false"


# --- output parsing and failure classification (pure) -------------------------------


def parse_verify_output(stdout: bytes) -> list[dict[str, Any]]:
    """`cosign verify --output=json` prints one JSON array of simple-signing payloads."""
    payloads: list[dict[str, Any]] = []
    for line in stdout.decode("utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line.startswith(("[", "{")):
            continue
        parsed = json.loads(line)
        payloads += parsed if isinstance(parsed, list) else [parsed]
    return payloads


def read_blob_signature(folder: Path, *, keyless: bool) -> BlobSignature:
    """The files `sign_blob_argv` asked sign-blob to write, read back."""
    signature = (folder / "signature").read_text().strip()
    if not signature:
        raise CosignError("cosign sign-blob wrote an empty signature")
    if not keyless:
        return BlobSignature(signature)
    certificate = (folder / "certificate").read_text().strip()
    if not certificate.startswith("-----BEGIN"):  # sign-blob base64-encodes it with --b64
        certificate = base64.b64decode(certificate).decode("ascii")
    bundle = json.loads((folder / "bundle").read_text()).get("rekorBundle")
    return BlobSignature(signature, certificate, json.dumps(bundle) if bundle else None)


def parse_attestations(stdout: bytes) -> list[Attestation]:
    """One DSSE envelope per line, as verify-attestation and download print them."""
    found = []
    for line in stdout.decode("utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        envelope = json.loads(line)
        payload = envelope.get("payload") or envelope.get("dsseEnvelope", {}).get("payload", "")
        statement = json.loads(base64.b64decode(payload)) if payload else {}
        found.append(Attestation(envelope, statement))
    return found


def _patterns(*pairs: tuple[Failure, str]) -> tuple[tuple[Failure, re.Pattern[str]], ...]:
    return tuple((f, re.compile(p, re.IGNORECASE | re.MULTILINE)) for f, p in pairs)


# What cosign says about keys and verdicts; checked before the exit code.
_KEY_AND_VERDICT = _patterns(
    (Failure.KEY_PASSWORD, r"decryption failed"),
    (Failure.PASSWORD_UNSET, r"inappropriate ioctl for device|enter password for private key"),
    (Failure.KEY_MISSING, r"(reading key|loading public key|loading URL)\b.*"
     r"(no such file or directory|env var \$\S+ not found)"),
    (Failure.WRONG_PREDICATE_TYPE, r"none of the attestations matched the predicate type"),
    (Failure.NO_ATTESTATION, r"no matching attestations|found no attestations"),
    (Failure.NO_MATCHING_SIGNATURE, r"no matching signatures"),
    (Failure.NO_SIGNATURE, r"no signatures found"),
)  # fmt: skip
# What the registry connection says; checked after the exit code.
_TRANSPORT = _patterns(
    (Failure.REGISTRY_AUTH, r"UNAUTHORIZED|401 Unauthorized|\bDENIED\b|authentication required"),
    # A loopback registry whose certificate cosign does not trust: cosign falls back to
    # plain HTTP, and the TLS port answers 400.
    (Failure.REGISTRY_TLS, r"x509: |tls: |client sent an HTTP request to an HTTPS server"),
    (Failure.REGISTRY_UNAVAILABLE, r"\b(429 Too Many Requests|50[0-4] [A-Z][a-z]+)"),
    (Failure.REGISTRY_UNREACHABLE, r"connection refused|connection reset|no such host|"
     r"i/o timeout|context deadline exceeded|unexpected EOF"),
)  # fmt: skip
# cosign's documented verification exit codes (10 no signature, 11 no such tag, 12 none
# matched the key).
_EXIT_CODES = {
    10: Failure.NO_SIGNATURE,
    11: Failure.NO_SIGNATURE,
    12: Failure.NO_MATCHING_SIGNATURE,
}


def classify(returncode: int, stderr: str) -> Failure:
    """Why cosign failed: key and verdict messages, then exit code, then the transport."""
    for failure, pattern in _KEY_AND_VERDICT:
        if pattern.search(stderr):
            return failure
    if returncode in _EXIT_CODES:
        return _EXIT_CODES[returncode]
    for failure, pattern in _TRANSPORT:
        if pattern.search(stderr):
            return failure
    return Failure.UNKNOWN


def failure_error(failure: Failure, what: str, endpoint: Endpoint | None, detail: str) -> Exception:
    """The basekiln error, with a message for a person, for a classified failure."""
    host = endpoint.host if endpoint else "the registry"
    match failure:
        case Failure.KEY_MISSING:
            return SigningKeyError(f"{what}: the key is missing ({detail})", failure)
        case Failure.KEY_PASSWORD:
            return SigningKeyError(
                f"{what}: wrong password for the private key; set {PASSWORD_ENV} to it", failure
            )
        case Failure.PASSWORD_UNSET:
            return SigningKeyError(f"{what}: the key is encrypted; set {PASSWORD_ENV}", failure)
        case Failure.NO_SIGNATURE:
            return SignatureVerificationError(
                f"{what}: no signature found on {host}; this digest is not signed", failure
            )
        case Failure.NO_MATCHING_SIGNATURE:
            return SignatureVerificationError(
                f"{what}: no signature verifies with this key ({detail})", failure
            )
        case Failure.NO_ATTESTATION:
            return SignatureVerificationError(
                f"{what}: no attestation verifies with this key ({detail})", failure
            )
        case Failure.WRONG_PREDICATE_TYPE:
            return SignatureVerificationError(f"{what}: {detail}", failure)
        case Failure.REGISTRY_AUTH:
            return RegistryAuthError(
                f"{what}: registry {host} refused cosign ({detail}); the login is missing or "
                f"wrong: set {USERNAME_ENV} and {PASSWORD_ENV_REGISTRY}"
            )
        case Failure.REGISTRY_TLS:
            return RegistryUnreachableError(
                f"{what}: TLS to {host} failed ({detail}); pass the registry's CA bundle"
            )
        case Failure.REGISTRY_UNREACHABLE | Failure.REGISTRY_UNAVAILABLE:
            return RegistryUnreachableError(f"{what}: cannot use registry {host} ({detail})")
        case Failure.UNKNOWN:
            return CosignError(f"{what}: cosign failed: {detail}")


def _last_error(stderr: str) -> str:
    """cosign's own one-line reason: the last `Error:` line, else the last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("Error: "):
            return line.removeprefix("Error: ")
    return lines[-1] if lines else "no output"


# --- plumbing -----------------------------------------------------------------------


def _check(done: Completed, what: str, endpoint: Endpoint | None = None) -> Completed:
    if done.returncode == 0:
        return done
    failure = classify(done.returncode, done.stderr)
    log.debug("cosign exit %d (%s): %s", done.returncode, failure.value, done.stderr.strip())
    raise failure_error(failure, what, endpoint, _last_error(done.stderr))


def _read_only(
    argv: list[str], endpoint: Endpoint, env: Mapping[str, str] | None, timeout: float, what: str
) -> Completed:
    """Run a command that only reads, retrying while the registry is unreachable."""

    def attempt() -> Completed:
        with _call_env(endpoint, env) as child:
            done = run(argv, timeout=timeout, env=child, check=False)
        return _check(done, what, endpoint)

    retryer = Retrying(
        retry=retry_if_exception(_is_transient),
        stop=stop_after_attempt(READ_ATTEMPTS),
        wait=wait_exponential(multiplier=0.5, max=4.0),
        before_sleep=lambda state: log.warning(
            "%s: retrying (attempt %d failed)", what, state.attempt_number
        ),
        reraise=True,
    )
    return retryer(attempt)


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, RegistryUnreachableError) and "TLS" not in str(exc)


def _child_env(env: Mapping[str, str] | None) -> dict[str, str]:
    child = dict(os.environ if env is None else env)
    for name in _UNPINNED_ENV:
        child.pop(name, None)
    return child


@contextmanager
def _call_env(endpoint: Endpoint, env: Mapping[str, str] | None) -> Iterator[dict[str, str]]:
    """The child's environment, with a private DOCKER_CONFIG and CA bundle if needed."""
    child = _child_env(env)
    with tempfile.TemporaryDirectory(prefix="basekiln-cosign-") as scratch:
        folder = Path(scratch)
        child["DOCKER_CONFIG"] = str(folder)  # never the user's ~/.docker
        if endpoint.credentials is not None:
            _write_docker_config(folder, endpoint)
        if endpoint.ca_bundle is not None:
            child["SSL_CERT_FILE"] = str(_ca_bundle(folder, endpoint.ca_bundle))
        yield child


def _write_docker_config(folder: Path, endpoint: Endpoint) -> None:
    assert endpoint.credentials is not None
    pair = f"{endpoint.credentials.username}:{endpoint.credentials.password}".encode()
    config = {"auths": {endpoint.host: {"auth": base64.b64encode(pair).decode("ascii")}}}
    path = folder / "config.json"
    path.touch(mode=0o600)
    path.write_text(json.dumps(config))


def _ca_bundle(folder: Path, ca: Path) -> Path:
    """System roots plus `ca`, so a private registry CA does not hide the public ones."""
    if not ca.is_file():
        raise InputError(f"{ca}: CA bundle not found")
    parts = []
    for candidate in (ssl.get_default_verify_paths().cafile, *_SYSTEM_ROOTS):
        if candidate and Path(candidate).is_file():
            parts.append(Path(candidate).read_text())
            break
    parts.append(ca.read_text())
    bundle = folder / "ca-bundle.pem"
    bundle.write_text("\n".join(parts))
    return bundle


def _require_password(env: Mapping[str, str], what: str) -> None:
    if PASSWORD_ENV not in env:
        raise SigningKeyError(
            f"{what}: set {PASSWORD_ENV} to the key's password (it may be empty); cosign "
            "would otherwise stop to prompt for it",
            Failure.PASSWORD_UNSET,
        )


def _check_signer(signer: Signer, env: Mapping[str, str]) -> None:
    """Fail before running cosign when a key file or key variable is plainly missing."""
    if isinstance(signer, Keyless):
        return
    text = str(signer)
    if text.startswith(_KMS_SCHEMES):
        return
    if text.startswith("env://"):
        name = text.removeprefix("env://")
        if name not in env:
            raise SigningKeyError(f"signing key variable ${name} is not set", Failure.KEY_MISSING)
    elif not Path(text).is_file():
        raise SigningKeyError(f"signing key {text} does not exist", Failure.KEY_MISSING)
    _require_password(env, f"signing with {text}")


def _check_verifier(verifier: Verifier) -> None:
    if isinstance(verifier, KeylessPolicy):
        return
    text = str(verifier)
    if not text.startswith((*_KMS_SCHEMES, "env://")) and not Path(text).is_file():
        raise SigningKeyError(f"public key {text} does not exist", Failure.KEY_MISSING)
