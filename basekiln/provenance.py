"""SLSA v1 provenance and a reproducibility statement for a double-built image.

Both are in-toto Statements v1 built as plain dicts; `statement_bytes` writes them as
canonical JSON. Everything in them derives from the BuildResult and the lockfiles
except `runDetails.metadata.invocationId`, so the same build gives the same statement
when the same invocation id is passed.

Build type `https://basekiln.dev/build-types/double-build/v1`
------------------------------------------------------------------
An image built by basekiln from a recipe and its lockfile, twice, in two fresh BuildKit
sandboxes, the second perturbed; the subject is the per-platform manifest digest both
builds produced.

externalParameters (what the person who started the build chose):
  recipe     {name, path, sha256}: the recipe file, path relative to the catalogue root.
  lockfile   {path, sha256}: the lockfile the build consumed, which pins every input.
  platform   the OCI platform built, e.g. `linux/amd64`.
  revision   the git commit that last touched the recipe and lockfile, when both were
             committed (it is also the image's `org.opencontainers.image.revision`).

internalParameters (what basekiln chose; a rebuild must match them to reproduce):
  sourceDateEpoch   SOURCE_DATE_EPOCH given to BuildKit (from the lockfile).
  buildkitVersion   the BuildKit version both sandboxes ran.
  builds            one entry per sandbox, in build order: {sandbox, perturbations},
                    where perturbations maps a perturbed setting (time zone, umask,
                    locale, hostname, build path, CPU count) to its value.

resolvedDependencies: every `.deb` the image contains, along the parent chain, and
the tool `.deb`s this build ran (busybox, ldconfig; the lockfile's `tools`): uri is
its purl `pkg:deb/debian/NAME@VERSION?arch=ARCH`, downloadLocation its first mirror
URL, digest its sha256, annotations {recipe: whose lockfile pins it, role: `content`
or `build-tool`, archive, suite}. Then every `InRelease` those lockfiles were resolved
against (uri its URL, digest its sha256), and the parent image, if any (uri
`pkg:oci/RECIPE`, digest its manifest sha256, annotations {role: `parent-image`,
lockfileSha256}).

byproducts: one entry per sandbox build, `build-1`, `build-2`…, with its digest; the
second and later builds are the twins that confirm the first.

Predicate type `https://basekiln.dev/attestations/reproducible/v1`
-----------------------------------------------------------------
States that independent builds of the subject gave the same digest:
  recipe, lockfile, platform, sourceDateEpoch, buildkitVersion: as above.
  compared   what was compared: `oci-manifest-digest` (the per-platform manifest).
  builds     [{sandbox, perturbations, digest}] for every build, in order.
  digest     the digest every build produced.
  matched    true; basekiln does not write this statement for builds that differ.
  verifier   {id, version: {basekiln}}; finishedOn: when the second build finished.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from basekiln import __version__
from basekiln.errors import NotReproducibleError, VerificationError
from basekiln.lockfile import LockedPackage, LockedRelease, Lockfile
from basekiln.results import BuildResult

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://basekiln.dev/build-types/double-build/v1"
REPRODUCIBLE_PREDICATE = "https://basekiln.dev/attestations/reproducible/v1"
DEFAULT_BUILDER_ID = "https://basekiln.dev/builders/local/v1"
COMPARED = "oci-manifest-digest"

_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")

Json = dict[str, Any]


def build_provenance(
    result: BuildResult,
    chain: Sequence[Lockfile],
    image: str,
    *,
    invocation_id: str | None = None,
    builder_id: str = DEFAULT_BUILDER_ID,
) -> Json:
    """A SLSA v1 provenance Statement for `image` at `result.digest`.

    `chain` is the image's own lockfile followed by its parents' (see
    `sbom.load_lock_chain`). `invocation_id` defaults to a fresh random URN.
    """
    if not chain:
        raise ValueError("build_provenance needs at least the image's own lockfile")
    definition = {
        "buildType": BUILD_TYPE,
        "externalParameters": _external_parameters(result),
        "internalParameters": {
            "sourceDateEpoch": result.source_date_epoch,
            "buildkitVersion": result.buildkit_version,
            "builds": [
                {"sandbox": b.sandbox, "perturbations": b.perturbations} for b in result.builds
            ],
        },
        "resolvedDependencies": resolved_dependencies(result, chain),
    }
    run_details = {
        "builder": {
            "id": builder_id,
            "version": {"basekiln": __version__, "buildkit": result.buildkit_version},
        },
        "metadata": {
            "invocationId": invocation_id or uuid.uuid4().urn,
            "startedOn": result.started_on,
            "finishedOn": result.finished_on,
        },
        "byproducts": [
            {
                "name": f"build-{i}",
                "digest": _digest_set(b.digest),
                "annotations": {"sandbox": b.sandbox, "twin": i > 1},
            }
            for i, b in enumerate(result.builds, start=1)
        ],
    }
    predicate = {"buildDefinition": definition, "runDetails": run_details}
    return _statement(image, result.digest, SLSA_PROVENANCE, predicate)


def build_reproducibility_statement(
    result: BuildResult, image: str, *, builder_id: str = DEFAULT_BUILDER_ID
) -> Json:
    """An in-toto Statement that every build of `result` gave the same digest.

    Refuses (NotReproducibleError) unless there were at least two builds and each
    produced `result.digest`, whatever `result.reproducible` claims.
    """
    digests = {b.digest for b in result.builds}
    if len(result.builds) < 2 or digests != {result.digest}:
        seen = ", ".join(f"{b.sandbox}: {b.digest}" for b in result.builds) or "no builds"
        raise NotReproducibleError(
            f"{result.recipe}: cannot state reproducibility, the builds gave {seen} "
            f"(expected two or more builds of {result.digest}); see the build report"
        )
    external = _external_parameters(result)
    predicate = {
        **external,
        "sourceDateEpoch": result.source_date_epoch,
        "buildkitVersion": result.buildkit_version,
        "compared": COMPARED,
        "builds": [
            {"sandbox": b.sandbox, "perturbations": b.perturbations, "digest": b.digest}
            for b in result.builds
        ],
        "digest": result.digest,
        "matched": True,
        "verifier": {"id": builder_id, "version": {"basekiln": __version__}},
        "finishedOn": result.finished_on,
    }
    return _statement(image, result.digest, REPRODUCIBLE_PREDICATE, predicate)


def _external_parameters(result: BuildResult) -> Json:
    external: Json = {
        "recipe": {
            "name": result.recipe,
            "path": result.recipe_path,
            "sha256": result.recipe_sha256,
        },
        "lockfile": {"path": result.lockfile_path, "sha256": result.lockfile_sha256},
        "platform": result.platform,
    }
    if result.revision:
        external["revision"] = result.revision
    return external


def _statement(image: str, digest: str, predicate_type: str, predicate: Json) -> Json:
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": image, "digest": _digest_set(digest)}],
        "predicateType": predicate_type,
        "predicate": predicate,
    }


def _digest_set(digest: str) -> dict[str, str]:
    match = _DIGEST.match(digest)
    if match is None:
        raise ValueError(f"{digest!r} is not a sha256 digest (sha256:<64 hex>)")
    return {"sha256": match.group(1)}


def resolved_dependencies(result: BuildResult, chain: Sequence[Lockfile]) -> list[Json]:
    """Every .deb and InRelease along `chain`, this build's tool .debs, the parent image."""
    debs: dict[str, Json] = {}
    releases: dict[tuple[str, str], Json] = {}
    for lock in chain:
        for pkg in lock.packages_for(result.platform):
            debs.setdefault(pkg.sha256, _deb_descriptor(pkg, lock, "content"))
        for release in lock.releases:
            releases.setdefault((release.url, release.sha256), _release_descriptor(release))

    # Only this build's tools: a parent's tools built the parent, not this image.
    for pkg in chain[0].tools_for(result.platform):
        debs.setdefault(pkg.sha256, _deb_descriptor(pkg, chain[0], "build-tool"))

    deps = sorted(debs.values(), key=lambda d: (d["name"], d["uri"]))
    deps += [releases[key] for key in sorted(releases)]
    parent = chain[0].parent
    if parent is not None:
        deps.append(_parent_descriptor(result, parent.recipe, parent.lockfile_sha256))
    return deps


