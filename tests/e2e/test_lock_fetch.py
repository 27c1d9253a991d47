"""`basekiln lock` and `basekiln fetch` end to end, against a local signed mirror.

Every bad input has a test that checks the message a person reads, the exit code
(2: fix your input, 1: something failed) and that nothing half-made was left behind.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from basekiln.cache import sha256_file
from basekiln.lockfile import read_lockfile
from tests.conftest import Project, write_project
from tests.fixtures.archive import SECURITY_EPOCH, ArchiveTree, Deb, SigningKey
from tests.fixtures.httpserver import ArchiveServer

HEX64 = re.compile(r"^[0-9a-f]{64}$")
STATIC_PACKAGES = {
    "base-files": "12.4+deb12u5",
    "ca-certificates": "20230311",
    "media-types": "10.0.0",
    "netbase": "6.4",
    "tzdata": "2024b-0+deb12u1",  # from bookworm-updates, newer than bookworm's
}
BASE_PACKAGES = {
    "gcc-12-base": "12.2.0-14",
    "libc6": "2.36-9+deb12u7",
    "libgcc-s1": "12.2.0-14",
    "libssl3": "3.0.13-1~deb12u1",  # from bookworm-security
}
APP_RECIPE = "name: app\npackages: [hello]\n"


def ok(project: Project, *args: str) -> str:
    result = project.cli(*args)
    assert result.exit_code == 0, result.output
    return result.output


def all_locked(project: Project, name: str) -> list[dict[str, object]]:
    data = project.lock_data(name)
    return [*data["packages"], *data.get("tools", [])]


def pinned(project: Project, name: str) -> set[str]:
    """The sha256 of every .deb a lockfile pins (packages and build tools)."""
    return {str(p["sha256"]) for p in all_locked(project, name)}


# Locking.


def test_lock_writes_every_required_field(
    project: Project, archive: ArchiveTree, server: ArchiveServer
) -> None:
    output = ok(project, "lock", "static")
    assert f"static: written ({project.lockfile('static')})" in output

    data = project.lock_data("static")
    recipe_bytes = (project.recipes / "static.yaml").read_bytes()
    assert data["recipe"] == {
        "name": "static",
        "path": "recipes/static.yaml",
        "sha256": hashlib.sha256(recipe_bytes).hexdigest(),
    }
    assert data["parent"] is None
    assert data["platforms"] == ["linux/amd64"]
    assert type(data["source_date_epoch"]) is int
    assert data["source_date_epoch"] == SECURITY_EPOCH  # the newest Release's Date
    assert data["mirrors"] == {
        "debian": [f"{server.url}/debian"],
        "debian-security": [f"{server.url}/debian-security"],
    }
    assert data["integrity"].startswith("sha256:")

    releases = {r["suite"]: r for r in data["releases"]}
    assert sorted(releases) == ["bookworm", "bookworm-security", "bookworm-updates"]
    for suite, release in releases.items():
        served = archive.dists(suite) / "InRelease"
        assert release["url"] == f"{server.url}{archive.url_path(served)}"
        assert release["sha256"] == sha256_file(served)
        assert release["date"] == archive.suites[suite].date

    packages = {p["name"]: p for p in data["packages"]}
    assert {name: p["version"] for name, p in packages.items()} == STATIC_PACKAGES
    for name, pkg in packages.items():
        deb = archive.deb_file(pkg["suite"], name)
        assert pkg["sha256"] == sha256_file(deb)
        assert pkg["size"] == deb.stat().st_size
        assert f"/{pkg['archive']}/{pkg['filename']}" == archive.url_path(deb)
        assert pkg["architecture"] in ("amd64", "all")
        assert pkg["source"] == name
    assert packages["base-files"]["dependencies_followed"] is False
    assert "mawk" not in packages  # base-files was taken without its dependencies
    assert read_lockfile(project.lockfile("static")).recipe.name == "static"


def test_locking_twice_gives_identical_bytes(project: Project) -> None:
    ok(project, "lock")
    first = {name: project.lockfile(name).read_bytes() for name in ("static", "base")}

    assert "static: up to date" in ok(project, "lock")
    ok(project, "lock", "--update")
    assert {name: project.lockfile(name).read_bytes() for name in first} == first

    for name in first:
        project.lockfile(name).unlink()
    ok(project, "lock")
    assert {name: project.lockfile(name).read_bytes() for name in first} == first


def test_child_recipe_on_a_parent(project: Project) -> None:
    output = ok(project, "lock", "base")  # the parent is locked first, unasked
    assert output.index("static: written") < output.index("base: written")

    base = project.lock_data("base")
    static_lock = project.lockfile("static")
    assert base["parent"] == {"recipe": "static", "lockfile_sha256": sha256_file(static_lock)}
    assert project.locked_versions("base") == BASE_PACKAGES  # libc6's Recommends not taken
    assert base["source_date_epoch"] >= project.lock_data("static")["source_date_epoch"]
    libssl = next(p for p in base["packages"] if p["name"] == "libssl3")
    assert (libssl["archive"], libssl["suite"], libssl["source"]) == (
        "debian-security",
        "bookworm-security",
        "openssl",
    )

    # Once the parent holds libc6, the child takes it from there, not again.
    static_recipe = project.recipes / "static.yaml"
    static_recipe.write_text(static_recipe.read_text() + "  - libc6\n")
    ok(project, "lock")
    assert "libc6" in project.locked_versions("static")
    assert project.locked_versions("base") == {"libssl3": "3.0.13-1~deb12u1"}
    assert project.lock_data("base")["parent"]["lockfile_sha256"] == sha256_file(static_lock)


def test_check_names_a_lockfile_whose_recipe_changed(project: Project) -> None:
    ok(project, "lock")
    assert "static: up to date" in ok(project, "lock", "--check")

    before = project.lockfile("static").read_bytes()
    recipe = project.recipes / "static.yaml"
    recipe.write_text(recipe.read_text() + "# a new comment is a new recipe\n")
    result = project.cli("lock", "--check")
    assert result.exit_code == 1, result.output
    assert "static: stale" in result.output
    assert "stale: static.yaml changed since it was locked" in result.output
    assert "base: up to date" in result.output
    assert project.lockfile("static").read_bytes() == before  # --check writes nothing


def test_check_names_a_lockfile_whose_package_left_the_archive(
    project: Project, archive: ArchiveTree
) -> None:
    ok(project, "lock", "static")
    before = project.lockfile("static").read_bytes()
    archive.remove("bookworm", "netbase")

    result = project.cli("lock", "--check", "static")
    assert result.exit_code == 1, result.output
    assert "static: stale" in result.output
    assert "stale: netbase 6.4 is no longer in the archive (offered now: none)" in result.output
    assert project.lockfile("static").read_bytes() == before


def test_check_names_a_missing_lockfile(project: Project) -> None:
    result = project.cli("lock", "--check", "static")
    assert result.exit_code == 1
    assert f"stale: {project.lockfile('static')} does not exist" in result.output
    assert not project.lockfile("static").exists()


def test_check_names_a_child_whose_parent_is_not_locked(project: Project) -> None:
    ok(project, "lock", "base")  # locks static first, as its parent
    project.lockfile("static").unlink()
    result = project.cli("lock", "--check", "base")
    assert result.exit_code == 1, result.output
    assert f"{project.lockfile('static')} does not exist" in result.output
    assert "the parent 'static' is not locked" in result.output


def test_diff_and_update_show_added_removed_and_upgraded(
    project: Project, archive: ArchiveTree
) -> None:
    project.write_recipe("app", APP_RECIPE)
    ok(project, "lock", "app")
    assert project.locked_versions("app")["hello"] == "2.10-3"
    before = project.lockfile("app").read_bytes()

    # hello 2.10-4 swaps its library; lock keeps the pinned world until asked.
    newer = Deb("hello", "2.10-4", depends="libc6 (>= 2.34), libhello-new")
    archive.add("bookworm-updates", newer)
    assert "app: up to date" in ok(project, "lock", "app")

    changes = ["  + libhello-new 2.0-1", "  - libhello-old 1.0-1", "  ~ hello 2.10-3 -> 2.10-4"]
    output = ok(project, "lock", "--diff", "app")
    assert all(line in output.splitlines() for line in changes), output
    assert project.lockfile("app").read_bytes() == before  # --diff alone writes nothing

    report = json.loads(project.cli("lock", "--diff", "--json", "app").stdout)
    (entry,) = report["lockfiles"]
    assert entry["written"] is False
    assert entry["diff"] == {
        "added": [["libhello-new", "2.0-1"]],
        "removed": [["libhello-old", "1.0-1"]],
        "upgraded": [["hello", "2.10-3", "2.10-4"]],
    }

    output = ok(project, "lock", "--update", "app")
    assert "app: written" in output
    assert all(line in output.splitlines() for line in changes), output
    versions = project.locked_versions("app")
    assert (versions["hello"], "libhello-old" in versions) == ("2.10-4", False)
    assert "app: up to date" in ok(project, "lock", "--check", "app")


def test_the_installed_command_finds_its_config_from_a_subfolder(project: Project) -> None:
    done = project.subprocess("lock", "static", cwd=project.recipes)
    assert done.returncode == 0, done.stderr
    assert "static: written" in done.stdout
    assert project.lockfile("static").is_file()

    project.write_recipe("typo", "name: typo\npackages: [netbse]\n")
    done = project.subprocess("lock", "typo", cwd=project.lockfiles)
    assert done.returncode == 2
    assert "'netbse' is not in any of the recipe's suites. Did you mean: netbase" in done.stderr
    assert done.stdout == ""


# How the CLI presents what happened.


def test_a_rewritten_lockfile_is_reported_as_written(project: Project) -> None:
    ok(project, "lock", "static")
    recipe = project.recipes / "static.yaml"
    recipe.write_text(recipe.read_text() + "# changed\n")
    assert "static: written" in ok(project, "lock", "static")


def test_error_messages_are_printed_verbatim(project: Project) -> None:
    project.write_recipe(
        "odd", "name: odd\nsources: [{archive: ubuntu, suite: noble}]\npackages: [netbase]\n"
    )
    result = project.cli("lock", "odd")
    assert result.exit_code == 2
    assert "archive 'ubuntu' is not configured (known: debian, debian-security)" in result.output
    assert "add an [archives.ubuntu] table with its mirrors" in result.output


# Bad recipes: exit 2, nothing written, and the network never touched.


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "name: static\npackages:\n  - netbase\n  - [unclosed\n",
            "static.yaml:5:1: malformed YAML: expected ',' or ']'",
            id="malformed-yaml",
        ),
        pytest.param(
            "name: static\npackages: [netbase]\nentrypoint: [/app]\nusr: nonroot\n",
            "static.yaml:4: usr: unknown field 'usr'; check its spelling",
            id="unknown-field",
        ),
        pytest.param(
            "name: static\npackages:\n  - {name: netbase, deps: false}\narchitectures: [x86]\n",
            "2 problems",
            id="several-problems",
        ),
    ],
)
def test_a_bad_recipe_is_an_input_error(
    project: Project, server: ArchiveServer, text: str, expected: str
) -> None:
    project.write_recipe("static", text)
    result = project.cli("lock", "static")
    assert result.exit_code == 2, result.output
    assert "error: " in result.output
    assert expected in result.output
    assert not project.lockfile("static").exists()
    assert server.count() == 0
    assert project.cached() == {}


def test_several_recipe_problems_each_name_file_line_and_field(project: Project) -> None:
    path = project.write_recipe(
        "static",
        "name: static\npackages:\n  - {name: netbase, deps: false}\narchitectures: [x86]\n",
    )
    result = project.cli("lock", "static")
    assert result.exit_code == 2
    assert f"{path}:3: packages[0].deps: unknown field 'deps'" in result.output
    assert f"{path}:4: architectures[0]: Input should be 'amd64' or 'arm64'" in result.output


def test_unknown_package_suggests_close_names(project: Project) -> None:
    path = project.write_recipe("static", "name: static\npackages: [netbase, libsl3]\n")
    result = project.cli("lock", "static")
    assert result.exit_code == 2, result.output
    assert (
        f"{path}: packages: 'libsl3' is not in any of the recipe's suites. Did you mean: libssl3?"
        in result.output
    )
    assert not project.lockfile("static").exists()
    project.assert_no_leftovers()


def test_unsatisfiable_dependency_names_the_chain(project: Project) -> None:
    path = project.write_recipe("static", "name: static\npackages: [netbase, needs-broken]\n")
    result = project.cli("lock", "static")
    assert result.exit_code == 2, result.output
    assert "cannot satisfy broken 1.0-1's dependency 'libc6 (>= 3.0)'" in result.output
    assert "libc6 offers only 2.36-9+deb12u7" in result.output
    assert f"Chain: {path} → needs-broken → broken (via broken)" in result.output
    assert not project.lockfile("static").exists()
    project.assert_no_leftovers()


# Broken trust: exit 1, nothing written, nothing unverified cached.


def _sign_with_another_key(archive: ArchiveTree, rogue_key: SigningKey) -> None:
    archive.publish("bookworm", key=rogue_key)


def _alter_after_signing(archive: ArchiveTree, rogue_key: SigningKey) -> None:
    path = archive.dists("bookworm") / "InRelease"
    signed = path.read_text()
    assert "Date: Sat, 01 Jun 2024" in signed
    path.write_text(signed.replace("Date: Sat, 01 Jun 2024", "Date: Sat, 08 Jun 2024"))


@pytest.mark.parametrize("tamper", [_sign_with_another_key, _alter_after_signing])
def test_a_bad_inrelease_signature_is_refused(
    project: Project, archive: ArchiveTree, rogue_key: SigningKey, tamper: object
) -> None:
    assert callable(tamper)
    tamper(archive, rogue_key)
    result = project.cli("lock", "static")
    assert result.exit_code == 1, result.output
    assert "/debian/dists/bookworm/InRelease: OpenPGP signature does not verify" in result.output
    assert str(archive.key.keyring) in result.output
    assert not project.lockfile("static").exists()
    assert project.cached() == {}


def test_packages_not_matching_release_is_refused(
    project: Project, archive: ArchiveTree, server: ArchiveServer
) -> None:
    index_dir = archive.index_dir("bookworm")
    # gzip is the format basekiln asks for first (it decompresses fastest).
    honest = gzip.decompress((index_dir / "Packages.gz").read_bytes())
    forged = gzip.compress(honest.replace(b"Version: 6.4\n", b"Version: 6.5\n"), mtime=0)
    server.replace("/debian/dists/bookworm/main/binary-amd64/*", forged)

    result = project.cli("lock", "static")
    assert result.exit_code == 1, result.output
    forged_hash = hashlib.sha256(forged).hexdigest()
    assert f"sha256 is {forged_hash} but the signed Release of bookworm lists" in result.output
    assert "for main/binary-amd64/Packages.gz" in result.output
    assert not project.lockfile("static").exists()
    assert forged_hash not in project.cached()
    project.assert_no_leftovers()


def test_a_release_of_another_suite_is_refused(
    project: Project, archive: ArchiveTree, server: ArchiveServer
) -> None:
    replayed = (archive.dists("bookworm") / "InRelease").read_bytes()
    server.replace("/debian/dists/bookworm-updates/InRelease", replayed)
    result = project.cli("lock", "static")
    assert result.exit_code == 1, result.output
    assert "not 'bookworm-updates'; the mirror is serving the wrong suite" in result.output
    assert not project.lockfile("static").exists()


def test_an_expired_release_is_refused(project: Project, archive: ArchiveTree) -> None:
    suite = archive.suites["bookworm-security"]
    expired = "Tue, 11 Jun 2024 10:00:00 UTC"
    archive.suites["bookworm-security"] = dataclasses.replace(suite, valid_until=expired)
    archive.publish("bookworm-security")
    result = project.cli("lock", "static")
    assert result.exit_code == 1, result.output
    assert f"Release expired at {expired} (Valid-Until)" in result.output
    assert not project.lockfile("static").exists()


def test_transient_errors_while_locking_are_retried(
    project: Project, server: ArchiveServer
) -> None:
    server.fail("/debian/dists/bookworm/InRelease", 503, times=2)
    ok(project, "lock", "static")
    assert [r.status for r in server.requests("/debian/dists/bookworm/InRelease")] == [
        503,
        503,
        200,
    ]


def test_a_mirror_that_keeps_failing_is_a_failure(project: Project, server: ArchiveServer) -> None:
    server.fail("/debian/dists/bookworm/InRelease", 503, times=None)
    result = project.cli("lock", "static")
    assert result.exit_code == 1, result.output
    assert "could not fetch dists/bookworm/InRelease from any mirror" in result.output
    assert server.count("/debian/dists/bookworm/InRelease") == 3  # `attempts` in the config
    assert not project.lockfile("static").exists()


# A lockfile edited by hand.


def test_a_hand_edited_lockfile_is_refused(project: Project, server: ArchiveServer) -> None:
    ok(project, "lock", "static")
    path = project.lockfile("static")
    path.write_text(path.read_text().replace('"version": "6.4"', '"version": "6.5"'))
    edited = path.read_bytes()
    server.reset_log()

    result = project.cli("fetch", "static")
    assert result.exit_code == 2, result.output
    assert f"{path}: integrity is " in result.output
    assert "the lockfile was edited by hand" in result.output
    assert server.count("*/pool/*") == 0
    assert not any(name in project.cached() for name in pinned(project, "static"))

    result = project.cli("lock", "static")
    assert result.exit_code == 2, result.output
    assert "edited by hand" in result.output

    result = project.cli("lock", "--check", "static")
    assert result.exit_code == 1, result.output
    assert "stale: " in result.output and "edited by hand" in result.output
    assert path.read_bytes() == edited

    ok(project, "lock", "--update", "static")
    assert read_lockfile(path).recipe.name == "static"
    project.assert_no_leftovers()


# Fetching.


@pytest.fixture
def locked(project: Project, server: ArchiveServer) -> Project:
    """The project with both recipes locked and the mirror's log cleared."""
    ok(project, "lock")
    server.reset_log()
    return project


