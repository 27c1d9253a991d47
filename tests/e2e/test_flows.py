"""The nightly, rebuild and promote flows end to end: real BuildKit sandboxes, a real
registry, cosign and syft, and one Prefect server for the session (tests/e2e/conftest.py).

The module's catalogue (`tiny`, and `child` built on it) is published once by two
nightly runs started at the same moment; the tests after that fixture build on what
it published, and the archive upgrade test, which changes the catalogue, comes last.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from basekiln import _cosign
from basekiln._registry_server import LocalRegistry
from basekiln.config import load_config
from basekiln.lockfile import read_lockfile
from basekiln.nightly import read_record
from basekiln.publish import Signing, verify_published
from basekiln.registry import RegistryClient, parse_reference
from basekiln.sandbox import mounts_under
from tests.conftest import Project, write_project
from tests.e2e.conftest import LAUNCHER, PREFECT, prefect_env
from tests.fixtures.archive import ArchiveTree, Deb
from tests.fixtures.httpserver import ArchiveServer
from tests.fixtures.registry import KEY_PASSWORD, cosign_keys, plain_registry

pytestmark = pytest.mark.slow
__all__ = ["cosign_keys", "plain_registry"]

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCES = "sources: [{archive: debian, suite: bookworm}]\n"
TINY = (
    "name: tiny\n"
    + SOURCES
    + """\
packages:
  - {name: base-files, dependencies: false}
  - {name: busybox-static, dependencies: false}
drop: [/usr/share/doc]
users:
  - {name: root, uid: 0, gid: 0, home: /root}
  - {name: nonroot, uid: 65532, gid: 65532, home: /home/nonroot}
user: "65532"
workdir: /home/nonroot
entrypoint: [/bin/busybox]
tests:
  commands:
    - {name: runs as nonroot, command: [/bin/busybox, id, -u], stdout: "^65532"}
  files:
    - {name: passwd, path: /etc/passwd, contains: "nonroot:x:65532"}
"""
)
CHILD = (
    "name: child\nparent: tiny\n"
    + SOURCES
    + """\
packages:
  - extra-data
tests:
  files:
    - {name: own files, path: /usr/share/extra-data/payload}
"""
)


@dataclass
class Catalogue:
    """A project with its archive mirror, staging registry and signing key."""

    project: Project
    archive: ArchiveTree
    registry: LocalRegistry
    staging: str  # HOST/PREFIX; images go to HOST/PREFIX/<recipe>
    keys: _cosign.KeyPair
    sandboxes: Path
    runs: list[subprocess.CompletedProcess[str]]

    @property
    def root(self) -> Path:
        return self.project.root

    def env(self, api: tuple[str, Path]) -> dict[str, str]:
        return {
            **prefect_env(*api),
            _cosign.PASSWORD_ENV: KEY_PASSWORD,
            "BASEKILN_SANDBOX_DIR": str(self.sandboxes),
        }

    def args(self, *extra: str) -> list[str]:
        return ["--registry", self.staging, "--key", str(self.keys.private_key), *extra]

    def signing(self) -> Signing:
        return Signing(signer=str(self.keys.private_key), verifier=self.keys.public_key)


_ids = itertools.count()


@contextlib.contextmanager
def catalogue(
    root: Path,
    template: ArchiveTree,
    registry: LocalRegistry,
    keys: _cosign.KeyPair,
    recipes: dict[str, str],
) -> Iterator[Catalogue]:
    """A fresh project serving its own copy of the archive; checks nothing leaked."""
    archive = template.copy_to(root / "archive")
    sandboxes = root / "sandboxes"
    sandboxes.mkdir()
    with ArchiveServer(archive.root) as served:
        project = write_project(
            root / "project", {"debian": [f"{served.url}/debian"]}, archive.key.keyring
        )
        for name, text in recipes.items():
            project.write_recipe(name, text)
        staging = f"{registry.host}/flows{next(_ids)}"
        yield Catalogue(project, archive, registry, staging, keys, sandboxes, [])
    assert mounts_under(sandboxes) == []
    assert [p.name for p in sandboxes.iterdir() if p.name.startswith("basekiln-")] == []


def launch(cat: Catalogue, api: tuple[str, Path], *args: str) -> subprocess.Popen[str]:
    """`basekiln ARGS` in a subprocess, from the project's root."""
    return subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, *args],
        cwd=cat.root,
        env=cat.env(api),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def invoke(cat: Catalogue, api: tuple[str, Path], *args: str) -> subprocess.CompletedProcess[str]:
    """`basekiln ARGS` run to its end in a subprocess, from the project's root."""
    run = launch(cat, api, *args)
    out, err = run.communicate(timeout=1200)
    return subprocess.CompletedProcess(run.args, run.returncode, out, err)