def deb_purl(pkg: LockedPackage) -> str:
    """`pkg:deb/debian/NAME@VERSION?arch=ARCH`, encoded as the purl spec asks."""
    name = quote(pkg.name, safe="")
    version = quote(pkg.version, safe=":~")
    return f"pkg:deb/debian/{name}@{version}?arch={quote(pkg.architecture, safe='')}"


def _deb_descriptor(pkg: LockedPackage, lock: Lockfile, role: str) -> Json:
    descriptor: Json = {
        "name": pkg.filename.rpartition("/")[2],
        "uri": deb_purl(pkg),
        "digest": {"sha256": pkg.sha256},
        "annotations": {
            "recipe": lock.recipe.name,
            "role": role,
            "archive": pkg.archive,
            "suite": pkg.suite,
        },
    }
    mirrors = lock.mirrors.get(pkg.archive, [])
    if mirrors:
        descriptor["downloadLocation"] = f"{mirrors[0].rstrip('/')}/{pkg.filename}"
    return descriptor


def _release_descriptor(release: LockedRelease) -> Json:
    return {
        "name": "InRelease",
        "uri": release.url,
        "digest": {"sha256": release.sha256},
        "annotations": {"archive": release.archive, "suite": release.suite, "date": release.date},
    }


def _parent_descriptor(result: BuildResult, recipe: str, lockfile_sha256: str) -> Json:
    if result.parent_digest is None:
        raise ValueError(
            f"{result.recipe}: the lockfile names parent {recipe!r} but the build result "
            "records no parent digest"
        )
    return {
        "name": recipe,
        "uri": f"pkg:oci/{quote(recipe, safe='')}",
        "digest": _digest_set(result.parent_digest),
        "annotations": {"role": "parent-image", "lockfileSha256": lockfile_sha256},
    }


