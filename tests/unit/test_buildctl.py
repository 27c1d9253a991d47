"""buildctl argv construction and output parsing, on captured samples."""

from __future__ import annotations

from pathlib import Path

import pytest

from basekiln._buildctl import Endpoint, NamedImage, build_argv, parse_version, step_started
from basekiln.errors import BuildError

INFO = """BuildKit: github.com/moby/buildkit v0.34.2 0123abcd
"""


def test_build_argv_pins_timestamps_output_and_named_contexts() -> None:
    argv = build_argv(
        Endpoint("unix:///tmp/s.sock", tls_ca="/ca.pem"),
        Path("/ctx"),
        Path("/out"),
        1700000000,
        [NamedImage("tools", Path("/tools"), "sha256:" + "b" * 64)],
        {"TZ": "UTC"},
        {"hostname": "h"},
        "linux/amd64",
        {"org.opencontainers.image.description": "a, b"},
    )
    joined = " ".join(argv)
    assert "--tlscacert /ca.pem" in joined
    assert "build-arg:SOURCE_DATE_EPOCH=1700000000" in joined
    assert "rewrite-timestamp=true" in joined and "type=oci" in joined
    assert '"annotation-manifest.org.opencontainers.image.description=a, b"' in joined
    assert f"context:tools=oci-layout://tools@sha256:{'b' * 64}" in joined
    assert not any(a.startswith("attest:") for a in argv)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("#5 [assemble 1/1] RUN --network=none ...", "[assemble 1/1] RUN --network=none ..."),
        ("#5 DONE 0.3s", None),
        ("#7 exporting layers", None),
        ("random text", None),
    ],
)
def test_step_started(line: str, expected: str | None) -> None:
    assert step_started(line) == expected


def test_parse_version() -> None:
    assert parse_version(INFO) == "v0.34.2"
    with pytest.raises(BuildError):
        parse_version("nothing")
