"""The double build end to end: real buildkitd sandboxes, real packages, no mocks.

Every test here starts BuildKit daemons, so all are marked slow. The archive is the
signed test archive, carrying Debian's real busybox-static and libc-bin (the tool
stage needs them to run) beside packages made for each case.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from basekiln import _cosign
from basekiln._registry_server import LocalRegistry
from basekiln._run import which
from basekiln.oci import read_image
from basekiln.registry import parse_reference
from basekiln.sandbox import PLAIN, local_sandbox, mounts_under, sandbox_root
from tests.conftest import BASEKILN, Project, write_project
from tests.fixtures.archive import ArchiveTree, Deb, SigningKey, Suite
from tests.fixtures.buildarchive import CraftedDeb, Member, real_tool_debs
from tests.fixtures.httpserver import ArchiveServer
from tests.fixtures.registry import KEY_PASSWORD, client, cosign_keys, plain_registry

pytestmark = pytest.mark.slow
__all__ = ["cosign_keys", "plain_registry"]

DATE = "Sat, 01 Jun 2024 10:00:00 UTC"
SOURCES = "sources: [{archive: debian, suite: bookworm}]\n"
# This archive's base-files is a stand-in without os-release; syft needs it to see debs.
OS_RELEASE_STEP = "  - printf 'ID=debian\\nVERSION_ID=12\\n' > \"$root/etc/os-release\"\n"


def steps_recipe(name: str, steps: str) -> str:
    """A recipe of base-files alone, then `steps` (YAML list items under `steps:`)."""
    return (
        f"name: {name}\n" + SOURCES + "packages: [{name: base-files, dependencies: false}]\n"
        "steps:\n" + steps
    )


TINY = (
    """\
name: tiny
description: busybox and a user, enough to run command tests
"""
    + SOURCES
    + """\
packages:
  - {name: base-files, dependencies: false}
  - {name: busybox-static, dependencies: false}
drop: [/usr/share/doc]
users:
  - {name: root, uid: 0, gid: 0, home: /root}
  - {name: nonroot, uid: 65532, gid: 65532, home: /home/nonroot}
env: {GREETING: hello}
user: "65532"
workdir: /home/nonroot
entrypoint: [/bin/busybox]
budgets: {allow_shell: true}  # busybox is the shell the command tests drive
tests:
  commands:
    - {name: busybox runs as nonroot, command: [/bin/busybox, id, -u], stdout: "^65532"}
    - {name: env reaches the command, command: [/bin/busybox, env],
       stdout: "GREETING=hello"}
  files:
    - {name: home, path: /home/nonroot, mode: "0700", uid: 65532}
    - {name: passwd, path: /etc/passwd, contains: "nonroot:x:65532"}
    - {name: docs dropped, path: /usr/share/doc, present: false}
    - {name: scanners see busybox, path: /var/lib/dpkg/status.d/busybox-static}
  metadata:
    - {name: nonroot user, user: "65532", entrypoint: [/bin/busybox],
       env: {GREETING: hello}}
"""
)

CHILD = (
    """\
name: child
parent: tiny
"""
    + SOURCES
    + """\
packages:
  - extra-data
ldconfig: true
tests:
  files:
    - {name: ld.so.cache written, path: /etc/ld.so.cache, mode: "0644"}
    - {name: parent files kept, path: /bin/busybox}
    - {name: own files, path: /usr/share/extra-data/payload}
