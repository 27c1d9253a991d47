"""Publish against real docker-registry processes with real cosign, syft and stock verify.

The image is a small OCI layout with Debian dpkg entries for the packages of a
hand-written lockfile, and a BuildResult pointing at it, in a throwaway project; no
BuildKit is involved. Every published image is then checked by a separately invoked,
stock `cosign verify` and `cosign verify-attestation`, as a consumer would.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from basekiln import _cosign
from basekiln._registry_server import LocalRegistry
from basekiln._run import which
from basekiln.attest import attestation_tag
from basekiln.config import Config, load_config
from basekiln.lockfile import (
    LockedPackage,
    LockedRelease,
    Lockfile,
    RecipeRef,
    file_sha256,
    read_lockfile,
    write_lockfile,
)
from basekiln.oci import read_image
from basekiln.publish import PublishResult, Signing, publish, signing_for_key
from basekiln.registry import (
    Credentials,
    Reference,
    RegistryAuthError,
    RegistryClient,
    RegistryStatusError,
    RegistryUnreachableError,
    parse_reference,
)
from basekiln.results import BuildResult, SandboxBuild
from basekiln.sbom import SbomMismatchError
from basekiln.verify import verify_image
from tests.fixtures.faultproxy import FaultProxy
from tests.fixtures.images import FakeDeb, write_dpkg_image
from tests.fixtures.registry import (
    KEY_PASSWORD,
    client,
    cosign_keys,
    fault_proxy,
    plain_registry,
    repo_ref,
    tls_registry,
)

pytestmark = pytest.mark.slow
__all__ = ["cosign_keys", "fault_proxy", "plain_registry", "tls_registry"]

SLSA = "https://slsa.dev/provenance/v1"
SPDX = "https://spdx.dev/Document"
REPRODUCIBLE = "https://basekiln.dev/attestations/reproducible/v1"
STATEMENT_V1 = "https://in-toto.io/Statement/v1"
RECIPE = "fake"
EPOCH = 1_700_000_000
DEBS = [
    FakeDeb("libfake1", "1:2.3-4", "amd64", source="fake", source_version="2.3-4",
            files={"usr/lib/x86_64-linux-gnu/libfake.so.1": b"\x7fELF not really\n"}),
    FakeDeb("fake-data", "2024a-0+deb12u1", "all",
            files={"usr/share/fake-data/zone.tab": b"UTC\n"}),
]  # fmt: skip
INTRUDER = FakeDeb("netcat-fake", "1.219-1", "amd64", files={"usr/bin/nc.fake": b"#!/bin/sh\n"})
RECIPE_TEXT = f"name: {RECIPE}\npackages:\n  - libfake1\n  - fake-data\n"


# --- a publishable project ------------------------------------------------------------


@dataclass(frozen=True)
class Publishable:
    config: Config
    result: BuildResult
    intruded: BuildResult  # the same inputs, but an unlocked package in the image


def _locked(deb: FakeDeb) -> LockedPackage:
    return LockedPackage(
        name=deb.name,
        version=deb.version,
        architecture=deb.architecture,
        platform="linux/amd64",
        sha256=hashlib.sha256(deb.name.encode()).hexdigest(),
        size=1000,
        filename=f"pool/main/f/{deb.name}/{deb.name}_{deb.version}_{deb.architecture}.deb",
        source=deb.source or deb.name,
        source_version=deb.source_version or deb.version,
        archive="debian",
        suite="bookworm",
        depends_on=[],
        dependencies_followed=True,
    )


def _build_result(root: Path, layout: Path, digest: str) -> BuildResult:
    recipe, lock = root / "recipes" / f"{RECIPE}.yaml", root / "lockfiles" / f"{RECIPE}.lock.json"
    builds = tuple(
        SandboxBuild(f"sandbox-{i}", digest, {"umask": f"00{i}2"}, str(layout), 1.0) for i in (1, 2)
    )
    return BuildResult(
        recipe=RECIPE,
        recipe_path=f"recipes/{RECIPE}.yaml",
        recipe_sha256=file_sha256(recipe),
        lockfile_path=f"lockfiles/{RECIPE}.lock.json",
        lockfile_sha256=file_sha256(lock),
        platform="linux/amd64",
        digest=digest,
        reproducible=True,
        builds=builds,
        oci_layout=str(layout),
        buildkit_version="v0.34.2",
        source_date_epoch=EPOCH,
        started_on="2026-01-01T00:00:00+00:00",
        finished_on="2026-01-01T00:00:05+00:00",
        seconds=5.0,
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Publishable:
    root = tmp_path_factory.mktemp("publish-project")
    (root / "basekiln.toml").write_text('[cache]\ndir = ".cache/basekiln"\n')
    (root / "recipes").mkdir()
    recipe = root / "recipes" / f"{RECIPE}.yaml"
    recipe.write_text(RECIPE_TEXT)
    lock = Lockfile(
        recipe=RecipeRef(name=RECIPE, path=f"recipes/{RECIPE}.yaml", sha256=file_sha256(recipe)),
        parent=None,
        platforms=["linux/amd64"],
        source_date_epoch=EPOCH,
        mirrors={"debian": ["http://deb.debian.org/debian"]},
        releases=[
            LockedRelease(archive="debian", suite="bookworm", sha256="1" * 64, date="2026-01-01",
                          url="http://deb.debian.org/debian/dists/bookworm/InRelease")
        ],
        packages=[_locked(deb) for deb in DEBS],
    )  # fmt: skip
    path = root / "lockfiles" / f"{RECIPE}.lock.json"
    write_lockfile(path, lock)
    read_lockfile(path)  # as publish will

    clean = write_dpkg_image(root / "out" / RECIPE / "oci", DEBS)
    dirty = write_dpkg_image(root / "intruded" / "oci", [*DEBS, INTRUDER])
    return Publishable(
        load_config(root),
        _build_result(root, root / "out" / RECIPE / "oci", clean.digest),
        _build_result(root, root / "intruded" / "oci", dirty.digest),
    )


@pytest.fixture
def signing(cosign_keys: _cosign.KeyPair, monkeypatch: pytest.MonkeyPatch) -> Signing:
    monkeypatch.setenv(_cosign.PASSWORD_ENV, KEY_PASSWORD)
    for name in ("BASEKILN_REGISTRY_USERNAME", "BASEKILN_REGISTRY_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    return Signing(signer=str(cosign_keys.private_key), verifier=cosign_keys.public_key)


# --- looking at the registry as a consumer would ----------------------------------------


def stock_cosign(*args: str) -> subprocess.CompletedProcess[str]:
    """cosign 2.5.0 itself, with the flags a consumer of a loopback registry passes."""
    program = which("cosign")
    assert program is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COSIGN_", "DOCKER_"))}
    return subprocess.run(
        [program, *args, "--insecure-ignore-tlog=true", "--allow-http-registry=true",
         "--allow-insecure-registry=true"],
        capture_output=True, text=True, timeout=120, check=False, env=env,
    )  # fmt: skip


def stock_syft_debs(image: str) -> set[tuple[str, str]]:
    """The (name, version) of each Debian package stock syft finds in a pushed image."""
    syft = which("syft")
    assert syft is not None
    scanned = subprocess.run(
        [syft, "scan", f"registry:{image}", "-o", "syft-json", "-q"],
        capture_output=True, text=True, timeout=300, check=True,
        env={**os.environ, "SYFT_REGISTRY_INSECURE_USE_HTTP": "true",
             "SYFT_CHECK_FOR_APP_UPDATE": "false"},
    )  # fmt: skip
    artifacts = json.loads(scanned.stdout)["artifacts"]
    return {(a["name"], a["version"]) for a in artifacts if a["type"] == "deb"}


def statements_of(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    envelopes = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return [json.loads(base64.b64decode(e["payload"])) for e in envelopes]


def manifest_digests(info: LocalRegistry, image: Reference) -> dict[str, str]:
    """The digest each tag of `image`'s repository points at."""
    with client(info.endpoint()) as registry:
        found = {}
        for tag in registry.list_tags(image):
            head = registry.head_manifest(image.by_tag(tag))
            assert head is not None
            found[tag] = head.digest
        return found