def test_fetch_downloads_in_parallel_into_the_cache(locked: Project, server: ArchiveServer) -> None:
    server.delay("*/pool/*", 0.2)  # hold responses so parallel requests overlap
    wanted = pinned(locked, "static") | pinned(locked, "base")

    sizes = {p["sha256"]: p["size"] for n in ("static", "base") for p in all_locked(locked, n)}

    report = json.loads(locked.cli("fetch", "--json").stdout)
    assert report == {
        "downloaded": len(wanted),
        "already_cached": 0,
        "bytes": sum(int(str(size)) for size in sizes.values()),
        "cache": str(locked.cache),
    }
    for sha256 in wanted:
        entry = locked.cache / "sha256" / sha256
        assert sha256_file(entry) == sha256
    assert server.count("*/pool/*") == len(wanted)
    assert server.max_in_flight >= 2
    assert list((locked.cache / "partial").iterdir()) == []


def test_a_warm_cache_touches_no_network(locked: Project, server: ArchiveServer) -> None:
    ok(locked, "fetch")
    server.reset_log()

    output = ok(locked, "fetch")
    assert output.startswith("0 downloaded (0 bytes), ")
    assert server.count() == 0

    # Only what the cache lacks is fetched again.
    one = sorted(pinned(locked, "static"))[0]
    (locked.cache / "sha256" / one).unlink()
    assert ok(locked, "fetch").startswith("1 downloaded")
    assert server.count() == 1