def statement_bytes(statement: Mapping[str, Any]) -> bytes:
    """Canonical JSON: sorted keys, two-space indent, UTF-8, trailing newline."""
    return (json.dumps(statement, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


def verify_provenance_matches(
    statement: Mapping[str, Any],
    recipe_sha256: str,
    lockfile_sha256: str,
    *,
    digest: str | None = None,
) -> None:
    """Check a provenance Statement is for this recipe and lockfile (and digest).

    Collects every difference and raises one VerificationError naming them all.
    """
    problems = list(_shape_problems(statement))
    external = ("predicate", "buildDefinition", "externalParameters")
    recipe = _get(statement, *external, "recipe", "sha256")
    lockfile = _get(statement, *external, "lockfile", "sha256")
    problems += _differs("recipe sha256", recipe, recipe_sha256)
    problems += _differs("lockfile sha256", lockfile, lockfile_sha256)
    if digest is not None:
        subjects = statement.get("subject")
        found = [_get(s, "digest", "sha256") for s in subjects or [] if isinstance(s, Mapping)]
        expected = _digest_set(digest)["sha256"]
        if expected not in found:
            problems.append(f"subject digests are {found or 'absent'}, expected {expected}")
    if problems:
        raise VerificationError(
            "the provenance does not describe this build:\n"
            + "\n".join(f"  - {p}" for p in problems)
            + "\nIt was made for other inputs; rebuild and attest again, or verify the "
            "digest the provenance names."
        )


def _shape_problems(statement: Mapping[str, Any]) -> Iterable[str]:
    if statement.get("_type") != STATEMENT_TYPE:
        yield f"_type is {statement.get('_type')!r}, expected {STATEMENT_TYPE}"
    if statement.get("predicateType") != SLSA_PROVENANCE:
        yield f"predicateType is {statement.get('predicateType')!r}, expected {SLSA_PROVENANCE}"
    build_type = _get(statement, "predicate", "buildDefinition", "buildType")
    if build_type != BUILD_TYPE:
        yield f"buildType is {build_type!r}, expected {BUILD_TYPE}"


def _differs(what: str, actual: Any, expected: str) -> list[str]:
    return [] if actual == expected else [f"{what} is {actual!r}, expected {expected}"]


def _get(data: Mapping[str, Any], *keys: str) -> Any:
    value: Any = data
    for key in keys:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value
