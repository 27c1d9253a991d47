"""Recipe validation: every problem at once, each with its file, line and field path."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from basekiln.errors import ExitCode, InputError, RecipeError
from basekiln.recipe import Source, load_recipe, recipe_names, resolve_recipe_path


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    assert caught.value.exit_code is ExitCode.INPUT
    assert caught.value.path == str(path)
    return caught.value.problems


def test_a_valid_recipe_loads(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "static",
        """\
        name: static
        packages:
          - netbase
          - {name: tzdata, dependencies: false}
        """,
    )
    loaded = load_recipe(path)
    assert [(p.name, p.dependencies) for p in loaded.recipe.packages] == [
        ("netbase", True),
        ("tzdata", False),
    ]
    assert loaded.recipe.architectures == ["amd64"]
    assert len(loaded.sha256) == 64
    assert loaded.recipe.effective_sources() == [
        Source(archive="debian", suite="bookworm"),
        Source(archive="debian", suite="bookworm-updates"),
        Source(archive="debian-security", suite="bookworm-security"),
    ]


def test_the_digest_is_of_the_file_bytes(tmp_path: Path) -> None:
    path = write(tmp_path, "static", "name: static\n")
    first = load_recipe(path).sha256
    path.write_text("name: static\n# a comment changes the recipe's digest\n")
    assert load_recipe(path).sha256 != first


def test_malformed_yaml_gives_file_line_and_column(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "broken",
        """\
        name: broken
        packages:
          - netbase
          - [unclosed
        """,
    )
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:5:1: malformed YAML: ")


def test_tab_indentation_is_malformed(tmp_path: Path) -> None:
    path = tmp_path / "tabs.yaml"
    path.write_text("name: tabs\npackages:\n\t- netbase\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:3:1: malformed YAML")


def test_duplicate_keys_are_malformed(tmp_path: Path) -> None:
    path = write(tmp_path, "dup", "name: dup\nuser: root\nuser: nobody\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:3:")
    assert 'duplicate key "user"' in problem


def test_unknown_field_is_named_with_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "static",
        """\
        name: static
        pakages:
          - netbase
        """,
    )
    assert problems_of(path) == [f"{path}:2: pakages: unknown field 'pakages'; check its spelling"]


def test_several_problems_are_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "many",
        """\
        name: many
        packages:
          - libc6
          - {name: Bad_Name, dependencies: maybe}
        architectures: [amd64, riscv64]
        users:
          - name: nonroot
            uid: -1
        tests:
          files:
            - {name: bundle, path: /etc/ssl/certs/ca-certificates.crt, mode: "rw-r--r--"}
        colour: blue
        """,
    )
    problems = problems_of(path)
    assert len(problems) == 6
    expected = [
        (4, "packages[1].name", "String should match pattern"),
        (4, "packages[1].dependencies", "valid boolean"),
        (5, "architectures[1]", "Input should be 'amd64' or 'arm64'"),
        (8, "users[0].uid", "greater than or equal to 0"),
        (11, "tests.files[0].mode", "String should match pattern"),
        (12, "colour", "unknown field 'colour'"),
    ]
    for line, field, text in expected:
        prefix = f"{path}:{line}: {field}: "
        assert any(p.startswith(prefix) and text in p for p in problems), (prefix, problems)
    message = str(RecipeError(str(path), problems))
    assert message.startswith(f"{path}: 6 problems; fix the recipe and run again:\n  - ")


def test_missing_required_field(tmp_path: Path) -> None:
    path = write(tmp_path, "nameless", "packages: [netbase]\n")
    assert problems_of(path) == [f"{path}:1: name: is required"]


def test_name_must_match_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "static", "description: x\nname: other\n")
    assert problems_of(path) == [
        f"{path}:2: name: 'other' must match the file name 'static'",
    ]


def test_a_recipe_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "list", "- netbase\n- tzdata\n")
    assert problems_of(path) == [f"{path}:1: the recipe must be a YAML mapping"]


def test_recipe_paths_and_names(tmp_path: Path) -> None:
    write(tmp_path, "static", "name: static\n")
    write(tmp_path, "base", "name: base\n")
    (tmp_path / "Not_A_Name.yaml").write_text("name: x\n")
    assert resolve_recipe_path("static", tmp_path) == tmp_path / "static.yaml"
    assert resolve_recipe_path(str(tmp_path / "base.yaml"), tmp_path) == tmp_path / "base.yaml"
    assert recipe_names(tmp_path) == ["base", "static"]
    with pytest.raises(InputError, match=r"no recipe named 'statik' .* \(known: .*base, static"):
        resolve_recipe_path("statik", tmp_path)
    with pytest.raises(InputError, match="no such recipe file"):
        resolve_recipe_path(str(tmp_path / "gone.yaml"), tmp_path)


def test_package_paths_must_stay_inside_the_package(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "certs",
        """\
        name: certs
        packages:
          - {name: ca-certificates, dependencies: false, paths: [/usr/share/ca-certificates]}
          - {name: tzdata, paths: [../../etc/shadow]}
          - {name: netbase, paths: [etc/services, /etc/../root]}
          - {name: media-types, paths: []}
        """,
    )
    problems = problems_of(path)
    assert len(problems) == 3, problems
    assert problems[0].startswith(f"{path}:4: packages[1].paths: ")
    assert "'../../etc/shadow': each must be an absolute, normalised path" in problems[0]
    assert problems[1].startswith(f"{path}:5: packages[2].paths: ")
    assert "'etc/services', '/etc/../root': each must" in problems[1]
    assert problems[2].startswith(f"{path}:6: packages[3].paths: ")


def test_compression_is_gzip_unless_the_recipe_says_zstd(tmp_path: Path) -> None:
    plain = write(tmp_path, "plain", "name: plain\n")
    squeezed = write(tmp_path, "squeezed", "name: squeezed\ncompression: zstd\n")
    assert load_recipe(plain).recipe.compression == "gzip"
    assert load_recipe(squeezed).recipe.compression == "zstd"

    odd = write(tmp_path, "odd", "name: odd\ncompression: lz4\n")
    (problem,) = problems_of(odd)
    assert problem.startswith(f"{odd}:2: compression: ")
    assert "'gzip' or 'zstd'" in problem