def basekiln_verify(
    project: Publishable, image: Reference, signing: Signing
) -> subprocess.CompletedProcess[str]:
    """`basekiln verify IMAGE --key PUB`, run as a user would from the project."""
    env = {k: v for k, v in os.environ.items() if k != "BASEKILN_CONFIG"}
    return subprocess.run(
        [str(Path(sys.executable).parent / "basekiln"), "verify", str(image),
         f"--key={signing.verifier}"],
        cwd=project.config.root, capture_output=True, text=True, timeout=300, env=env,
        check=False,
    )  # fmt: skip


def _publish(project: Publishable, repo: Reference, signing: Signing, **kw: Any) -> PublishResult:
    return publish(project.config, kw.pop("result", project.result), repo.name, signing, **kw)


# --- the happy path -----------------------------------------------------------------------


def test_publish_verifies_with_stock_cosign_and_is_reused(
    project: Publishable, plain_registry: LocalRegistry, signing: Signing
) -> None:
    repo = repo_ref(plain_registry, RECIPE)

    published = _publish(project, repo, signing)

    image = repo.by_digest(project.result.digest)
    stem = project.result.digest.replace(":", "-")
    assert published.image == str(image) and not published.reused
    assert published.attestations == (SPDX, SLSA, REPRODUCIBLE)
    assert {"sbom", "provenance", "signing", "push", "verify"} <= set(published.seconds)
    tags = manifest_digests(plain_registry, image)
    assert sorted(tags) == sorted([*published.tags, f"{stem}.att", f"{stem}.sig"])
    assert all(tags[t] == project.result.digest for t in published.tags)
    assert published.tags[1] == f"{RECIPE}-latest"

    public = str(signing.verifier)
    assert stock_cosign("verify", f"--key={public}", str(image)).returncode == 0
    evidence = Path(str(published.evidence))
    for cosign_type, predicate_type, file in (
        ("slsaprovenance1", SLSA, "provenance"),
        ("spdxjson", SPDX, "sbom"),
        (REPRODUCIBLE, REPRODUCIBLE, "reproducibility"),
    ):
        done = stock_cosign("verify-attestation", f"--key={public}", f"--type={cosign_type}",
                            str(image))  # fmt: skip
        assert done.returncode == 0, done.stderr
        [statement] = statements_of(done)
        assert statement["_type"] == STATEMENT_V1
        assert statement["predicateType"] == predicate_type
        assert statement["subject"] == [
            {"name": repo.name, "digest": {"sha256": project.result.digest[7:]}}
        ]
        assert statement == json.loads((evidence / f"{file}.statement.json").read_bytes())
    sbom = json.loads((evidence / "sbom.spdx.json").read_bytes())
    assert statements_of(stock_cosign("verify-attestation", f"--key={public}", "--type=spdxjson",
                                      str(image)))[0]["predicate"] == sbom  # fmt: skip

    downloaded = _cosign.download_attestations(image, plain_registry.endpoint())
    assert sorted(a.predicate_type for a in downloaded) == sorted([SPDX, SLSA, REPRODUCIBLE])

    report = verify_image(project.config, str(image), signing.verifier)
    assert report.ok, report.to_json()
    assert [c.name for c in report.checks][-1] == "provenance matches this repository"
    done = basekiln_verify(project, image, signing)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAILED" not in done.stdout

    again = _publish(project, repo, signing)

    assert again.reused and again.evidence is None and again.tags == published.tags
    assert manifest_digests(plain_registry, image) == tags, "nothing re-pushed or re-signed"