"""
)


@pytest.fixture(scope="session")
def build_archive_template(
    tmp_path_factory: pytest.TempPathFactory, signing_key: SigningKey
) -> ArchiveTree:
    base = tmp_path_factory.mktemp("build-archive")
    packages = (
        *real_tool_debs(),
        Deb("base-files", "12.4+deb12u5", priority="required"),
        Deb("extra-data", "1.0-1", "all"),
        CraftedDeb(
            "dotdot",
            "1.0",
            members=(Member("./etc/", "dir", mode=0o755), Member("./../../escape", data=b"x")),
        ),
        CraftedDeb("absolute", "1.0", members=(Member("/etc/absolute", data=b"x"),)),
        CraftedDeb(
            "through-link",
            "1.0",
            members=(
                Member("./etc/", "dir", mode=0o755),
                Member("./etc/sneaky", "symlink", target="/proc/self"),
                Member("./etc/sneaky/evil", data=b"x"),
            ),
        ),
    )
    tree = ArchiveTree(
        base / "root",
        signing_key,
        [Suite("debian", "bookworm", "oldstable", "Debian", DATE, packages)],
        deb_cache=base / "debs",
    )
    tree.publish()
    return tree


@pytest.fixture
def build_project(
    tmp_path: Path, build_archive_template: ArchiveTree, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Project]:
    monkeypatch.delenv("BASEKILN_CONFIG", raising=False)
    monkeypatch.delenv("BASEKILN_CACHE", raising=False)
    # Where basekiln puts sandboxes by default (memory, when there is room), so that the
    # second build context is copied across file systems as it is in use; a directory
    # of the test's own, so that leaks can be checked.
    monkeypatch.delenv("BASEKILN_SANDBOX_DIR", raising=False)
    with tempfile.TemporaryDirectory(prefix="sandboxes-", dir=sandbox_root()) as tmp:
        sandboxes = Path(tmp)
        monkeypatch.setenv("BASEKILN_SANDBOX_DIR", str(sandboxes))
        archive = build_archive_template.copy_to(tmp_path / "archive")
        with ArchiveServer(archive.root) as served:
            project = write_project(
                tmp_path / "project", {"debian": [f"{served.url}/debian"]}, archive.key.keyring
            )
            project.write_recipe("tiny", TINY)
            yield project
        assert_nothing_leaked(sandboxes)


def assert_nothing_leaked(sandboxes: Path) -> None:
    """No daemon, mount or state directory of a sandbox outlives its build."""
    assert mounts_under(sandboxes) == []
    running = subprocess.run(
        ["pgrep", "-af", "buildkitd"], capture_output=True, text=True, check=False
    ).stdout
    assert str(sandboxes) not in running
    assert [p.name for p in sandboxes.iterdir() if p.name.startswith("basekiln-")] == []


def run_basekiln(
    project: Project, *args: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BASEKILN), *args],
        cwd=project.root,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=os.environ.copy(),
    )


def lock_and_build(project: Project, recipe: str, *extra: str) -> subprocess.CompletedProcess[str]:
    locked = run_basekiln(project, "lock", recipe)
    assert locked.returncode == 0, locked.stderr
    return run_basekiln(project, "build", recipe, "--json", *extra)


def test_double_build_is_reproducible_tested_and_isolated(build_project: Project) -> None:
    built = lock_and_build(build_project, "tiny")
    assert built.returncode == 0, built.stderr
    result = json.loads(built.stdout)

    assert result["recipe"] == "tiny"
    assert result["reproducible"] is True
    assert result["buildkit_version"] == "v0.34.2"
    assert [b["digest"] for b in result["builds"]] == [result["digest"]] * 2
    first, second = (b["perturbations"] for b in result["builds"])
    for key in ("tz", "locale", "umask", "hostname", "build_dir", "cpus"):
        assert first[key] != second[key] or (key == "cpus" and os.cpu_count() == 1), key
    image = read_image(Path(result["oci_layout"]))
    assert image.digest == result["digest"]
    # With BuildKit's attestations on, index.json would hold one nested index (the image
    # plus attestation manifests) instead of the image manifest itself.
    entries = json.loads((Path(result["oci_layout"]) / "index.json").read_text())["manifests"]
    assert [e["mediaType"] for e in entries] == ["application/vnd.oci.image.manifest.v1+json"]
    assert entries[0]["digest"] == result["digest"]
    labels = image.config["config"]["Labels"]
    assert labels["org.opencontainers.image.title"] == "tiny"
    assert labels["org.opencontainers.image.created"] == "2024-06-01T10:00:00Z"


def test_unchanged_inputs_are_not_rebuilt_and_force_rebuilds_the_same(
    build_project: Project,
) -> None:
    first = json.loads(lock_and_build(build_project, "tiny").stdout)
    again = run_basekiln(build_project, "build", "tiny", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["digest"] == first["digest"]
    assert json.loads(again.stdout)["seconds"] == first["seconds"], "must reuse the result"
    forced = run_basekiln(build_project, "build", "tiny", "--json", "--force")
    assert json.loads(forced.stdout)["digest"] == first["digest"]


def test_child_keeps_its_parents_layers_byte_for_byte(build_project: Project) -> None:
    build_project.write_recipe("child", CHILD)
    assert run_basekiln(build_project, "lock").returncode == 0
    built = run_basekiln(build_project, "build", "child", "--json")
    assert built.returncode == 0, built.stderr
    (line,) = built.stdout.splitlines()  # one object, for the recipe named
    parent_result = json.loads((build_project.root / "out" / "tiny" / "build.json").read_text())
    parent = read_image(Path(parent_result["oci_layout"]))
    child = read_image(Path(json.loads(line)["oci_layout"]))
    assert [layer.digest for layer in child.layers[: len(parent.layers)]] == [
        layer.digest for layer in parent.layers
    ]
    assert child.config["config"]["Labels"]["org.opencontainers.image.base.digest"] == (
        parent.digest
    )


def test_non_reproducible_recipe_exits_3_with_a_report_naming_the_file(
    build_project: Project,
) -> None:
    build_project.write_recipe(
        "drifting",
        steps_recipe(
            "drifting",
            '  - head -c 16 /dev/urandom | od -A n -t x1 > "$root/etc/build-time"\n',
        ),
    )
    built = lock_and_build(build_project, "drifting")
    assert built.returncode == 3, built.stderr
    assert "not reproducible" in built.stderr
    result = json.loads(built.stdout)  # the verdict is printed even when it is a failure
    assert result["reproducible"] is False
    assert result["builds"][0]["digest"] != result["builds"][1]["digest"]
    recorded = json.loads((build_project.root / "out" / "drifting" / "build.json").read_text())
    assert (result["digest"], result["report"]) == (recorded["digest"], recorded["report"])
    report_path = Path(result["report"])
    assert str(report_path) in built.stderr
    report = json.loads(report_path.read_text())
    text = report_path.with_suffix(".txt").read_text()
    assert "etc/build-time" in json.dumps(report)
    assert "etc/build-time" in text
    assert "random data" in text
    assert not (build_project.root / "out" / "drifting" / "oci").exists()
    # diffoscope (installed by make setup) is run on the differing file, and says how.
    diffoscope = report["diffoscope"]
    assert diffoscope["available"] is True, diffoscope["note"]
    (output,) = [o for o in diffoscope["outputs"] if "etc/build-time" in o["label"]]
    assert output["error"] is None and output["text"].strip()


def test_the_second_sandbox_is_perturbed_inside_the_build_step(build_project: Project) -> None:
    build_project.write_recipe(
        "ambient",
        steps_recipe(
            "ambient",
            '  - echo "$LANG $(hostname)" > "$root/etc/ambient"\n',
        ),
    )
    built = lock_and_build(build_project, "ambient")
    assert built.returncode == 3, built.stderr
    result = json.loads((build_project.root / "out" / "ambient" / "build.json").read_text())
    text = Path(result["report"]).with_suffix(".txt").read_text()
    assert "etc/ambient" in text and "host name" in text
    # What each build step saw before assemble.sh fixed it: the recorded perturbations
    # are the ones the step really ran under.
    work = build_project.root / "out" / "ambient" / "work"
    seen = {name: (work / name / "build.log").read_text() for name in ("a", "b")}
    cpus = os.cpu_count() or 1
    assert f"umask 0022, TZ=UTC, LANG=C.UTF-8, host basekiln-a, cpus {cpus}" in seen["a"]
    assert (
        "umask 0077, TZ=Pacific/Kiritimati, LANG=fr_FR.UTF-8, host kiln-b-perturbed.example, "
        "cpus 1" in seen["b"]
    )
    recorded = {b["sandbox"][-1]: b["perturbations"] for b in result["builds"]}
    assert recorded["b"]["umask"] == "0077" and recorded["b"]["tz"] == "Pacific/Kiritimati"


def test_stale_lockfile_is_refused(build_project: Project) -> None:
    assert run_basekiln(build_project, "lock", "tiny").returncode == 0
    recipe = build_project.recipes / "tiny.yaml"
    recipe.write_text(recipe.read_text().replace("GREETING: hello}", "GREETING: hi}"))
    built = run_basekiln(build_project, "build", "tiny")
    assert built.returncode == 2
    assert "stale" in built.stderr and "basekiln lock tiny" in built.stderr
    assert not (build_project.root / "out" / "tiny" / "build.json").exists()


def test_cache_entry_altered_after_fetch_is_refused(build_project: Project) -> None:
    assert run_basekiln(build_project, "lock", "tiny").returncode == 0
    assert run_basekiln(build_project, "fetch", "tiny").returncode == 0
    lock = build_project.lock_data("tiny")
    base_files = next(p for p in lock["packages"] if p["name"] == "base-files")
    entry = build_project.cache / "sha256" / base_files["sha256"]
    entry.chmod(0o644)
    entry.write_bytes(entry.read_bytes() + b"tampered")
    built = run_basekiln(build_project, "build", "tiny")
    assert built.returncode == 1
    assert "altered after fetch" in built.stderr and base_files["sha256"] in built.stderr


def test_tool_packages_and_the_tool_image_are_checked_before_use(
    build_project: Project,
) -> None:
    first = json.loads(lock_and_build(build_project, "tiny").stdout)
    # A blob of the cached tool image altered: the image is written again from the
    # verified packages and the build gives the same digest.
    (tool_layout,) = (build_project.cache / "tool-images").iterdir()
    layer = max((tool_layout / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    layer.write_bytes(layer.read_bytes() + b"tampered")
    again = run_basekiln(build_project, "build", "tiny", "--json", "--force")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["digest"] == first["digest"]
    assert "differed from its inputs" in again.stderr
    # A tool .deb altered in the cache is refused, naming it and both hashes.
    busybox = next(
        p for p in build_project.lock_data("tiny")["tools"] if p["name"] == "busybox-static"
    )
    entry = build_project.cache / "sha256" / busybox["sha256"]
    entry.chmod(0o644)
    entry.write_bytes(entry.read_bytes() + b"tampered")
    refused = run_basekiln(build_project, "build", "tiny", "--force")
    assert refused.returncode == 1
    assert "build tool busybox-static" in refused.stderr and "altered after fetch" in refused.stderr
    assert busybox["sha256"] in refused.stderr


def test_the_source_revision_is_labelled_and_is_an_input(build_project: Project) -> None:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(build_project.root), *args],
            check=True,
            capture_output=True,
            text=True,
            env={
                **os.environ,
                "GIT_AUTHOR_NAME": "t",
                "GIT_AUTHOR_EMAIL": "t@t.invalid",
                "GIT_COMMITTER_NAME": "t",
                "GIT_COMMITTER_EMAIL": "t@t.invalid",
            },
        ).stdout.strip()

    git("init", "-q")
    uncommitted = json.loads(lock_and_build(build_project, "tiny").stdout)
    labels = read_image(Path(uncommitted["oci_layout"])).config["config"]["Labels"]
    assert "org.opencontainers.image.revision" not in labels
    git("add", "recipes", "lockfiles")
    git("commit", "-qm", "tiny")
    committed = run_basekiln(build_project, "build", "tiny", "--json")
    assert committed.returncode == 0, committed.stderr
    result = json.loads(committed.stdout)
    # Not a reuse of the uncommitted build: the label changes the image's bytes.
    assert result["digest"] != uncommitted["digest"] and result["reproducible"] is True
    labels = read_image(Path(result["oci_layout"])).config["config"]["Labels"]
    assert labels["org.opencontainers.image.revision"] == git("rev-parse", "HEAD")


def test_a_package_can_give_only_some_of_its_paths(build_project: Project) -> None:
    recipe = (
        "name: some\n" + SOURCES + "packages:\n"
        "  - {name: base-files, dependencies: false}\n"
        "  - {name: extra-data, dependencies: false, paths: [/usr/share/extra-data]}\n"
        "tests:\n  files:\n"
        "    - {name: the path taken, path: /usr/share/extra-data/payload}\n"
        "    - {name: the rest left, path: /usr/share/doc/extra-data, present: false}\n"
        "    - {name: still listed for scanners, path: /var/lib/dpkg/status.d/extra-data}\n"
    )
    build_project.write_recipe("some", recipe)
    built = lock_and_build(build_project, "some")
    assert built.returncode == 0, built.stderr
    assert "extra-data" in [p["name"] for p in build_project.lock_data("some")["packages"]]

    build_project.write_recipe(
        "some", recipe.replace("paths: [/usr/share/extra-data]", "paths: [/opt/absent]")
    )
    missing = lock_and_build(build_project, "some")
    assert missing.returncode == 1
    assert "the build failed at [assemble 1/2]:" in missing.stderr
    assert "package extra-data has no path opt/absent" in missing.stderr
    assert "buildctl --addr" not in missing.stderr  # the step's words, not the whole log
    assert "The whole log: " in missing.stderr


def test_a_build_over_budget_fails_saying_by_how_much(build_project: Project) -> None:
    build_project.write_recipe(
        "tiny",
        TINY.replace(
            "budgets: {allow_shell: true}", "budgets: {allow_shell: true, max_packages: 1}"
        ),
    )
    built = lock_and_build(build_project, "tiny")
    assert built.returncode == 1
    assert "tiny: over budget" in built.stderr
    assert "packages is 2 packages, over max_packages (1) by 1 packages" in built.stderr
    assert not (build_project.root / "out" / "tiny" / "oci").exists()


def test_an_unlocked_package_slipped_in_by_a_step_stops_publishing(
    build_project: Project, plain_registry: LocalRegistry, cosign_keys: _cosign.KeyPair
) -> None:
    # A step that registers a package nobody locked: what a dependency swapped during
    # the build would look like to a scanner.
    build_project.write_recipe(
        "swapped",
        steps_recipe(
            "swapped",
            "  - |\n"
            "    printf 'Package: sneaky\\nStatus: install ok installed\\nVersion: 6.6-6\\n"
            'Architecture: amd64\\n\' > "$root/var/lib/dpkg/status.d/sneaky"\n' + OS_RELEASE_STEP,
        ),
    )
    assert lock_and_build(build_project, "swapped").returncode == 0
    repository = f"{plain_registry.host}/swapped-test"
    published = subprocess.run(
        [str(BASEKILN), "publish", "swapped", "--registry", repository,
         "--key", str(cosign_keys.private_key)],
        cwd=build_project.root, capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "COSIGN_PASSWORD": KEY_PASSWORD},
    )  # fmt: skip
    assert published.returncode == 1, published.stderr
    assert "sneaky 6.6-6" in published.stderr and "not locked" in published.stderr
    with client(plain_registry.endpoint()) as registry:
        assert registry.list_tags(parse_reference(repository + "@sha256:" + "0" * 64)) == []


def test_a_zstd_image_builds_reproducibly_and_stock_tools_read_it(
    build_project: Project, plain_registry: LocalRegistry, cosign_keys: _cosign.KeyPair
) -> None:
    build_project.write_recipe(
        "squeezed",
        TINY.replace("name: tiny", "name: squeezed")
        + "compression: zstd\nsteps:\n"
        + OS_RELEASE_STEP,
    )
    built = lock_and_build(build_project, "squeezed")
    assert built.returncode == 0, built.stderr
    result = json.loads(built.stdout)
    assert result["reproducible"] is True
    image = read_image(Path(result["oci_layout"]))
    assert {layer.media_type for layer in image.layers} == {
        "application/vnd.oci.image.layer.v1.tar+zstd"
    }
    blob = image.blob_path(image.layers[0].digest).read_bytes()
    assert blob[:4] == b"\x28\xb5\x2f\xfd", "the bytes are zstd, not only the media type"

    repository = f"{plain_registry.host}/squeezed-test"
    published = subprocess.run(
        [str(BASEKILN), "publish", "squeezed", "--registry", repository,
         "--key", str(cosign_keys.private_key), "--json"],
        cwd=build_project.root, capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "COSIGN_PASSWORD": KEY_PASSWORD},
    )  # fmt: skip
    assert published.returncode == 0, published.stderr
    pushed = f"{repository}@{result['digest']}"
    from tests.e2e.test_publish_e2e import stock_cosign, stock_syft_debs

    public = str(cosign_keys.public_key)
    assert stock_cosign("verify", f"--key={public}", pushed).returncode == 0
    debs = {name for name, _ in stock_syft_debs(pushed)}
    assert debs == {"base-files", "busybox-static"}


class _Probe(http.server.BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        _Probe.hits.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"reached\n")

    def log_message(self, format: str, *args: object) -> None:
        return


def _host_address() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
        return str(probe.getsockname()[0])


def test_a_step_reaching_the_network_fails(build_project: Project) -> None:
    server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), _Probe)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = _host_address(), server.server_address[1]
    url = f"http://{host}:{port}/probe"
    try:
        # The control: from the host, the probe answers, so a build that reached it
        # would succeed and this test would fail.
        assert (
            subprocess.run(["curl", "-fsS", url], capture_output=True, check=False).returncode == 0
        )
        _Probe.hits.clear()
        build_project.write_recipe(
            "reaching",
            steps_recipe(
                "reaching",
                f'  - wget -q -T 5 -O "$root/etc/fetched" {url}'
                f' || nc -w 5 {host} {port} > "$root/etc/nc"\n',
            ),
        )
        built = lock_and_build(build_project, "reaching")
    finally:
        server.shutdown()
        server.server_close()
    assert built.returncode == 1
    assert "assemble.sh" in built.stderr and "did not complete successfully" in built.stderr
    # The step ran and was refused a route, rather than failing for some other reason.
    assert "Network is unreachable" in built.stderr
    assert _Probe.hits == []


def test_failing_image_test_names_the_test_and_its_output(build_project: Project) -> None:
    build_project.write_recipe("tiny", TINY.replace('stdout: "^65532"', 'stdout: "^0$"'))
    built = lock_and_build(build_project, "tiny")
    assert built.returncode == 1
    assert "busybox runs as nonroot" in built.stderr
    assert "65532" in built.stderr
    # An image that failed its tests is not left where an accepted one would be.
    assert not (build_project.root / "out" / "tiny" / "oci").exists()
    assert not (build_project.root / "out" / "tiny" / "build.json").exists()


@pytest.mark.parametrize(
    ("package", "member"),
    [
        ("dotdot", "../../escape"),
        ("absolute", "/etc/absolute"),
        ("through-link", "./etc/sneaky/evil"),
    ],
)
def test_hostile_packages_are_refused_naming_package_and_member(
    build_project: Project, package: str, member: str
) -> None:
    build_project.write_recipe(
        "hostile",
        f"name: hostile\n{SOURCES}packages: [{{name: {package}, dependencies: false}}]\n",
    )
    built = lock_and_build(build_project, "hostile")
    assert built.returncode == 1
    assert f"package {package}" in built.stderr and member in built.stderr
    assert not (build_project.root / "out" / "hostile" / "oci").exists()


def test_buildkitd_failing_to_start_gives_its_log_tail(
    build_project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fault injection: a daemon that dies at once, as a broken install would.
    fake = tmp_path / "bin" / "buildkitd"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\n"
        "case \"$1\" in --version) echo 'buildkitd x v0.34.2';; *)\n"
        "echo 'level=fatal msg=\"overlayfs snapshotter cannot be enabled\"'\n"
        "exit 1;; esac\n"
    )
    fake.chmod(0o755)
    monkeypatch.setattr("basekiln._run.tools_bin", lambda: fake.parent)
    assert run_basekiln(build_project, "lock", "tiny").returncode == 0
    result = build_project.cli("build", "tiny")
    assert result.exit_code == 1
    assert "buildkitd exited with code 1" in result.output
    assert "overlayfs snapshotter cannot be enabled" in result.output


def test_interrupted_build_leaves_no_daemon_or_mount(build_project: Project) -> None:
    assert run_basekiln(build_project, "lock", "tiny").returncode == 0
    sandboxes = Path(os.environ["BASEKILN_SANDBOX_DIR"])
    proc = subprocess.Popen(
        [str(BASEKILN), "build", "tiny"],
        cwd=build_project.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not mounts_under(sandboxes):
        time.sleep(0.05)
    assert mounts_under(sandboxes), "the build never reached a running sandbox"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert b"interrupted by SIGTERM" in err
    assert_nothing_leaked(sandboxes)


def test_remote_daemons_must_be_two_and_are_used(build_project: Project, tmp_path: Path) -> None:
    assert run_basekiln(build_project, "lock", "tiny").returncode == 0
    config = build_project.root / "basekiln.toml"
    plain = config.read_text()
    with local_sandbox(PLAIN, tmp_path / "d1") as one, local_sandbox(PLAIN, tmp_path / "d2") as two:
        config.write_text(plain + f'\n[buildkit]\nendpoints = ["{one.endpoint.address}"]\n')
        refused = run_basekiln(build_project, "build", "tiny")
        assert refused.returncode == 2 and "two different daemons" in refused.stderr

        config.write_text(
            plain + "\n[buildkit]\nendpoints = "
            f'["{one.endpoint.address}", "{two.endpoint.address}"]\n'
        )
        built = run_basekiln(build_project, "build", "tiny", "--json")
    assert built.returncode == 0, built.stderr
    result = json.loads(built.stdout)
    assert [b["sandbox"] for b in result["builds"]] == [one.endpoint.address, two.endpoint.address]
    assert result["reproducible"] is True


def _tls_files(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, by openssl."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {n: folder / n for n in ("ca.crt", "ca.key", "server.crt", "server.key")}
    files |= {"client.crt": folder / "client.crt", "client.key": folder / "client.key"}
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", *curve, "-keyout", str(files["ca.key"]), "-out",
            str(files["ca.crt"]), "-days", "2", "-subj", "/CN=test buildkit CA",
            "-addext", "basicConstraints=critical,CA:TRUE")  # fmt: skip
    for role, usage, san in (
        ("server", "serverAuth", "subjectAltName=IP:127.0.0.1\n"),
        ("client", "clientAuth", ""),
    ):
        csr = folder / f"{role}.csr"
        openssl("req", *curve, "-keyout", str(files[f"{role}.key"]), "-out", str(csr),
                "-subj", f"/CN={role}")  # fmt: skip
        ext = folder / f"{role}.ext"
        ext.write_text(f"extendedKeyUsage={usage}\n{san}")
        openssl("x509", "-req", "-in", str(csr), "-CA", str(files["ca.crt"]), "-CAkey",
                str(files["ca.key"]), "-CAcreateserial", "-out", str(files[f"{role}.crt"]),
                "-days", "2", "-extfile", str(ext))  # fmt: skip
    return files


@contextlib.contextmanager
def _tls_daemon(folder: Path, tls: dict[str, Path]) -> Iterator[str]:
    """A buildkitd someone else runs: TCP on loopback, mutual TLS."""
    from basekiln._buildctl import Endpoint, ping
    from basekiln.errors import ToolError
    from basekiln.sandbox import detach_mounts

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    folder.mkdir(parents=True)
    daemon = subprocess.Popen(
        [str(which("buildkitd")), "--root", str(folder / "root"), "--addr", address,
         "--tlscert", str(tls["server.crt"]), "--tlskey", str(tls["server.key"]),
         "--tlscacert", str(tls["ca.crt"]), "--otel-socket-path", str(folder / "otel.sock"),
         "--oci-worker=true", "--containerd-worker=false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        endpoint = Endpoint(address, *(str(tls[n]) for n in ("ca.crt", "client.crt", "client.key")))
        deadline = time.monotonic() + 60
        while True:
            try:
                ping(endpoint, timeout=5)
                break
            except ToolError:
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise
                time.sleep(0.2)
        yield address
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(timeout=60)
        detach_mounts(folder)


def test_remote_daemons_over_tcp_with_tls(build_project: Project, tmp_path: Path) -> None:
    assert run_basekiln(build_project, "lock", "tiny").returncode == 0
    tls = _tls_files(tmp_path / "tls")
    config = build_project.root / "basekiln.toml"
    plain = config.read_text()
    with _tls_daemon(tmp_path / "d1", tls) as one, _tls_daemon(tmp_path / "d2", tls) as two:
        # Without the client certificate the daemons refuse, and the error says which.
        config.write_text(plain + f'\n[buildkit]\nendpoints = ["{one}", "{two}"]\n')
        refused = run_basekiln(build_project, "build", "tiny")
        assert refused.returncode == 1
        assert f"remote BuildKit daemon {one} does not answer" in refused.stderr
        assert "tls_cert" in refused.stderr

        config.write_text(
            plain + f'\n[buildkit]\nendpoints = ["{one}", "{two}"]\n'
            f'tls_ca = "{tls["ca.crt"]}"\ntls_cert = "{tls["client.crt"]}"\n'
            f'tls_key = "{tls["client.key"]}"\n'
        )
        built = run_basekiln(build_project, "build", "tiny", "--json")
    assert built.returncode == 0, built.stderr
    result = json.loads(built.stdout)
    assert [b["sandbox"] for b in result["builds"]] == [one, two]
    assert result["reproducible"] is True
    assert result["buildkit_version"] == "v0.34.2"  # as the daemons report it
    assert result["builds"][1]["perturbations"]["cpus"] == "the remote daemon's own"


def test_stopping_one_double_build_leaves_other_sandboxes_running(tmp_path: Path) -> None:
    from basekiln._buildctl import ping
    from basekiln.errors import ToolError
    from basekiln.sandbox import stop_all

    with (
        local_sandbox(PLAIN, tmp_path / "one", group="first") as first,
        local_sandbox(PLAIN, tmp_path / "two", group="second") as second,
    ):
        stop_all("first")
        time.sleep(0.5)
        ping(second.endpoint)  # still answers
        with pytest.raises(ToolError):
            ping(first.endpoint, timeout=3)
    assert mounts_under(tmp_path) == []


def test_sandboxes_started_at_once_share_no_socket(tmp_path: Path) -> None:
    # buildkitd's trace socket defaults to one path for every daemon; three sandboxes
    # starting together collided on it before each got its own.
    from concurrent.futures import ThreadPoolExecutor

    def start(index: int) -> str:
        with local_sandbox(PLAIN, tmp_path / str(index)) as sandbox:
            return sandbox.endpoint.address

    with ThreadPoolExecutor(max_workers=3) as pool:
        addresses = list(pool.map(start, range(3)))
    assert len(set(addresses)) == 3
    assert mounts_under(tmp_path) == []
