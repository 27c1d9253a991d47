"""What `render` produces: isolation and inputs are visible in the Dockerfile itself."""

from __future__ import annotations

import re
from email.utils import parsedate_to_datetime
from pathlib import Path

from basekiln.assemble import BuildInputs, group_text, identity, passwd_text, snapshot_sources
from basekiln.lockfile import LockedPackage, read_lockfile
from basekiln.recipe import Recipe, load_recipe
from basekiln.render import (
    GeneratedFile,
    render_assemble_script,
    render_dockerfile,
    templates_digest,
    unpack_steps,
)

RECIPE = Recipe.model_validate(
    {
        "name": "web",
        "parent": "base",
        "packages": [
            "libc6",
            {
                "name": "ca-certificates",
                "dependencies": False,
                "paths": ["/usr/share/ca-certificates"],
            },
        ],
        "drop": ["/usr/share/doc"],
        "env": {"A": 'quoted "value"'},
        "user": "65532",
        "entrypoint": ["/app"],
        "users": [{"name": "nonroot", "uid": 65532}],
    }
)


def _pkg(name: str) -> LockedPackage:
    return LockedPackage(
        name=name,
        version="1",
        architecture="amd64",
        platform="linux/amd64",
        sha256="a" * 64,
        size=1,
        filename=f"pool/{name}.deb",
        source=name,
        source_version="1",
        archive="debian",
        suite="bookworm",
        depends_on=[],
        dependencies_followed=True,
    )


def test_every_run_is_offline_and_every_from_is_allowed() -> None:
    dockerfile = render_dockerfile(
        RECIPE,
        "recipes/web.yaml",
        "lockfiles/web.lock.json",
        True,
        {"org.opencontainers.image.title": "web"},
    )
    runs = [line for line in dockerfile.splitlines() if line.startswith("RUN")]
    assert runs and all("--network=none" in line for line in runs)
    sources = re.findall(r"^FROM (\S+)", dockerfile, flags=re.MULTILINE)
    assert set(sources) <= {"scratch", "tools", "parent"}
    assert 'ENV A="quoted \\"value\\""' in dockerfile
    assert 'ENTRYPOINT ["/app"]' in dockerfile


def test_assembly_unpacks_only_locked_files_and_the_chosen_paths() -> None:
    steps = unpack_steps(RECIPE, [_pkg("libc6"), _pkg("ca-certificates")])
    script = render_assemble_script(
        RECIPE, "recipes/web.yaml", steps, [GeneratedFile("etc/passwd", b"")], [], ca_bundle=True
    )
    assert f"unpack libc6 {'a' * 64}\n" in script
    assert f"unpack ca-certificates {'a' * 64} usr/share/ca-certificates\n" in script
    assert '$bb rm -rf "$root"/usr/share/doc' in script
    assert "place etc/passwd 0:0 0644" in script
    assert "ca-certificates.crt" in script


def test_identity_merges_the_parent_chain_and_adds_user_groups() -> None:
    parent = Recipe.model_validate(
        {"name": "base", "users": [{"name": "root", "uid": 0, "gid": 0, "home": "/root"}]}
    )
    users, groups = identity((parent, RECIPE))
    assert passwd_text(users).decode().splitlines() == [
        "root:x:0:0:root:/root:/sbin/nologin",
        "nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin",
    ]
    assert group_text(groups).decode().splitlines() == ["root:x:0:", "nonroot:x:65532:"]


def test_templates_digest_is_stable() -> None:
    assert templates_digest() == templates_digest()
    assert len(templates_digest()) == 64


def test_snapshot_sources_point_at_the_lockfile_s_newest_inrelease_per_archive() -> None:
    root = Path(__file__).resolve().parents[2]
    recipe = load_recipe(root / "recipes" / "debian-minimal.yaml").recipe
    lock = read_lockfile(root / "lockfiles" / "debian-minimal.lock.json")
    inputs = BuildInputs(recipe, "recipes/debian-minimal.yaml", lock,
                         "lockfiles/debian-minimal.lock.json", "0" * 64, (recipe,),
                         "linux/amd64", None)  # fmt: skip
    text = snapshot_sources(inputs).decode()

    stamps = {}
    for release in lock.releases:
        when = parsedate_to_datetime(release.date).strftime("%Y%m%dT%H%M%SZ")
        stamps[release.archive] = max(when, stamps.get(release.archive, when))
    for archive, stamp in stamps.items():
        assert f"URIs: http://snapshot.debian.org/archive/{archive}/{stamp}/\n" in text
    suites = re.findall(r"^Suites: (.*)$", text, re.M)
    assert sorted(suites) == ["bookworm bookworm-updates", "bookworm-security"]