def test_the_att_manifest_is_laid_out_as_cosign_lays_it_out(
    project: Publishable, plain_registry: LocalRegistry, signing: Signing
) -> None:
    repo = repo_ref(plain_registry, RECIPE)
    _publish(project, repo, signing)

    image = repo.by_digest(project.result.digest)
    with client(plain_registry.endpoint()) as registry:
        manifest = registry.get_manifest(image.by_tag(attestation_tag(project.result.digest)))
    body = manifest.json()
    assert manifest.media_type == body["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert [layer["mediaType"] for layer in body["layers"]] == [
        "application/vnd.dsse.envelope.v1+json"
    ] * 3
    assert [layer["annotations"] for layer in body["layers"]] == [
        {"dev.cosignproject.cosign/signature": "", "predicateType": t}
        for t in (SPDX, SLSA, REPRODUCIBLE)
    ]


def test_a_cosign_v01_attestation_is_replaced_without_signing_again(
    project: Publishable, plain_registry: LocalRegistry, signing: Signing, tmp_path: Path
) -> None:
    repo = repo_ref(plain_registry, RECIPE)
    endpoint = plain_registry.endpoint()
    with client(endpoint) as registry:
        image = registry.push_image(read_image(Path(project.result.oci_layout)), repo).reference
    _cosign.sign(image, signing.signer, endpoint)
    predicate = tmp_path / "predicate.json"
    predicate.write_text('{"buildDefinition": {}, "runDetails": {}}')
    _cosign.attest(image, signing.signer, predicate, "slsaprovenance1", endpoint)
    sig_tag = f"{str(image.digest).replace(':', '-')}.sig"
    signature = manifest_digests(plain_registry, image)[sig_tag]

    published = _publish(project, repo, signing)

    assert not published.reused
    tags = manifest_digests(plain_registry, image)
    assert tags[sig_tag] == signature
    done = stock_cosign("verify-attestation", f"--key={signing.verifier}",
                        "--type=slsaprovenance1", str(image))  # fmt: skip
    assert [s["_type"] for s in statements_of(done)] == [STATEMENT_V1]