def report_of(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def statuses(report: dict[str, Any]) -> dict[str, str]:
    return {image["recipe"]: image["status"] for image in report["images"]}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BASEKILN_CONFIG", "BASEKILN_CACHE", "BASEKILN_REGISTRY_USERNAME"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def published(
    tmp_path_factory: pytest.TempPathFactory,
    flows_archive: ArchiveTree,
    plain_registry: LocalRegistry,
    cosign_keys: _cosign.KeyPair,
    prefect_server: tuple[str, Path],
) -> Iterator[Catalogue]:
    """The catalogue after two nightly runs were started at the same moment."""
    root = tmp_path_factory.mktemp("published")
    recipes = {"tiny": TINY, "child": CHILD}
    with catalogue(root, flows_archive, plain_registry, cosign_keys, recipes) as cat:
        runs = [launch(cat, prefect_server, "nightly", *cat.args("--json")) for _ in range(2)]
        for run in runs:
            out, err = run.communicate(timeout=1200)
            cat.runs.append(subprocess.CompletedProcess(run.args, run.returncode, out, err))
        yield cat


# --- two runs at once, then nothing to do -------------------------------------------


def test_two_runs_at_once_take_turns_and_agree(published: Catalogue) -> None:
    cat = published
    for run in cat.runs:
        assert run.returncode == 0, run.stderr[-3000:]
    reports = [report_of(run) for run in cat.runs]
    assert sorted(tuple(sorted(set(statuses(r).values()))) for r in reports) == [
        ("published",),
        ("unchanged",),
    ]
    assert any("another run holds" in run.stderr for run in cat.runs), "the runs never overlapped"

    first = next(r for r in reports if "published" in statuses(r).values())
    images = {i["recipe"]: i for i in first["images"]}
    assert [i["recipe"] for i in first["images"]] == ["tiny", "child"], "parents first"
    for name, image in images.items():
        assert image["reproducible"] is True
        assert image["image"] == f"{cat.staging}/{name}@{image['digest']}"
        assert image["first_publication"] is True and image["size"] > 0
        assert {p["name"] for p in image["packages"]["added"]} >= {"busybox-static"}

    # Lockfiles, cache and tags are whole: every tag names a digest that verifies.
    for name in ("tiny", "child"):
        read_lockfile(cat.project.lockfile(name))
    cat.project.assert_no_leftovers()
    signing = cat.signing()
    for name, image in images.items():
        target = parse_reference(image["image"])
        endpoint = cat.registry.endpoint()
        verify_published(target, signing, endpoint)
        with RegistryClient(endpoint) as registry:
            for tag in image["tags"]:
                found = registry.head_manifest(target.by_tag(tag))
                assert found is not None and found.digest == image["digest"]
        record = read_record(load_config(cat.root), name)
        assert record is not None and record.digest == image["digest"]

    markdown = Path(first["files"]["markdown"]).read_text()
    assert "| tiny | published |" in markdown and "| child | published |" in markdown


def test_a_published_image_is_accepted_from_outside(published: Catalogue) -> None:
    """What a consumer runs, with none of basekiln's code: stock cosign and syft."""
    from tests.e2e.test_publish_e2e import stock_cosign, stock_syft_debs

    record = read_record(load_config(published.root), "child")
    assert record is not None
    public = str(published.keys.public_key)
    assert stock_cosign("verify", f"--key={public}", record.image).returncode == 0
    for kind in ("slsaprovenance1", "spdxjson"):
        done = stock_cosign("verify-attestation", f"--key={public}", f"--type={kind}", record.image)
        assert done.returncode == 0, done.stderr

    found = stock_syft_debs(record.image)
    locked = {
        (p.name, p.version)
        for name in ("tiny", "child")
        for p in read_lockfile(published.project.lockfile(name)).packages
    }
    assert found == locked


