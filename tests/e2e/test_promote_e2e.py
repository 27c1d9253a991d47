"""`basekiln promote` against real registries, cosign and syft, through the promote flow.

The staging image is a small dpkg image published by `basekiln.publish` (no BuildKit
needed): signed, with its SBOM, provenance and reproducibility attestations. Each
refusal must exit 4 and leave the release repository without a tag.
"""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import json
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from basekiln import _cosign
from basekiln._registry_server import LocalRegistry
from basekiln.config import load_config
from basekiln.lockfile import (
    LockedPackage,
    LockedRelease,
    Lockfile,
    RecipeRef,
    file_sha256,
    write_lockfile,
)
from basekiln.promote import VSA_PREDICATE
from basekiln.publish import Signing, publish, verify_published
from basekiln.registry import Reference, RegistryClient, copy_image, parse_reference
from basekiln.results import BuildResult, SandboxBuild
from tests.e2e.conftest import LAUNCHER, prefect_env
from tests.fixtures.faultproxy import FaultProxy
from tests.fixtures.images import FakeDeb, write_dpkg_image
from tests.fixtures.registry import (
    KEY_PASSWORD,
    client,
    cosign_keys,
    fault_proxy,
    make_image,
    plain_registry,
)

pytestmark = pytest.mark.slow
__all__ = ["cosign_keys", "fault_proxy", "plain_registry"]

RECIPE = "fake"
EPOCH = 1_700_000_000
DEBS = [
    FakeDeb("libfake1", "2.3-4", "amd64", files={"usr/lib/libfake.so.1": b"not really\n"}),
    FakeDeb("fake-data", "2024a-0", "all", files={"usr/share/fake-data/zone.tab": b"UTC\n"}),
]
_ids = itertools.count()


@dataclass(frozen=True)
class Staged:
    root: Path
    image: Reference  # HOST/REPO@digest in staging
    registry: LocalRegistry
    keys: _cosign.KeyPair

    def release(self, host: str | None = None) -> str:
        return f"{host or self.registry.host}/release{next(_ids)}/{RECIPE}"


def _locked(deb: FakeDeb) -> LockedPackage:
    return LockedPackage(
        name=deb.name,
        version=deb.version,
        architecture=deb.architecture,
        platform="linux/amd64",
        sha256=hashlib.sha256(deb.name.encode()).hexdigest(),
        size=100,
        filename=f"pool/main/f/{deb.name}/{deb.name}_{deb.version}_{deb.architecture}.deb",
        source=deb.name,
        source_version=deb.version,
        archive="debian",
        suite="bookworm",
        depends_on=[],
        dependencies_followed=True,
    )


def _project(root: Path) -> BuildResult:
    (root / "basekiln.toml").write_text('[cache]\ndir = ".cache/basekiln"\n')
    recipe = root / "recipes" / f"{RECIPE}.yaml"
    recipe.parent.mkdir(parents=True)
    recipe.write_text(f"name: {RECIPE}\npackages: [libfake1, fake-data]\n")
    release = LockedRelease(
        archive="debian", suite="bookworm", sha256="1" * 64, date="2026-01-01",
        url="http://deb.debian.org/debian/dists/bookworm/InRelease",
    )  # fmt: skip
    lock = Lockfile(
        recipe=RecipeRef(name=RECIPE, path=f"recipes/{RECIPE}.yaml", sha256=file_sha256(recipe)),
        parent=None,
        platforms=["linux/amd64"],
        source_date_epoch=EPOCH,
        mirrors={"debian": ["http://deb.debian.org/debian"]},
        releases=[release],
        packages=[_locked(deb) for deb in DEBS],
    )
    lock_path = root / "lockfiles" / f"{RECIPE}.lock.json"
    write_lockfile(lock_path, lock)
    layout = root / "out" / RECIPE / "oci"
    digest = write_dpkg_image(layout, DEBS).digest
    now = datetime.now(UTC).isoformat(timespec="seconds")
    builds = tuple(
        SandboxBuild(f"sandbox-{i}", digest, {"umask": f"00{i}2"}, str(layout), 1.0) for i in (1, 2)
    )
    return BuildResult(
        recipe=RECIPE,
        recipe_path=f"recipes/{RECIPE}.yaml",
        recipe_sha256=file_sha256(recipe),
        lockfile_path=f"lockfiles/{RECIPE}.lock.json",
        lockfile_sha256=file_sha256(lock_path),
        platform="linux/amd64",
        digest=digest,
        reproducible=True,
        builds=builds,
        oci_layout=str(layout),
        buildkit_version="v0.34.2",
        source_date_epoch=EPOCH,
        started_on=now,
        finished_on=now,
        seconds=2.0,
    )


@pytest.fixture(scope="module")
def staged(
    tmp_path_factory: pytest.TempPathFactory,
    plain_registry: LocalRegistry,
    cosign_keys: _cosign.KeyPair,
) -> Staged:
    root = tmp_path_factory.mktemp("promote-project")
    result = _project(root)
    signing = Signing(signer=str(cosign_keys.private_key), verifier=cosign_keys.public_key)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(_cosign.PASSWORD_ENV, KEY_PASSWORD)
        published = publish(
            load_config(root), result, f"{plain_registry.host}/staging/{RECIPE}", signing
        )
    return Staged(root, parse_reference(published.image), plain_registry, cosign_keys)


