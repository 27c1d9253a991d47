"""What the catalogue's recipes need of the recipe language: test mounts and programs,
merged /usr, dropped wildcards, dpkg databases and per-test users."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from basekiln.errors import RecipeError
from basekiln.imagetest import prepare_mounts, render_command_tests
from basekiln.oci import FileEntry, read_image, write_image
from basekiln.recipe import Recipe, load_recipe
from basekiln.render import render_assemble_script, shell_glob


def write_recipe(folder: Path, text: str) -> Path:
    path = folder / "recipes" / "demo.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_mount_sources_are_relative_to_the_recipe_and_must_exist(tmp_path: Path) -> None:
    (tmp_path / "programs").mkdir()
    (tmp_path / "programs" / "check.c").write_text("int main(void) { return 0; }\n")
    path = write_recipe(
        tmp_path,
        """\
        name: demo
        tests:
          commands:
            - name: runs
              command: [/.basekiln/check]
              mounts:
                - {source: ../programs/check.c, target: /.basekiln/check, flags: [-static]}
        """,
    )
    mount = load_recipe(path).recipe.tests.commands[0].mounts[0]
    assert mount.source == str(tmp_path / "programs" / "check.c")

    path.write_text(path.read_text().replace("check.c", "missing.c"))
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    assert caught.value.problems == [
        f"{path}:7: tests.commands[0].mounts[0].source: ../programs/missing.c is not a "
        f"file (sources are relative to {path.parent})"
    ]


def test_mount_targets_stay_under_the_test_directory(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("")
    path = write_recipe(
        tmp_path,
        """\
        name: demo
        tests:
          commands:
            - name: shadowing
              command: [/bin/true]
              mounts: [{source: ../x, target: /usr/bin/python3}]
        """,
    )
    with pytest.raises(RecipeError, match=r"tests.commands\[0\].mounts\[0\].target"):
        load_recipe(path)


def test_test_programs_are_built_and_mounted_per_test(tmp_path: Path) -> None:
    if shutil.which("cc") is None:
        pytest.skip("no C compiler on this machine")
    (tmp_path / "hello.c").write_text('#include <stdio.h>\nint main(void){puts("hi");}\n')
    (tmp_path / "data.txt").write_text("plain\n")
    recipe = Recipe.model_validate(
        {
            "name": "demo",
            "user": "65532",
            "tests": {
                "commands": [
                    {
                        "name": "compiled",
                        "command": ["/.basekiln/hello"],
                        "mounts": [
                            {"source": str(tmp_path / "hello.c"), "target": "/.basekiln/hello"},
                            {"source": str(tmp_path / "data.txt"), "target": "/.basekiln/d"},
                        ],
                    },
                    {"name": "as root", "command": ["/bin/id"], "user": "0"},
                ]
            },
        }
    )
    context = tmp_path / "context"
    prepare_mounts(recipe.tests.commands, context)
    ran = subprocess.run([context / "mounts" / "0-0"], capture_output=True, text=True, check=True)
    assert ran.stdout == "hi\n"
    assert (context / "mounts" / "0-1").read_text() == "plain\n"

    layout = tmp_path / "oci"
    write_image(layout, [[FileEntry("etc/x", data=b"")]], config={"config": {"User": "65532"}})
    dockerfile = render_command_tests("demo", read_image(layout), recipe.tests.commands)
    assert "--mount=type=bind,source=mounts/0-0,target=/.basekiln/hello" in dockerfile
    users = [line for line in dockerfile.splitlines() if line.startswith("USER ")]
    assert users == ["USER 0", "USER 65532", "USER 0"]  # setup, then each test's user


def test_merged_usr_and_wildcard_drops_in_the_assembly_script() -> None:
    recipe = Recipe.model_validate(
        {"name": "demo", "merged_usr": True, "drop": ["/usr/lib/gconv/IBM*", "/a b"]}
    )
    script = render_assemble_script(
        recipe, "recipes/demo.yaml", [], [], [], ca_bundle=False, merged_usr=True
    )
    # The links come before anything is unpacked into the root.
    assert script.index('$bb ln -s "usr/$dir" "$root/$dir"') < script.index("# Paths the recipe")
    assert 'rm -rf "$root"/usr/lib/gconv/IBM*\n' in script
    assert "rm -rf \"$root\"/'a b'\n" in script
    assert shell_glob("a'b?c") == "'a'\"'\"'b'?c"


def test_a_dpkg_database_is_configured_by_the_image_itself() -> None:
    recipe = Recipe.model_validate({"name": "demo", "dpkg": "database"})
    plain = render_assemble_script(recipe, "recipes/demo.yaml", [], [], [], ca_bundle=False)
    assert "dpkg --configure" not in plain

    script = render_assemble_script(
        recipe,
        "recipes/demo.yaml",
        [],
        [],
        [],
        ca_bundle=False,
        dpkg_packages=[("base-passwd", "amd64"), ("libc6", "amd64")],
        source_date_epoch=1700000000,
    )
    assert "preinst base-passwd amd64\npreinst libc6 amd64\n" in script
    assert "SOURCE_DATE_EPOCH=1700000000 DPKG_ROOT=" in script
    assert script.index("preinst libc6") < script.index("dpkg --configure --force-confold -a")
    assert '"$root/var/cache/ldconfig/aux-cache"' in script