def test_report_reads_a_published_image_from_the_registry(
    published: Catalogue, prefect_server: tuple[str, Path]
) -> None:
    record = read_record(load_config(published.root), "child")
    assert record is not None
    done = invoke(published, prefect_server, "report", record.image, "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    surface = json.loads(done.stdout)
    built = json.loads((published.root / "out" / "child" / "build.json").read_text())
    local = invoke(published, prefect_server, "report", "child", "--json")
    assert local.returncode == 0, local.stderr[-3000:]
    # The same image, whether read from the registry or from the local build.
    assert {**surface, "image": None} == {**json.loads(local.stdout), "image": None}
    assert surface["digest"] == record.digest == built["digest"]
    assert surface["own_compressed_bytes"] < surface["compressed_bytes"], "parent found"

    tagged = invoke(published, prefect_server, "report", record.image.split("@")[0] + ":latest")
    assert tagged.returncode == 2 and "by digest" in tagged.stderr


def test_verify_checks_this_repository_and_rebuilds(
    published: Catalogue, prefect_server: tuple[str, Path]
) -> None:
    record = read_record(load_config(published.root), "child")
    assert record is not None
    key = f"--key={published.keys.public_key}"
    done = invoke(published, prefect_server, "verify", record.image, key, "--rebuild", "--json")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    assert checks["rebuild reproduces the digest"]["passed"] is True
    assert checks["provenance matches this repository"]["passed"] is True

    recipe = published.project.recipes / "child.yaml"
    original = recipe.read_text()
    recipe.write_text(original + "# edited after publishing\n")
    try:
        edited = invoke(published, prefect_server, "verify", record.image, key, "--json")
    finally:
        recipe.write_text(original)
    assert edited.returncode == 4
    checks = {c["name"]: c for c in json.loads(edited.stdout)["checks"]}
    assert checks["provenance matches this repository"]["passed"] is False
    assert "recipe" in checks["provenance matches this repository"]["detail"]
    assert checks["signature"]["passed"] is True


def test_nothing_changed_so_nothing_is_rebuilt(
    published: Catalogue, prefect_server: tuple[str, Path], prefect_api: str
) -> None:
    started = time.monotonic()
    result = invoke(published, prefect_server, "nightly", *published.args("--json"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = report_of(result)
    assert statuses(report) == {"tiny": "unchanged", "child": "unchanged"}
    assert time.monotonic() - started < 60
    assert report["lockfiles"]["changed"] == []
    assert all(i["seconds"] < 20 for i in report["images"])

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        artifact = client.read_latest_artifacts()
    found = [a for a in artifact if a.key == "basekiln-nightly-report"]
    assert found and "| tiny | unchanged |" in str(found[0].data)


def test_an_image_whose_signature_is_gone_is_signed_again(
    published: Catalogue, prefect_server: tuple[str, Path]
) -> None:
    record = read_record(load_config(published.root), "tiny")
    assert record is not None
    target = parse_reference(record.image)
    endpoint = published.registry.endpoint()
    with RegistryClient(endpoint) as registry:
        signature = registry.head_manifest(target.by_tag(record.digest.replace(":", "-") + ".sig"))
    assert signature is not None
    gone = httpx.delete(f"{endpoint.base_url}/v2/{target.repository}/manifests/{signature.digest}")
    assert gone.status_code == 202

    result = invoke(published, prefect_server, "nightly", *published.args("--json"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = report_of(result)
    assert statuses(report) == {"tiny": "reproduced", "child": "unchanged"}
    assert "no longer verifies" in report["images"][0]["reason"]
    verify_published(target, published.signing(), endpoint)


def test_deployed_nightly_completes_through_a_process_worker(
    published: Catalogue, prefect_server: tuple[str, Path], prefect_api: str
) -> None:
    from prefect.deployments import run_deployment

    env = {**published.env(prefect_server), "PREFECT_WORKER_QUERY_SECONDS": "1"}
    pool = f"basekiln-test-{next(_ids)}"
    subprocess.run(
        [str(PREFECT), "work-pool", "create", pool, "--type", "process"],
        env=env, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    deployed = subprocess.run(
        [str(PREFECT), "--no-prompt", "deploy", "--prefect-file", str(REPO_ROOT / "prefect.yaml"),
         "--name", "nightly", "--pool", pool],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]

    before = set(published.root.joinpath("reports").glob("nightly-*.json"))
    with subprocess.Popen(
        [str(PREFECT), "worker", "start", "--pool", pool, "--type", "process", "--limit", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    ) as worker:  # fmt: skip
        try:
            flow_run = run_deployment(
                "nightly/nightly",
                parameters={
                    "registry": published.staging,
                    "key": str(published.keys.private_key),
                    "project": str(published.root),
                },
                timeout=900,
                poll_interval=2,
            )
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
    assert flow_run.state is not None and flow_run.state.is_completed(), flow_run.state
    new = set(published.root.joinpath("reports").glob("nightly-*.json")) - before
    assert len(new) == 1
    assert statuses(json.loads(new.pop().read_text())) == {
        "tiny": "unchanged",
        "child": "unchanged",
    }


def test_rebuild_then_promote(published: Catalogue, prefect_server: tuple[str, Path]) -> None:
    rebuilt = invoke(published, prefect_server, "rebuild", "child", *published.args("--json"))
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    summary = json.loads(rebuilt.stdout)
    record = read_record(load_config(published.root), "child")
    assert record is not None
    assert summary["status"] == "reproduced" and summary["digest"] == record.digest

    release = f"{published.registry.host}/release{next(_ids)}/child"
    promoted = invoke(
        published, prefect_server, "promote", record.image, "--to", release,
        "--key", str(published.keys.private_key), "--json",
    )  # fmt: skip
    assert promoted.returncode == 0, promoted.stderr[-3000:]
    result = json.loads(promoted.stdout)
    assert result["promoted"] == f"{release}@{record.digest}"
    assert [c["passed"] for c in result["checks"]] == [True] * 4


# --- failures stay with their image ---------------------------------------------------


def test_failures_stay_with_their_image(
    tmp_path: Path,
    flows_archive: ArchiveTree,
    plain_registry: LocalRegistry,
    cosign_keys: _cosign.KeyPair,
    prefect_server: tuple[str, Path],
) -> None:
    recipes = {
        "tiny": TINY,
        "broken": "name: broken\n" + SOURCES + "packages: [no-such-package]\n",
        "broken-kid": "name: broken-kid\nparent: broken\n" + SOURCES,
        "orphan": "name: orphan\nparent: nowhere\n" + SOURCES,
    }
    with catalogue(tmp_path, flows_archive, plain_registry, cosign_keys, recipes) as cat:
        result = invoke(cat, prefect_server, "nightly", *cat.args("--json"))
    assert result.returncode == 1, result.stderr[-3000:]
    report = report_of(result)
    assert statuses(report) == {
        "tiny": "published",
        "broken": "failed",
        "broken-kid": "skipped",
        "orphan": "failed",
    }
    reasons = {i["recipe"]: i["reason"] for i in report["images"]}
    assert "no-such-package" in reasons["broken"]
    assert reasons["broken-kid"] == "its parent broken failed"
    assert "no recipe named 'nowhere'" in reasons["orphan"]


# --- interrupted, then finished -------------------------------------------------------


def test_an_interrupted_run_finishes_without_redoing_work(
    tmp_path: Path,
    flows_archive: ArchiveTree,
    plain_registry: LocalRegistry,
    cosign_keys: _cosign.KeyPair,
    prefect_server: tuple[str, Path],
) -> None:
    recipes = {"tiny": TINY, "child": CHILD}
    with catalogue(tmp_path, flows_archive, plain_registry, cosign_keys, recipes) as cat:
        config = load_config(cat.root)
        run = launch(cat, prefect_server, "nightly", *cat.args())
        deadline = time.monotonic() + 600
        while read_record(config, "tiny") is None and run.poll() is None:
            assert time.monotonic() < deadline, "tiny was never published"
            time.sleep(0.2)
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=300)
        assert run.returncode == 130, err[-3000:]
        assert read_record(config, "child") is None
        tiny = read_record(config, "tiny")

        result = invoke(cat, prefect_server, "nightly", *cat.args("--json"))
        assert result.returncode == 0, result.stderr[-3000:]
        assert statuses(report_of(result)) == {"tiny": "unchanged", "child": "published"}
        assert read_record(config, "tiny") == tiny


# --- today's archive moved on -----------------------------------------------------------


def test_an_upgrade_rebuilds_only_what_changed_and_an_audit_reproduces(
    published: Catalogue, prefect_server: tuple[str, Path]
) -> None:
    published.archive.add("bookworm", Deb("extra-data", "1.1-1", "all", payload="two"))
    result = invoke(published, prefect_server, "nightly", *published.args("--json"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = report_of(result)
    assert statuses(report) == {"tiny": "unchanged", "child": "published"}
    child = next(i for i in report["images"] if i["recipe"] == "child")
    assert child["packages"]["upgraded"] == [{"name": "extra-data", "from": "1.0-1", "to": "1.1-1"}]
    assert child["first_publication"] is False and child["size_change"] is not None
    assert report["lockfiles"]["changed"] == ["child"]
    diff = Path(report["files"]["diff"]).read_text()
    assert "+++ b/lockfiles/child.lock.json" in diff and "1.1-1" in diff

    audited = invoke(published, prefect_server, "nightly", *published.args("--audit", "--json"))
    assert audited.returncode == 0, audited.stderr[-3000:]
    assert statuses(report_of(audited)) == {"tiny": "reproduced", "child": "reproduced"}
