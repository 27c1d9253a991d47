"""SLSA provenance and the reproducibility statement, built from a BuildResult."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from basekiln import __version__
from basekiln.errors import ExitCode, NotReproducibleError, VerificationError
from basekiln.lockfile import LockedPackage, LockedRelease, Lockfile, ParentRef, RecipeRef
from basekiln.provenance import (
    BUILD_TYPE,
    REPRODUCIBLE_PREDICATE,
    SLSA_PROVENANCE,
    STATEMENT_TYPE,
    build_provenance,
    build_reproducibility_statement,
    deb_purl,
    statement_bytes,
    verify_provenance_matches,
)
from basekiln.results import BuildResult, SandboxBuild

DIGEST = "sha256:" + "d" * 64
PARENT_DIGEST = "sha256:" + "e" * 64
IMAGE = "registry.example/basekiln/base"
INVOCATION = "urn:uuid:00000000-0000-4000-8000-000000000000"


def package(
    name: str, version: str, sha: str, arch: str = "amd64", suite: str = "bookworm"
) -> LockedPackage:
    return LockedPackage(
        name=name,
        version=version,
        architecture=arch,
        platform="linux/amd64",
        sha256=sha * 64,
        size=2048,
        filename=f"pool/main/{name[0]}/{name}/{name}_{version.split(':')[-1]}_{arch}.deb",
        source=name,
        source_version=version,
        archive="debian",
        suite=suite,
        depends_on=[],
        dependencies_followed=True,
    )


def release(suite: str, sha: str) -> LockedRelease:
    return LockedRelease(
        archive="debian",
        suite=suite,
        url=f"http://deb.debian.org/debian/dists/{suite}/InRelease",
        sha256=sha * 64,
        date="Sat, 11 Jul 2026 10:16:37 UTC",
    )


STATIC = Lockfile(
    recipe=RecipeRef(name="static", path="recipes/static.yaml", sha256="1" * 64),
    parent=None,
    platforms=["linux/amd64"],
    source_date_epoch=1_780_000_000,
    mirrors={"debian": ["http://deb.debian.org/debian"]},
    releases=[release("bookworm", "2"), release("bookworm-updates", "3")],
    packages=[
        package("tzdata", "2024a-0+deb12u1", "4", "all"),
        package("base-files", "12.4+deb12u5", "5"),
    ],
)
BASE = Lockfile(
    recipe=RecipeRef(name="base", path="recipes/base.yaml", sha256="6" * 64),
    parent=ParentRef(recipe="static", lockfile_sha256="7" * 64),
    platforms=["linux/amd64"],
    source_date_epoch=1_780_000_000,
    mirrors={"debian": ["http://deb.debian.org/debian/"]},
    releases=[release("bookworm", "2")],
    packages=[
        package("libc6", "2.36-9+deb12u9", "8"),
        package("libssl3", "3.0.15-1~deb12u1", "9"),
        package("libfoo1", "1:2.0+dfsg-1", "a"),
    ],
    tools=[package("busybox-static", "1:1.35.0-4+b3", "f")],
)
RESULT = BuildResult(
    recipe="base",
    recipe_path="recipes/base.yaml",
    recipe_sha256="6" * 64,
    lockfile_path="lockfiles/base.lock.json",
    lockfile_sha256="b" * 64,
    platform="linux/amd64",
    digest=DIGEST,
    reproducible=True,
    builds=(
        SandboxBuild("sandbox-a", DIGEST, {}, "/tmp/a", 31.5),
        SandboxBuild(
            "sandbox-b",
            DIGEST,
            {"TZ": "Pacific/Kiritimati", "umask": "0077", "hostname": "twin"},
            "/tmp/b",
            33.0,
        ),
    ),
    oci_layout="/tmp/a",
    buildkit_version="v0.17.3",
    source_date_epoch=1_780_000_000,
    started_on="2026-12-03T10:00:00Z",
    finished_on="2026-12-03T10:01:05Z",
    seconds=65.0,
    parent_digest=PARENT_DIGEST,
)


def provenance(**overrides: Any) -> dict[str, Any]:
    result = overrides.pop("result", RESULT)
    return build_provenance(result, [BASE, STATIC], IMAGE, invocation_id=INVOCATION, **overrides)


# -- provenance -----------------------------------------------------------------------


def test_provenance_is_a_slsa_v1_statement_about_the_image() -> None:
    statement = provenance()

    assert statement["_type"] == STATEMENT_TYPE
    assert statement["predicateType"] == SLSA_PROVENANCE
    assert statement["subject"] == [{"name": IMAGE, "digest": {"sha256": "d" * 64}}]
    assert set(statement["predicate"]) == {"buildDefinition", "runDetails"}


def test_provenance_build_definition() -> None:
    definition = provenance()["predicate"]["buildDefinition"]

    assert definition["buildType"] == BUILD_TYPE
    assert definition["externalParameters"] == {
        "recipe": {"name": "base", "path": "recipes/base.yaml", "sha256": "6" * 64},
        "lockfile": {"path": "lockfiles/base.lock.json", "sha256": "b" * 64},
        "platform": "linux/amd64",
    }
    internal = definition["internalParameters"]
    assert internal["sourceDateEpoch"] == 1_780_000_000
    assert internal["buildkitVersion"] == "v0.17.3"
    assert [b["sandbox"] for b in internal["builds"]] == ["sandbox-a", "sandbox-b"]
    assert internal["builds"][1]["perturbations"]["TZ"] == "Pacific/Kiritimati"


def test_provenance_run_details() -> None:
    details = provenance()["predicate"]["runDetails"]

    assert details["builder"]["version"] == {"basekiln": __version__, "buildkit": "v0.17.3"}
    assert details["builder"]["id"].startswith("https://")
    assert details["metadata"] == {
        "invocationId": INVOCATION,
        "startedOn": "2026-12-03T10:00:00Z",
        "finishedOn": "2026-12-03T10:01:05Z",
    }
    twins = [b for b in details["byproducts"] if b["annotations"]["twin"]]
    assert [(t["annotations"]["sandbox"], t["digest"]) for t in twins] == [
        ("sandbox-b", {"sha256": "d" * 64})
    ]


def test_resolved_dependencies_hold_every_deb_release_and_the_parent() -> None:
    deps = provenance()["predicate"]["buildDefinition"]["resolvedDependencies"]

    debs = {d["digest"]["sha256"] for d in deps if d["uri"].startswith("pkg:deb/")}
    locked = {p.sha256 for lock in (BASE, STATIC) for p in lock.packages}
    assert debs == locked | {"f" * 64}
    releases = [d["uri"] for d in deps if d["name"] == "InRelease"]
    assert releases == [
        "http://deb.debian.org/debian/dists/bookworm-updates/InRelease",
        "http://deb.debian.org/debian/dists/bookworm/InRelease",
    ]
    assert deps[-1] == {
        "name": "static",
        "uri": "pkg:oci/static",
        "digest": {"sha256": "e" * 64},
        "annotations": {"role": "parent-image", "lockfileSha256": "7" * 64},
    }


def test_a_deb_dependency_names_its_purl_mirror_url_and_recipe() -> None:
    deps = provenance()["predicate"]["buildDefinition"]["resolvedDependencies"]

    (libfoo,) = [d for d in deps if d["name"].startswith("libfoo1_")]
    assert libfoo["uri"] == "pkg:deb/debian/libfoo1@1:2.0%2Bdfsg-1?arch=amd64"
    assert libfoo["downloadLocation"] == (
        "http://deb.debian.org/debian/pool/main/l/libfoo1/libfoo1_2.0+dfsg-1_amd64.deb"
    )
    assert libfoo["annotations"]["recipe"] == "base"
    (tzdata,) = [d for d in deps if d["name"].startswith("tzdata_")]
    assert tzdata["annotations"]["recipe"] == "static"
    assert tzdata["uri"].endswith("?arch=all")


def test_only_this_builds_tools_are_dependencies() -> None:
    static = STATIC.model_copy(update={"tools": [package("ldconfig-fake", "1.0-1", "0")]})

    statement = build_provenance(RESULT, [BASE, static], IMAGE, invocation_id=INVOCATION)

    deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
    tools = [d for d in deps if d.get("annotations", {}).get("role") == "build-tool"]
    assert [(t["name"], t["annotations"]["recipe"]) for t in tools] == [
        ("busybox-static_1.35.0-4+b3_amd64.deb", "base")
    ]


def test_provenance_without_a_parent_has_no_parent_image() -> None:
    result = replace(RESULT, recipe="static", parent_digest=None)

    statement = build_provenance(result, [STATIC], IMAGE, invocation_id=INVOCATION)

    deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert all(not d["uri"].startswith("pkg:oci/") for d in deps)


def test_a_child_build_must_record_its_parent_digest() -> None:
    with pytest.raises(ValueError, match="no parent digest"):
        provenance(result=replace(RESULT, parent_digest=None))


def test_provenance_is_deterministic_apart_from_invocation_id() -> None:
    first = build_provenance(RESULT, [BASE, STATIC], IMAGE)
    second = build_provenance(RESULT, [BASE, STATIC], IMAGE)

    ids = [s["predicate"]["runDetails"]["metadata"].pop("invocationId") for s in (first, second)]
    assert ids[0] != ids[1]
    assert statement_bytes(first) == statement_bytes(second)
    assert statement_bytes(provenance()) == statement_bytes(provenance())


def test_provenance_does_not_depend_on_lockfile_list_order() -> None:
    shuffled = BASE.model_copy(update={"packages": list(reversed(BASE.packages))})

    statement = build_provenance(RESULT, [shuffled, STATIC], IMAGE, invocation_id=INVOCATION)

    assert statement_bytes(statement) == statement_bytes(provenance())


def test_statement_bytes_are_canonical_json() -> None:
    data = statement_bytes(provenance())

    assert data.endswith(b"}\n")
    assert json.loads(data) == provenance()
    assert statement_bytes(json.loads(data)) == data


def test_a_malformed_digest_is_refused() -> None:
    with pytest.raises(ValueError, match="not a sha256 digest"):
        provenance(result=replace(RESULT, digest="sha256:abc"))


def test_deb_purl_encodes_like_syft() -> None:
    pkg = package("libstdc++6", "12.2.0-14+deb12u1", "c")

    assert deb_purl(pkg) == "pkg:deb/debian/libstdc%2B%2B6@12.2.0-14%2Bdeb12u1?arch=amd64"


# -- reproducibility statement --------------------------------------------------------


def test_reproducibility_statement() -> None:
    statement = build_reproducibility_statement(RESULT, IMAGE)

    assert statement["_type"] == STATEMENT_TYPE
    assert statement["predicateType"] == REPRODUCIBLE_PREDICATE
    assert statement["subject"] == [{"name": IMAGE, "digest": {"sha256": "d" * 64}}]
    predicate = statement["predicate"]
    assert predicate["matched"] is True
    assert predicate["digest"] == DIGEST
    assert predicate["compared"] == "oci-manifest-digest"
    assert [(b["sandbox"], b["digest"]) for b in predicate["builds"]] == [
        ("sandbox-a", DIGEST),
        ("sandbox-b", DIGEST),
    ]
    assert predicate["builds"][1]["perturbations"]["umask"] == "0077"
    assert predicate["lockfile"]["sha256"] == "b" * 64
    assert statement_bytes(statement) == statement_bytes(
        build_reproducibility_statement(RESULT, IMAGE)
    )


def test_no_reproducibility_statement_for_differing_builds() -> None:
    other = replace(RESULT.builds[1], digest="sha256:" + "f" * 64)
    result = replace(RESULT, builds=(RESULT.builds[0], other))

    with pytest.raises(NotReproducibleError, match="sandbox-b: sha256:f") as caught:
        build_reproducibility_statement(result, IMAGE)
    assert caught.value.exit_code == ExitCode.NOT_REPRODUCIBLE


def test_no_reproducibility_statement_for_a_single_build() -> None:
    with pytest.raises(NotReproducibleError):
        build_reproducibility_statement(replace(RESULT, builds=RESULT.builds[:1]), IMAGE)


# -- verify_provenance_matches --------------------------------------------------------


def test_verify_provenance_matches_its_inputs() -> None:
    verify_provenance_matches(provenance(), "6" * 64, "b" * 64, digest=DIGEST)


def test_verify_provenance_names_every_difference() -> None:
    with pytest.raises(VerificationError) as caught:
        verify_provenance_matches(provenance(), "0" * 64, "0" * 64, digest="sha256:" + "0" * 64)

    message = caught.value.message
    assert caught.value.exit_code == ExitCode.VERIFICATION
    assert "recipe sha256 is '" + "6" * 64 in message
    assert "lockfile sha256 is '" + "b" * 64 in message
    assert "subject digests are" in message


def test_verify_provenance_rejects_another_kind_of_statement() -> None:
    statement = build_reproducibility_statement(RESULT, IMAGE)

    with pytest.raises(VerificationError, match="predicateType") as caught:
        verify_provenance_matches(statement, "6" * 64, "b" * 64)
    assert "buildType is None" in caught.value.message


def test_verify_provenance_survives_garbage() -> None:
    with pytest.raises(VerificationError, match="_type"):
        verify_provenance_matches(
            {"predicate": [1, 2], "subject": "x"}, "6" * 64, "b" * 64, digest=DIGEST
        )
