"""Publish's decisions without a registry: tags, endpoints, what counts as published."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from basekiln import _cosign, publish
from basekiln._cosign import Attestation, Failure, SignatureVerificationError
from basekiln.attest import StatementError, in_toto_statement
from basekiln.config import Config, FileConfig
from basekiln.errors import ExitCode, InputError
from basekiln.publish import REQUIRED_ATTESTATIONS, Signing
from basekiln.registry import Endpoint, ManifestInfo, Reference, parse_reference
from basekiln.results import BuildResult

DIGEST = "sha256:" + "ab" * 32
TARGET = parse_reference(f"127.0.0.1:5999/test/img@{DIGEST}")
SIGNING = Signing(signer="cosign.key", verifier="cosign.pub")


def test_release_tags_are_dated_and_latest() -> None:
    tags = publish.release_tags("static", DIGEST, datetime(2026, 3, 1, tzinfo=UTC))
    assert tags == ("static-20260301-abababababab", "static-latest")


@pytest.mark.parametrize("text", ["127.0.0.1:5000/a:tag", f"127.0.0.1:5000/a@{DIGEST}"])
def test_repository_reference_refuses_tags_and_digests(text: str) -> None:
    with pytest.raises(InputError, match="without a tag or digest"):
        publish.repository_reference(text)


def test_plain_http_only_for_loopback_without_a_ca(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BASEKILN_REGISTRY_USERNAME", raising=False)
    monkeypatch.delenv("BASEKILN_REGISTRY_PASSWORD", raising=False)
    loopback = publish.repository_reference("127.0.0.1:5000/a")
    remote = publish.repository_reference("registry.example/a")

    assert publish.registry_endpoint(loopback).plain_http
    assert not publish.registry_endpoint(loopback, Path("/ca.pem")).plain_http
    assert not publish.registry_endpoint(remote).plain_http


def _result(tmp_path: Path) -> BuildResult:
    return BuildResult(
        recipe="static", recipe_path="recipes/static.yaml", recipe_sha256="0" * 64,
        lockfile_path="lockfiles/static.lock.json", lockfile_sha256="0" * 64,
        platform="linux/amd64", digest=DIGEST, reproducible=True, builds=(),
        oci_layout=str(tmp_path / "oci"), buildkit_version="v0", source_date_epoch=0,
        started_on="", finished_on="", seconds=0.0,
    )  # fmt: skip


def test_a_missing_key_fails_before_the_registry_is_contacted(tmp_path: Path) -> None:
    signing = Signing(signer=str(tmp_path / "absent.key"), verifier="cosign.pub")
    config = Config(root=tmp_path, file=FileConfig())

    # registry.invalid never resolves: reaching it would fail differently.
    with pytest.raises(_cosign.SigningKeyError, match="does not exist") as caught:
        publish.publish(config, _result(tmp_path), "registry.invalid/test/img", signing)
    assert caught.value.exit_code == ExitCode.INPUT


def _attestation(statement: dict[str, Any]) -> Attestation:
    return Attestation({}, statement)


def _verifying(monkeypatch: pytest.MonkeyPatch, statements: dict[str, dict[str, Any]]) -> None:
    """cosign's verdicts: the signature verifies; each type returns its statement."""
    cosign_to_predicate = {v: k for k, v in REQUIRED_ATTESTATIONS.items()}

    def verify_attestation(target: Reference, verifier: Any, kind: str, *a: Any) -> Any:
        statement = statements.get(cosign_to_predicate[kind])
        if statement is None:
            raise SignatureVerificationError("no attestation", Failure.NO_ATTESTATION)
        return [_attestation(statement)]

    monkeypatch.setattr(_cosign, "verify", lambda *a, **k: [{}])
    monkeypatch.setattr(_cosign, "verify_attestation", verify_attestation)


def _v1(predicate_type: str) -> dict[str, Any]:
    return in_toto_statement(TARGET.name, DIGEST, predicate_type, {})


ENDPOINT = Endpoint("127.0.0.1:5999", plain_http=True)


def test_only_v1_statements_about_the_digest_count(monkeypatch: pytest.MonkeyPatch) -> None:
    statements = {t: _v1(t) for t in REQUIRED_ATTESTATIONS}
    _verifying(monkeypatch, statements)
    assert publish.verify_published(TARGET, SIGNING, ENDPOINT) == tuple(REQUIRED_ATTESTATIONS)

    slsa = "https://slsa.dev/provenance/v1"
    statements[slsa] = {**statements[slsa], "_type": "https://in-toto.io/Statement/v0.1"}
    with pytest.raises(StatementError, match=r"_type is 'https://in-toto.io/Statement/v0\.1'"):
        publish.verify_published(TARGET, SIGNING, ENDPOINT)


class Head:
    def __init__(self, present: bool) -> None:
        self.present = present

    def head_manifest(self, ref: Reference) -> ManifestInfo | None:
        return ManifestInfo(DIGEST, "", 1) if self.present else None


def test_what_counts_as_already_published(monkeypatch: pytest.MonkeyPatch) -> None:
    def state(present: bool = True) -> Any:
        return publish._already_published(TARGET, SIGNING, ENDPOINT, Head(present))

    assert state(present=False) == publish._Published()

    _verifying(monkeypatch, {t: _v1(t) for t in REQUIRED_ATTESTATIONS})
    assert state() == publish._Published(present=True, signed=True, attested=True)

    _verifying(monkeypatch, {t: _v1(t) for t in list(REQUIRED_ATTESTATIONS)[:2]})
    assert state() == publish._Published(present=True, signed=True, attested=False)

    def unsigned(*a: Any, **k: Any) -> Any:
        raise SignatureVerificationError("no signature", Failure.NO_SIGNATURE)

    monkeypatch.setattr(_cosign, "verify", unsigned)
    assert state() == publish._Published(present=True)


def test_stage_times_add_up() -> None:
    seconds: dict[str, float] = {}
    for _ in range(2):
        with publish._timed(seconds, "signing"):
            pass
    assert set(seconds) == {"signing"} and seconds["signing"] >= 0
