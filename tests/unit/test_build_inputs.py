"""What a build must match before it starts: the daemons' BuildKit version and, for
`verify --rebuild`, the source revision. Daemons are faked only to inject the fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from basekiln import _buildctl, build
from basekiln.config import Config, FileConfig
from basekiln.errors import BuildError, ExitCode, VerificationError
from basekiln.registry import parse_reference
from basekiln.verify import _rebuild

TWO = ["tcp://10.0.0.1:1234", "tcp://10.0.0.2:1234"]


def _remote(tmp_path: Path) -> Config:
    return Config(tmp_path, FileConfig.model_validate({"buildkit": {"endpoints": TWO}}))


def test_remote_daemons_on_different_buildkit_versions_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    versions = {TWO[0]: "v0.34.2", TWO[1]: "v0.33.0"}
    monkeypatch.setattr(_buildctl, "server_version", lambda endpoint: versions[endpoint.address])
    with pytest.raises(BuildError, match="run different BuildKit versions") as caught:
        build.buildkit_version(_remote(tmp_path))
    assert "v0.33.0" in caught.value.message and caught.value.exit_code is ExitCode.FAILURE

    versions[TWO[1]] = "v0.34.2"
    assert build.buildkit_version(_remote(tmp_path)) == "v0.34.2"


def test_the_revision_changes_the_inputs_digest() -> None:
    args = ("a" * 64, "b" * 64, None, "v0.34.2")
    assert build.inputs_digest(*args, None) != build.inputs_digest(*args, "c" * 40)
    assert build.inputs_digest(*args, "c" * 40) == build.inputs_digest(*args, "c" * 40)


def test_rebuild_at_another_revision_is_refused_before_building(tmp_path: Path) -> None:
    (tmp_path / "recipes").mkdir()
    (tmp_path / "lockfiles").mkdir()
    config = Config(tmp_path, FileConfig())
    statement = {
        "predicate": {
            "buildDefinition": {
                "externalParameters": {
                    "recipe": {"name": "static", "path": "recipes/static.yaml"},
                    "revision": "0123456789abcdef0123456789abcdef01234567",
                }
            }
        }
    }
    target = parse_reference("127.0.0.1:5000/x/static@sha256:" + "0" * 64)
    with pytest.raises(VerificationError, match="built at revision 0123456789abcdef") as caught:
        _rebuild(config, statement, target)  # no git here: the checkout has no revision
    assert "check out the image's revision" in caught.value.message
