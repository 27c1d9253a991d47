"""The catalogue: recipes and the DAG their parents form."""

from __future__ import annotations

from pathlib import Path

from basekiln.errors import InputError
from basekiln.recipe import LoadedRecipe, load_recipe, recipe_names, resolve_recipe_path


def load_selection(names: list[str], recipes_dir: Path) -> list[LoadedRecipe]:
    """The named recipes (all of recipes/ when none), parents first, parents included."""
    wanted = names or recipe_names(recipes_dir)
    loaded: dict[str, LoadedRecipe] = {}
    for name in wanted:
        _load_with_parents(resolve_recipe_path(name, recipes_dir), recipes_dir, loaded, [])
    return topological(loaded)


def _load_with_parents(
    path: Path, recipes_dir: Path, loaded: dict[str, LoadedRecipe], trail: list[str]
) -> LoadedRecipe:
    recipe = load_recipe(path)
    name = recipe.recipe.name
    if name in trail:
        cycle = " → ".join([*trail[trail.index(name) :], name])
        raise InputError(f"{path}: parent: recipes form a cycle ({cycle}); break it")
    if name in loaded:
        return loaded[name]
    parent = recipe.recipe.parent
    if parent is not None:
        parent_path = recipes_dir / f"{parent}.yaml"
        if not parent_path.is_file():
            raise InputError(
                f"{path}: parent: no recipe named {parent!r} in {recipes_dir}; create it "
                "or fix the name"
            )
        _load_with_parents(parent_path, recipes_dir, loaded, [*trail, name])
    loaded[name] = recipe
    return recipe


def topological(recipes: dict[str, LoadedRecipe]) -> list[LoadedRecipe]:
    """Parents before children; siblings by name, so the order is stable."""
    ordered: list[LoadedRecipe] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        parent = recipes[name].recipe.parent
        if parent is not None and parent in recipes:
            visit(parent)
        done.add(name)
        ordered.append(recipes[name])

    for name in sorted(recipes):
        visit(name)
    return ordered
