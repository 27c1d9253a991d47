"""The curated catalogue, built for real: every image twice, tested, within budget.

One session builds the whole catalogue from the committed recipes and lockfiles in a
copy of the project (forced, so nothing is reused and every image test runs), with the
project's package cache (fetching from Debian's archive only what it lacks). Then each
image is held to its reference: reproducible, no larger than the best-known published
image of its role, no more packages, nothing its budgets forbid, parents that are real
parents, and an SBOM that matches the lockfiles.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from basekiln.build import RESULT_NAME, BuildOptions, build_recipes, check_fresh
from basekiln.catalogue import load_selection
from basekiln.config import Config, load_config
from basekiln.lockfile import load_lock_chain, lockfile_path, read_lockfile
from basekiln.oci import read_image
from basekiln.results import BuildResult
from basekiln.sbom import cross_check, generate_sbom, locked_union
from basekiln.surface import Surface, budget_violations, examine

pytestmark = [pytest.mark.slow, pytest.mark.network]

PROJECT = Path(__file__).resolve().parents[2]
MIB = 2**20
PLATFORM = "linux/amd64"
IMAGES = (
    "static",
    "static-debug",
    "base",
    "base-debug",
    "cc",
    "cc-debug",
    "python3",
    "python3-debug",
    "debian-minimal",
    "debian-minimal-debug",
)
# Compressed bytes and packages of the best-known published image of each role.
REFERENCES = {
    "static": (2 * MIB, 4),  # distroless static-debian12
    "base": (20_000_000, 6),  # distroless base-debian12
    "cc": (None, 10),  # distroless cc-debian12
    "python3": (50_000_000, 34),  # distroless python3-debian12
    "debian-minimal": (int(25.6 * MIB), 88),  # debian:bookworm-slim
}
PARENTS = {
    "base": "static",
    "cc": "base",
    "python3": "cc",
    **{f"{name}-debug": name for name in ("static", "base", "cc", "python3", "debian-minimal")},
}


@pytest.fixture(scope="module")
def catalogue(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Config, dict[str, BuildResult]]]:
    """The whole catalogue, built once, forced, in a copy of the project."""
    root = tmp_path_factory.mktemp("catalogue")
    for folder in ("recipes", "lockfiles", "tests/fixtures/programs"):
        shutil.copytree(PROJECT / folder, root / folder)
    shutil.copyfile(PROJECT / "basekiln.toml", root / "basekiln.toml")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("BASEKILN_CONFIG", raising=False)
        patch.setenv("BASEKILN_CACHE", str(load_config(PROJECT).cache_dir))
        config = load_config(root)
        options = BuildOptions(force=True, show_progress=False)
        results = build_recipes(config, list(IMAGES), options)
        yield config, {r.recipe: r for r in results}


def surface_of(config: Config, results: dict[str, BuildResult], name: str) -> Surface:
    parent = PARENTS.get(name)
    parent_layers = len(read_image(Path(results[parent].oci_layout)).layers) if parent else 0
    return examine(read_image(Path(results[name].oci_layout), PLATFORM), parent_layers)


def test_every_recipe_is_in_the_catalogue_and_locked() -> None:
    config = load_config(PROJECT)
    selection = load_selection([], config.recipes_dir)
    assert sorted(r.recipe.name for r in selection) == sorted(IMAGES)
    for loaded in selection:
        check_fresh(config, loaded)  # raises when a recipe changed after its lock


@pytest.mark.parametrize("name", IMAGES)
def test_each_image_is_reproducible_and_tested(
    catalogue: tuple[Config, dict[str, BuildResult]], name: str
) -> None:
    config, results = catalogue
    result = results[name]
    assert result.reproducible
    assert {b.digest for b in result.builds} == {result.digest}
    assert (config.root / "out" / name / RESULT_NAME).is_file()  # written after tests
    assert result.builds[0].perturbations != result.builds[1].perturbations


@pytest.mark.parametrize("name", IMAGES)
def test_each_image_keeps_its_budgets(
    catalogue: tuple[Config, dict[str, BuildResult]], name: str
) -> None:
    config, results = catalogue
    recipe = load_selection([name], config.recipes_dir)[-1].recipe
    assert recipe.budgets is not None, f"{name} declares no budgets"
    surface = surface_of(config, results, name)
    assert budget_violations(surface, recipe.budgets) == []
    assert surface.setuid == surface.setgid == ()
    if name.endswith("-debug"):
        assert "/busybox/sh" in surface.shells
    elif name != "debian-minimal":
        assert surface.shells == () and surface.package_managers == ()


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_each_image_is_no_larger_than_its_reference(
    catalogue: tuple[Config, dict[str, BuildResult]], name: str
) -> None:
    config, results = catalogue
    max_bytes, max_packages = REFERENCES[name]
    surface = surface_of(config, results, name)
    if max_bytes is not None:
        assert surface.compressed_bytes <= max_bytes
    lock = read_lockfile(lockfile_path(config.lockfiles_dir, name))
    chain = load_lock_chain(config.lockfiles_dir, lock)
    locked = locked_union(chain, PLATFORM)
    # distroless ships the CA bundle without listing ca-certificates; we list it.
    listed_only_here = int(name in ("static", "base", "cc"))
    assert len(locked) <= max_packages + listed_only_here
    assert len(surface.packages) == len(locked)


@pytest.mark.parametrize("name", sorted(PARENTS))
def test_parents_are_real_parents(
    catalogue: tuple[Config, dict[str, BuildResult]], name: str
) -> None:
    _, results = catalogue
    child, parent = results[name], results[PARENTS[name]]
    assert child.parent_digest == parent.digest
    child_image = read_image(Path(child.oci_layout))
    parent_image = read_image(Path(parent.oci_layout))
    labels = child_image.config["config"]["Labels"]
    assert labels["org.opencontainers.image.base.digest"] == parent.digest
    count = len(parent_image.layers)
    assert [layer.digest for layer in child_image.layers[:count]] == [
        layer.digest for layer in parent_image.layers
    ]


@pytest.mark.parametrize("name", ["static", "python3", "debian-minimal", "debian-minimal-debug"])
def test_the_sbom_matches_the_lockfiles(
    catalogue: tuple[Config, dict[str, BuildResult]], name: str, tmp_path: Path
) -> None:
    config, results = catalogue
    lock = read_lockfile(lockfile_path(config.lockfiles_dir, name))
    chain = load_lock_chain(config.lockfiles_dir, lock)
    sbom = generate_sbom(Path(results[name].oci_layout), tmp_path)
    check = cross_check(sbom.packages, locked_union(chain, PLATFORM))
    assert len(check.matched) == len(locked_union(chain, PLATFORM))