def promote(
    staged: Staged, api: tuple[str, Path], image: str, to: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in prefect_env(*api).items() if not k.startswith("BASEKILN_")}
    return subprocess.run(
        [sys.executable, "-c", LAUNCHER, "promote", image, "--to", to,
         "--key", str(staged.keys.private_key), "--promoter", "release-bot", "--json", *extra],
        cwd=staged.root, env={**env, _cosign.PASSWORD_ENV: KEY_PASSWORD},
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def tags_in(registry: LocalRegistry, repository: str) -> list[str]:
    with client(registry.endpoint()) as registry_client:
        return registry_client.list_tags(parse_reference(repository))


def signing(staged: Staged) -> Signing:
    return Signing(signer=str(staged.keys.private_key), verifier=staged.keys.public_key)


def test_promotion_copies_verifies_records_and_tags(
    staged: Staged, prefect_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    release = staged.release()
    done = promote(staged, prefect_server, str(staged.image), release, "--tag", "v1")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    digest = str(staged.image.digest)
    assert result["promoted"] == f"{release}@{digest}"
    assert result["tags"] == ["v1"]

    target = parse_reference(result["promoted"])
    endpoint = staged.registry.endpoint()
    monkeypatch.setenv(_cosign.PASSWORD_ENV, KEY_PASSWORD)
    verify_published(target, signing(staged), endpoint)  # signature and attestations moved
    with client(endpoint) as registry:
        found = registry.head_manifest(target.by_tag("v1"))
    assert found is not None and found.digest == digest

    records = _cosign.verify_attestation(target, staged.keys.public_key, VSA_PREDICATE, endpoint)
    statement = records[0].statement
    assert statement["subject"][0]["digest"] == {"sha256": digest.removeprefix("sha256:")}
    predicate = statement["predicate"]
    assert predicate["verificationResult"] == "PASSED"
    assert predicate["promotion"]["promoter"] == "release-bot"
    assert predicate["promotion"]["source"] == str(staged.image)
    assert len(predicate["inputAttestations"]) == 3
    assert Path(result["record"]["file"]).is_file()


def test_a_tag_is_refused(staged: Staged, prefect_server: tuple[str, Path]) -> None:
    tagged = f"{staged.image.name}:fake-latest"
    done = promote(staged, prefect_server, tagged, staged.release())
    assert done.returncode == 4
    assert "promote by digest" in done.stderr and "@sha256:" in done.stderr


def test_an_unsigned_image_is_refused(
    staged: Staged, prefect_server: tuple[str, Path], tmp_path: Path
) -> None:
    unsigned = parse_reference(f"{staged.registry.host}/staging/unsigned")
    image = make_image(tmp_path / "layout")
    with client(staged.registry.endpoint()) as registry:
        pushed = registry.push_image(image, unsigned.by_digest(image.digest))
    release = staged.release()
    done = promote(staged, prefect_server, str(pushed.reference), release)
    assert done.returncode == 4, done.stderr[-3000:]
    assert "did not verify" in done.stderr and "signature" in done.stderr
    assert tags_in(staged.registry, release) == []


def test_a_tampered_attestation_is_refused(
    staged: Staged, prefect_server: tuple[str, Path]
) -> None:
    copy = parse_reference(f"{staged.registry.host}/staging/tampered{next(_ids)}")
    with client(staged.registry.endpoint()) as registry:
        copy_image(registry, staged.image, registry, copy)
        _rewrite_provenance(registry, copy.by_digest(str(staged.image.digest)))
    release = staged.release()
    done = promote(staged, prefect_server, f"{copy}@{staged.image.digest}", release)
    assert done.returncode == 4, done.stderr[-3000:]
    assert "https://slsa.dev/provenance/v1" in done.stderr
    assert tags_in(staged.registry, release) == []


def _rewrite_provenance(registry: RegistryClient, image: Reference) -> None:
    """Change the builder inside the stored provenance envelope, keeping its signature."""
    assert image.digest is not None
    tag = image.by_tag(image.digest.replace(":", "-") + ".att")
    body = registry.get_manifest(tag).json()
    for layer in body["layers"]:
        if layer.get("annotations", {}).get("predicateType") != "https://slsa.dev/provenance/v1":
            continue
        spool = io.BytesIO()
        registry.fetch_blob(image.repository, layer["digest"], spool)
        envelope = json.loads(spool.getvalue())
        statement = json.loads(base64.b64decode(envelope["payload"]))
        statement["predicate"]["runDetails"]["builder"]["id"] = "https://evil.invalid/builder"
        envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
        data = json.dumps(envelope).encode()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        registry.upload_blob(image.repository, digest, io.BytesIO(data))
        layer.update(digest=digest, size=len(data))
    manifest = json.dumps(body).encode()
    registry.put_manifest(tag, manifest, body["mediaType"])


def test_a_release_repository_that_refuses_the_push(
    staged: Staged, prefect_server: tuple[str, Path], fault_proxy: FaultProxy
) -> None:
    fault_proxy.fail(times=None, status=403, match=lambda method, _: method in ("POST", "PUT"))
    release = staged.release(fault_proxy.host)
    done = promote(staged, prefect_server, str(staged.image), release)
    assert done.returncode == 4, done.stderr[-3000:]
    assert "no tag was moved" in done.stderr and "403" in done.stderr
    fault_proxy.heal()
    repository = release.replace(fault_proxy.host, staged.registry.host)
    assert tags_in(staged.registry, repository) == []


def test_the_policy_can_refuse(staged: Staged, prefect_server: tuple[str, Path]) -> None:
    config = staged.root / "basekiln.toml"
    original = config.read_text()
    config.write_text(original + '\n[promotion]\nallowed_builders = ["https://other.invalid/b"]\n')
    try:
        release = staged.release()
        done = promote(staged, prefect_server, str(staged.image), release)
    finally:
        config.write_text(original)
    assert done.returncode == 4, done.stderr[-3000:]
    assert "does not meet the promotion policy" in done.stderr
    assert "not an allowed builder" in done.stderr
    assert tags_in(staged.registry, release) == []
