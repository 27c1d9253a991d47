"""buildctl argv construction and output parsing, on captured samples."""

from __future__ import annotations

from pathlib import Path

import pytest

from basekiln import _buildctl
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
    assert "compression=gzip" in joined


def test_build_argv_passes_the_recipe_compression() -> None:
    argv = build_argv(
        Endpoint("unix:///tmp/s.sock"),
        Path("/ctx"),
        Path("/out"),
        1700000000,
        [],
        {},
        {},
        "linux/amd64",
        {},
        compression="zstd",
    )
    output = argv[argv.index("--output") + 1]
    assert output.split(",")[-1] == "compression=zstd"


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


# The end of a real failed run (buildctl --progress plain, BuildKit v0.34.2).
FAILED_RUN = """\
#6 [assemble 1/2] RUN --network=none     --mount=type=bind,source=debs,target=/basekiln/debs
#6 0.053 basekiln: sandbox environment: umask 0022, TZ=UTC, LANG=C.UTF-8, host basekiln-a
#6 0.129 package extra-data has no path opt/absent (named in the recipe's paths)
#6 ERROR: process "/bin/busybox sh -c umask" did not complete successfully: exit code: 1
------
 > [assemble 1/2] RUN --network=none     --mount=type=bind,source=debs,target=/basekiln/debs:
0.053 basekiln: sandbox environment: umask 0022, TZ=UTC, LANG=C.UTF-8, host basekiln-a
0.129 package extra-data has no path opt/absent (named in the recipe's paths)
------
Dockerfile:11
--------------------
  10 |     ARG BASEKILN_UMASK=0022
  11 | >>> RUN --network=none \\
--------------------
error: failed to solve: process "/bin/busybox sh -c umask" did not complete successfully
"""


def test_failure_summary_names_the_step_its_output_and_the_error() -> None:
    summary = _buildctl.failure_summary(FAILED_RUN.splitlines())
    assert summary == (
        "at [assemble 1/2]:\n"
        "  basekiln: sandbox environment: umask 0022, TZ=UTC, LANG=C.UTF-8, host basekiln-a\n"
        "  package extra-data has no path opt/absent (named in the recipe's paths)\n"
        '  process "/bin/busybox sh -c umask" did not complete successfully: exit code: 1'
    )


def test_failure_summary_without_a_step_uses_the_solve_error() -> None:
    lines = ["#1 [internal] load build definition", "error: failed to solve: no such context"]
    assert _buildctl.failure_summary(lines) == "at solve:\n  no such context"
    assert _buildctl.failure_summary(["#1 DONE 0.0s"]) is None
