"""`basekiln new` without an archive: the recipe it writes, and what it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from ruamel.yaml import YAML

from basekiln import newrecipe
from basekiln.cli_flows import new as new_command
from basekiln.config import Config, load_config
from basekiln.errors import InputError, ResolveError
from basekiln.recipe import Recipe, Source, load_recipe


def parse(text: str) -> Recipe:
    return Recipe.model_validate(YAML(typ="safe").load(text.replace("__MAX_PACKAGES__", "7")))


def test_a_root_recipe_has_safe_defaults() -> None:
    text = newrecipe.render_recipe("hello", None, ["ca-certificates"], description='say "hi"')
    recipe = parse(text)
    assert text.startswith("# hello: written by `basekiln new`")
    assert recipe.description == 'say "hi"'
    assert [p.name for p in recipe.packages] == ["base-files", "ca-certificates"]
    assert recipe.packages[0].dependencies is False
    assert recipe.user == "65532" and recipe.workdir == "/home/nonroot"
    assert {u.name: u.shell for u in recipe.users} == {
        "root": "/sbin/nologin",
        "nonroot": "/sbin/nologin",
    }
    assert recipe.budgets is not None
    assert recipe.budgets.max_packages == 7
    assert not recipe.budgets.allow_shell and not recipe.budgets.allow_setuid
    assert not recipe.budgets.allow_package_manager and not recipe.budgets.allow_world_writable
    assert [t.path for t in recipe.tests.files if not t.present] == ["/bin/sh"]
    assert recipe.tests.metadata[0].user == "65532"
    assert "/usr/share/doc" in recipe.drop


def test_a_child_recipe_inherits_users_and_may_add_nothing() -> None:
    recipe = parse(newrecipe.render_recipe("svc", "base", []))
    assert recipe.parent == "base" and recipe.packages == [] and recipe.users == []
    sources = [Source(archive="debian", suite="bookworm")]
    with_sources = parse(newrecipe.render_recipe("svc", "base", ["libzstd1"], sources))
    assert with_sources.sources == sources


@pytest.mark.parametrize(
    ("name", "parent", "packages", "problem"),
    [
        ("Hello", None, [], "name 'Hello'"),
        ("ok", "Bad Parent", [], "--parent 'Bad Parent'"),
        ("ok", None, ["no spaces"], "--package 'no spaces'"),
    ],
)
def test_bad_names_are_refused(
    name: str, parent: str | None, packages: list[str], problem: str
) -> None:
    with pytest.raises(InputError, match=problem):
        newrecipe.render_recipe(name, parent, packages)


def test_sources() -> None:
    assert newrecipe.parse_source("debian/bookworm") == Source(archive="debian", suite="bookworm")
    with pytest.raises(InputError, match="ARCHIVE/SUITE"):
        newrecipe.parse_source("bookworm")


@pytest.fixture
def config(tmp_path: Path) -> Config:
    (tmp_path / "basekiln.toml").write_text("")
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "base.yaml").write_text(
        "name: base\nsources: [{archive: debian, suite: bookworm}]\n"
    )
    return load_config(tmp_path)


def test_locked_count_becomes_the_budget(config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def fake_lock(config: Config, name: str) -> int:
        calls.append((config.recipes_dir / f"{name}.yaml").read_text())
        return 5

    monkeypatch.setattr(newrecipe, "_lock", fake_lock)
    path, lock, count = newrecipe.create_recipe(config, "svc", "base", ["libzstd1"])
    assert count == 5 and lock.name == "svc.lock.json"
    assert "max_packages: 1000" in calls[0] and "max_packages: 5" in calls[1]
    recipe = load_recipe(path).recipe
    assert recipe.budgets is not None and recipe.budgets.max_packages == 5
    assert recipe.sources == [Source(archive="debian", suite="bookworm")]  # the parent's
    with pytest.raises(InputError, match="already exists"):
        newrecipe.create_recipe(config, "svc", None, [])


def test_nothing_is_left_when_locking_fails(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unlockable(config: Config, name: str) -> int:
        (config.lockfiles_dir).mkdir(exist_ok=True)
        (config.lockfiles_dir / f"{name}.lock.json").write_text("{}")
        raise ResolveError("no package named nonexistent")

    monkeypatch.setattr(newrecipe, "_lock", unlockable)
    with pytest.raises(ResolveError):
        newrecipe.create_recipe(config, "svc", None, ["nonexistent"])
    assert not (config.recipes_dir / "svc.yaml").exists()
    assert not (config.lockfiles_dir / "svc.lock.json").exists()


def test_missing_parent_is_refused(config: Config) -> None:
    with pytest.raises(InputError, match="--parent nowhere"):
        newrecipe.create_recipe(config, "svc", "nowhere", [])
    assert not (config.recipes_dir / "svc.yaml").exists()


def test_cli_exits_2_on_bad_input(config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(config.root)
    monkeypatch.delenv("BASEKILN_CONFIG", raising=False)
    result = CliRunner().invoke(new_command, ["svc", "--parent", "nowhere", "--no-build"])
    assert result.exit_code == 2, result.output
    assert "no recipe" in result.output
