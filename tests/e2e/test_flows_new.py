"""`basekiln new` end to end: a recipe written, locked against the test archive, built."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from basekiln.recipe import load_recipe
from basekiln.sandbox import mounts_under
from tests.conftest import write_project
from tests.e2e.conftest import LAUNCHER
from tests.fixtures.archive import ArchiveTree
from tests.fixtures.httpserver import ArchiveServer

pytestmark = pytest.mark.slow


def basekiln(root: Path, sandboxes: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASEKILN_")}
    return subprocess.run(
        [sys.executable, "-c", LAUNCHER, *args],
        cwd=root,
        env={**env, "BASEKILN_SANDBOX_DIR": str(sandboxes)},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def test_new_writes_locks_and_builds_a_safe_recipe(
    tmp_path: Path, flows_archive: ArchiveTree
) -> None:
    archive = flows_archive.copy_to(tmp_path / "archive")
    sandboxes = tmp_path / "sandboxes"
    sandboxes.mkdir()
    with ArchiveServer(archive.root) as served:
        project = write_project(
            tmp_path / "project", {"debian": [f"{served.url}/debian"]}, archive.key.keyring
        )
        made = basekiln(
            project.root, sandboxes, "new", "hello", "--source", "debian/bookworm",
            "--package", "extra-data", "--json",
        )  # fmt: skip
        again = basekiln(project.root, sandboxes, "new", "hello", "--no-build")
        orphan = basekiln(project.root, sandboxes, "new", "kid", "--parent", "nowhere")

    assert made.returncode == 0, made.stderr[-3000:]
    result = json.loads(made.stdout)
    assert result["reproducible"] is True and result["digest"].startswith("sha256:")
    assert result["packages"] == 2  # base-files and extra-data
    recipe = load_recipe(project.recipes / "hello.yaml").recipe
    assert recipe.user == "65532" and recipe.budgets is not None
    assert recipe.budgets.max_packages == 2 and recipe.budgets.allow_shell is False
    assert project.locked_versions("hello") == {"base-files": "12.4+deb12u5", "extra-data": "1.0-1"}
    assert "# hello: written by `basekiln new`" in (project.recipes / "hello.yaml").read_text()

    assert again.returncode == 2 and "already exists" in again.stderr
    assert orphan.returncode == 2 and "--parent nowhere" in orphan.stderr
    assert not (project.recipes / "kid.yaml").exists()
    assert mounts_under(sandboxes) == []
