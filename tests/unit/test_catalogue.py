"""The catalogue: parents first, missing parents and cycles as input errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from basekiln.catalogue import load_selection
from basekiln.errors import ExitCode, InputError


def recipes(folder: Path, **parents: str | None) -> Path:
    for name, parent in parents.items():
        text = f"name: {name}\n" + (f"parent: {parent}\n" if parent else "")
        (folder / f"{name}.yaml").write_text(text)
    return folder


def names(folder: Path, *wanted: str) -> list[str]:
    return [r.recipe.name for r in load_selection(list(wanted), folder)]


def test_parents_come_first_and_siblings_by_name(tmp_path: Path) -> None:
    folder = recipes(tmp_path, python="cc", static=None, base="static", cc="base", java="base")
    assert names(folder) == ["static", "base", "cc", "java", "python"]


def test_selecting_a_child_brings_its_parents(tmp_path: Path) -> None:
    folder = recipes(tmp_path, static=None, base="static", cc="base", other=None)
    assert names(folder, "cc") == ["static", "base", "cc"]


def test_missing_parent_is_an_input_error(tmp_path: Path) -> None:
    folder = recipes(tmp_path, base="static")
    with pytest.raises(InputError) as caught:
        load_selection(["base"], folder)
    assert caught.value.exit_code is ExitCode.INPUT
    assert caught.value.message.startswith(f"{folder / 'base.yaml'}: parent: no recipe named")
    assert "'static'" in caught.value.message


def test_parent_cycle_is_an_input_error(tmp_path: Path) -> None:
    folder = recipes(tmp_path, a="c", b="a", c="b")
    with pytest.raises(InputError, match=r"parent: recipes form a cycle \(a → c → b → a\)"):
        load_selection(["a"], folder)


def test_a_recipe_cannot_be_its_own_parent(tmp_path: Path) -> None:
    folder = recipes(tmp_path, loop="loop")
    with pytest.raises(InputError, match=r"cycle \(loop → loop\)"):
        load_selection([], folder)