# --- keys -------------------------------------------------------------------------------


def _untouched(info: LocalRegistry, repo: Reference) -> None:
    with client(info.endpoint()) as registry:
        assert registry.list_tags(repo) == []


def test_a_missing_key_fails_before_anything_is_pushed(
    project: Publishable, plain_registry: LocalRegistry, signing: Signing, tmp_path: Path
) -> None:
    repo = repo_ref(plain_registry, RECIPE)
    absent = replace(signing, signer=str(tmp_path / "absent.key"))

    with pytest.raises(_cosign.SigningKeyError, match=r"absent\.key does not exist") as caught:
        _publish(project, repo, absent)
    assert caught.value.exit_code == 2
    with pytest.raises(_cosign.SigningKeyError, match="does not exist"):
        signing_for_key(str(tmp_path / "absent.key"), tmp_path)
    _untouched(plain_registry, repo)


def test_a_wrong_key_password_fails_before_anything_is_pushed(
    project: Publishable,
    plain_registry: LocalRegistry,
    signing: Signing,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = repo_ref(plain_registry, RECIPE)
    monkeypatch.setenv(_cosign.PASSWORD_ENV, "not the password")

    with pytest.raises(_cosign.SigningKeyError, match="wrong password") as caught:
        _publish(project, repo, signing)
    assert caught.value.exit_code == 2
    assert "COSIGN_PASSWORD" in caught.value.message
    _untouched(plain_registry, repo)


# --- the registry failing -------------------------------------------------------------------


def test_an_unreachable_registry(project: Publishable, signing: Signing) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{sock.getsockname()[1]}"
        repo = parse_reference(f"{host}/test/{RECIPE}")
        with pytest.raises(RegistryUnreachableError, match=f"cannot reach registry http://{host}"):
            _publish(project, repo, signing)


def test_a_registry_answering_503_for_a_while(
    project: Publishable,
    plain_registry: LocalRegistry,
    fault_proxy: FaultProxy,
    signing: Signing,
) -> None:
    repo = repo_ref(fault_proxy.host, RECIPE)
    fault_proxy.fail(times=3, match=lambda method, path: method == "POST" and "/blobs/" in path)

    published = _publish(project, repo, signing)

    assert fault_proxy.count(503) == 3
    direct = parse_reference(f"{plain_registry.host}/{repo.repository}@{project.result.digest}")
    assert set(published.tags) <= set(manifest_digests(plain_registry, direct))


def test_a_registry_answering_503_for_good(
    project: Publishable,
    plain_registry: LocalRegistry,
    fault_proxy: FaultProxy,
    signing: Signing,
) -> None:
    repo = repo_ref(fault_proxy.host, RECIPE)
    fault_proxy.fail(times=None)

    with pytest.raises(RegistryStatusError, match=r"HTTP 503.*gave up after 5 attempts"):
        _publish(project, repo, signing)
    _untouched(plain_registry, parse_reference(f"{plain_registry.host}/{repo.repository}"))


def test_no_tag_when_tagging_fails_for_good(
    project: Publishable,
    plain_registry: LocalRegistry,
    fault_proxy: FaultProxy,
    signing: Signing,
) -> None:
    repo = repo_ref(fault_proxy.host, RECIPE)
    fault_proxy.fail(times=None, match=lambda method, path: f"/manifests/{RECIPE}-" in path)

    with pytest.raises(RegistryStatusError, match="gave up"):
        _publish(project, repo, signing)

    direct = parse_reference(f"{plain_registry.host}/{repo.repository}@{project.result.digest}")
    stem = project.result.digest.replace(":", "-")
    assert sorted(manifest_digests(plain_registry, direct)) == [f"{stem}.att", f"{stem}.sig"]


# --- tampering and cross-checks ----------------------------------------------------------


def _tamper(info: LocalRegistry, image: Reference, predicate_type: str) -> None:
    """Change the Statement inside one stored envelope, keeping its signature."""
    assert image.digest is not None
    with client(info.endpoint()) as registry:
        tag = image.by_tag(attestation_tag(image.digest))
        manifest = registry.get_manifest(tag)
        body = manifest.json()
        [index] = [i for i, layer in enumerate(body["layers"])
                   if layer["annotations"]["predicateType"] == predicate_type]  # fmt: skip
        layer = body["layers"][index]
        spool = io.BytesIO()
        registry.fetch_blob(image.repository, layer["digest"], spool)

        envelope = json.loads(spool.getvalue())
        statement = json.loads(base64.b64decode(envelope["payload"]))
        statement["predicate"]["buildDefinition"]["buildType"] = "https://evil.invalid/build"
        envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
        data = json.dumps(envelope).encode()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        registry.upload_blob(image.repository, digest, io.BytesIO(data))
        body["layers"][index] = {**layer, "digest": digest, "size": len(data)}
        registry.put_manifest(tag, json.dumps(body).encode(), manifest.media_type)


def test_a_tampered_attestation_fails_verify_with_exit_4_naming_it(
    project: Publishable, plain_registry: LocalRegistry, signing: Signing
) -> None:
    repo = repo_ref(plain_registry, RECIPE)
    _publish(project, repo, signing)
    image = repo.by_digest(project.result.digest)

    _tamper(plain_registry, image, SLSA)

    report = verify_image(project.config, str(image), signing.verifier)
    failed = [c.name for c in report.checks if not c.passed]
    assert failed == [f"attestation {SLSA}"]
    done = basekiln_verify(project, image, signing)
    assert done.returncode == 4, done.stderr
    assert f"FAILED attestation {SLSA}" in done.stdout
    assert f"attestation {SLSA}" in done.stderr

    repaired = _publish(project, repo, signing)
    assert not repaired.reused
    assert verify_image(project.config, str(image), signing.verifier).ok


def test_an_unlocked_package_fails_publish_before_anything_is_pushed(
    project: Publishable, plain_registry: LocalRegistry, signing: Signing
) -> None:
    repo = repo_ref(plain_registry, RECIPE)

    with pytest.raises(SbomMismatchError, match=r"extra: netcat-fake 1\.219-1"):
        _publish(project, repo, signing, result=project.intruded)
    _untouched(plain_registry, repo)


# --- TLS and logins ---------------------------------------------------------------------------


def test_tls_registry_with_basic_auth(
    project: Publishable,
    tls_registry: LocalRegistry,
    signing: Signing,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert tls_registry.credentials is not None and tls_registry.ca_path is not None
    repo = repo_ref(tls_registry, RECIPE)
    login = tls_registry.credentials
    monkeypatch.setenv("BASEKILN_REGISTRY_USERNAME", login.username)
    monkeypatch.setenv("BASEKILN_REGISTRY_PASSWORD", "wrong")

    with pytest.raises(RegistryAuthError, match="refused the login of user 'basekiln'") as caught:
        _publish(project, repo, signing, ca_bundle=tls_registry.ca_path)
    assert caught.value.exit_code == 2

    monkeypatch.setenv("BASEKILN_REGISTRY_PASSWORD", login.password)
    published = _publish(project, repo, signing, ca_bundle=tls_registry.ca_path)

    image = repo.by_digest(project.result.digest)
    report = verify_image(
        project.config, str(image), signing.verifier, ca_bundle=tls_registry.ca_path
    )
    assert report.ok, report.to_json()
    with RegistryClient(tls_registry.endpoint(Credentials(login.username, login.password))) as c:
        assert set(published.tags) <= set(c.list_tags(image))