def test_basekiln_cache_is_respected(
    locked: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default_cache = locked.cache
    shutil.rmtree(default_cache)
    elsewhere = tmp_path / "elsewhere"
    monkeypatch.setenv("BASEKILN_CACHE", str(elsewhere))

    output = ok(locked, "fetch")
    assert f"already cached in {elsewhere}" in output
    assert pinned(locked, "static") <= set(os.listdir(elsewhere / "sha256"))
    assert not default_cache.exists()


def test_mirror_fallback(
    tmp_path: Path, archive: ArchiveTree, server: ArchiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BASEKILN_CACHE", raising=False)
    empty = tmp_path / "empty-mirror"
    empty.mkdir()
    with ArchiveServer(empty) as dead:
        mirrors = {
            name: [f"{dead.url}/{name}", f"{server.url}/{name}"]
            for name in ("debian", "debian-security")
        }
        project = write_project(tmp_path / "fallback", mirrors, archive.key.keyring)
        project.write_recipe("app", APP_RECIPE)
        ok(project, "lock", "app")
        assert project.lock_data("app")["mirrors"] == mirrors

        dead.reset_log()
        server.reset_log()
        ok(project, "fetch", "app")
        wanted = pinned(project, "app")
        assert {r.status for r in dead.requests()} == {404}
        assert dead.count("*/pool/*") == len(wanted)
        assert server.count("*/pool/*") == len(wanted)
        assert wanted <= set(project.cached())


def test_transient_503s_are_retried(
    locked: Project, archive: ArchiveTree, server: ArchiveServer
) -> None:
    path = archive.url_path(archive.deb_file("bookworm", "netbase"))
    server.fail(path, 503, times=2)
    ok(locked, "fetch", "static")
    assert [r.status for r in server.requests(path)] == [503, 503, 200]
    assert sha256_file(archive.deb_file("bookworm", "netbase")) in locked.cached()


def test_a_transient_truncation_is_resumed(
    locked: Project, archive: ArchiveTree, server: ArchiveServer
) -> None:
    deb = archive.deb_file("bookworm-updates", "tzdata")
    path = archive.url_path(deb)
    server.truncate(path, times=1)
    ok(locked, "fetch", "static")

    first, second = server.requests(path)
    assert (first.range, first.status) == (None, 200)
    assert second.status == 206
    assert second.range is not None and second.range.startswith("bytes=")
    assert int(second.range.removeprefix("bytes=").rstrip("-")) > 0
    assert sha256_file(locked.cache / "sha256" / sha256_file(deb)) == sha256_file(deb)


def test_a_truncated_download_fails_then_resumes(
    locked: Project, archive: ArchiveTree, server: ArchiveServer
) -> None:
    deb = archive.deb_file("bookworm-updates", "tzdata")
    digest = sha256_file(deb)
    path = archive.url_path(deb)
    server.truncate(path, times=None, keep=0.9)

    result = locked.cli("fetch", "static")
    assert result.exit_code == 1, result.output
    expected = "tzdata 2024b-0+deb12u1 (pool/main/t/tzdata/tzdata_2024b-0+deb12u1_all.deb)"
    assert f"{expected} could not be fetched from any mirror" in result.output
    assert "peer closed connection" in result.output
    assert digest not in locked.cached()
    locked.assert_no_leftovers()
    partial = locked.cache / "partial" / f"{digest}.part"
    kept = partial.stat().st_size
    assert 0 < kept < deb.stat().st_size  # kept, to resume from

    server.clear_faults()
    server.reset_log()
    ok(locked, "fetch", "static")
    (resumed,) = server.requests(path)
    assert (resumed.range, resumed.status) == (f"bytes={kept}-", 206)
    assert sha256_file(locked.cache / "sha256" / digest) == digest
    assert not partial.exists()


@pytest.mark.parametrize("extra", [10, -10], ids=["longer", "shorter"])
def test_a_stale_partial_file_starts_over_instead_of_blaming_the_mirror(
    locked: Project, archive: ArchiveTree, server: ArchiveServer, extra: int
) -> None:
    deb = archive.deb_file("bookworm", "netbase")
    digest = sha256_file(deb)
    partial = locked.cache / "partial" / f"{digest}.part"
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(b"x" * (deb.stat().st_size + extra))  # not this file's bytes

    ok(locked, "fetch", "static")
    assert sha256_file(locked.cache / "sha256" / digest) == digest
    first, second = server.requests(archive.url_path(deb))
    assert first.range == f"bytes={deb.stat().st_size + extra}-"
    assert (second.range, second.status) == (None, 200)
    assert not partial.exists()


def test_a_deb_with_other_bytes_is_refused(
    locked: Project, archive: ArchiveTree, server: ArchiveServer
) -> None:
    deb = archive.deb_file("bookworm", "netbase")
    digest = sha256_file(deb)
    honest = deb.read_bytes()
    forged = honest[:-1] + bytes([honest[-1] ^ 0xFF])  # same size, one byte off
    server.replace(archive.url_path(deb), forged)

    result = locked.cli("fetch", "static")
    assert result.exit_code == 1, result.output
    forged_hash = hashlib.sha256(forged).hexdigest()
    assert f"has sha256 {forged_hash}, the lockfile pins {digest}" in result.output
    assert "Nothing was cached." in result.output
    assert digest not in locked.cached() and forged_hash not in locked.cached()
    assert list((locked.cache / "partial").glob("*.part")) == []
    locked.assert_no_leftovers()


def test_a_package_gone_from_every_mirror_names_each_url_tried(
    locked: Project, archive: ArchiveTree, server: ArchiveServer, tmp_path: Path
) -> None:
    deb = archive.deb_file("bookworm", "netbase")
    digest = sha256_file(deb)
    deb.unlink()  # gone from the archive the lockfile was made against
    empty = tmp_path / "empty-mirror"
    empty.mkdir()
    with ArchiveServer(empty) as extra:
        # A mirror named only in basekiln.toml is tried after the lockfile's own.
        config = locked.root / "basekiln.toml"
        ours = json.dumps([f"{server.url}/debian"])
        assert ours in config.read_text()
        config.write_text(
            config.read_text().replace(
                ours, json.dumps([f"{server.url}/debian", f"{extra.url}/debian"])
            )
        )
        result = locked.cli("fetch", "static")
    assert result.exit_code == 1, result.output
    assert "netbase" in result.output and "could not be fetched from any mirror" in result.output
    filename = archive.url_path(deb).removeprefix("/debian/")
    for mirror in (server.url, extra.url):
        assert f"{mirror}/debian/{filename}" in result.output
    assert "404" in result.output
    assert "`basekiln lock --update`" in result.output
    assert digest not in locked.cached()
    locked.assert_no_leftovers()


def test_fetch_needs_a_lockfile(project: Project, server: ArchiveServer) -> None:
    result = project.cli("fetch", "static")
    assert result.exit_code == 2
    assert "no lockfile; run `basekiln lock static`" in result.output
    assert server.count() == 0


# Debian's real archive.


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def real_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    """A project on Debian's own mirrors and keyring, with a throwaway cache."""
    mirrors = {
        "debian": ["http://deb.debian.org/debian"],
        "debian-security": ["http://deb.debian.org/debian-security"],
    }
    keyring = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
    monkeypatch.setenv("BASEKILN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BASEKILN_CONFIG", raising=False)
    return write_project(tmp_path / "real", mirrors, keyring, timeout=60, attempts=4)


@pytest.mark.network
def test_lock_the_real_static_recipe(real_project: Project) -> None:
    # The repository's recipe by path (its tests name files beside it); the lockfile
    # lands in the throwaway project.
    recipe = str(REPO / "recipes" / "static.yaml")
    ok(real_project, "lock", recipe)
    data = real_project.lock_data("static")
    names = {p["name"] for p in data["packages"]}
    assert {"base-files", "tzdata", "ca-certificates"} <= names
    assert all(HEX64.match(p["sha256"]) for p in all_locked(real_project, "static"))
    assert all(HEX64.match(r["sha256"]) for r in data["releases"])
    assert all(p["filename"].startswith("pool/") and p["size"] > 0 for p in data["packages"])
    assert {r["suite"] for r in data["releases"]} == {
        "bookworm",
        "bookworm-updates",
        "bookworm-security",
    }
    assert data["source_date_epoch"] > 1_686_000_000  # after bookworm's release
    assert "up to date" in ok(real_project, "lock", "--check", recipe)
