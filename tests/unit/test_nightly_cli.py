"""The flow commands refuse bad input before Prefect starts (exit 2, a message)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from basekiln.cli_flows import nightly_command, rebuild

REGISTRY = ["--registry", "127.0.0.1:5000/staging", "--key", "absent.key"]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "basekiln.toml").write_text("")
    (tmp_path / "recipes").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BASEKILN_CONFIG", raising=False)
    monkeypatch.setenv("COSIGN_PASSWORD", "x")
    return tmp_path


def test_rebuild_of_a_recipe_whose_parent_does_not_exist(project: Path) -> None:
    (project / "recipes" / "orphan.yaml").write_text("name: orphan\nparent: nowhere\n")
    result = CliRunner().invoke(rebuild, ["orphan", *REGISTRY])
    assert result.exit_code == 2, result.output
    assert "no recipe named 'nowhere'" in result.output


def test_rebuild_of_a_recipe_on_a_cycle_of_parents(project: Path) -> None:
    (project / "recipes" / "a.yaml").write_text("name: a\nparent: b\n")
    (project / "recipes" / "b.yaml").write_text("name: b\nparent: a\n")
    result = CliRunner().invoke(rebuild, ["a", *REGISTRY])
    assert result.exit_code == 2, result.output
    assert "cycle" in result.output and "a → b → a" in result.output


def test_rebuild_needs_a_registry_and_a_key(project: Path) -> None:
    (project / "recipes" / "solo.yaml").write_text("name: solo\n")
    result = CliRunner().invoke(rebuild, ["solo", "--key", "k.key"])
    assert result.exit_code == 2 and "--registry HOST/REPO" in result.output
    result = CliRunner().invoke(rebuild, ["solo", "--registry", "127.0.0.1:5000/s:tag"])
    assert result.exit_code == 2 and "--key" in result.output


def test_nightly_refuses_a_missing_key_before_building(project: Path) -> None:
    result = CliRunner().invoke(nightly_command, REGISTRY)
    assert result.exit_code == 2, result.output
    assert "absent.key does not exist" in result.output


def test_nightly_refuses_a_registry_with_a_tag(project: Path) -> None:
    result = CliRunner().invoke(
        nightly_command, ["--registry", "127.0.0.1:5000/staging:v1", "--key", "k.key"]
    )
    assert result.exit_code == 2 and "without a tag" in result.output
