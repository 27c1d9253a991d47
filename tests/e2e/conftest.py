"""Shared by the flow tests: one Prefect server for the whole session (flows in this
process and in subprocesses, the CLI and a process worker, all report to it, so no
test pays Prefect's start-up), the archive their catalogues lock against, and a
launcher for the CLI."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.archive import ArchiveTree, Deb, SigningKey, Suite
from tests.fixtures.buildarchive import CraftedDeb, Member, real_tool_debs

PREFECT = Path(sys.executable).parent / "prefect"
DATE = "Sat, 01 Jun 2024 10:00:00 UTC"
# syft names dpkg entries as Debian packages only when os-release says ID=debian.
OS_RELEASE = b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'
# Registers this branch's commands on the main group whether or not cli.py already
# does, then runs `basekiln` as the entry point would (signal handling included).
LAUNCHER = """\
import sys
from basekiln import cli, cli_flows
for command in (cli_flows.rebuild, cli_flows.nightly_command, cli_flows.promote, cli_flows.new):
    if command.name not in cli.cli.commands:
        cli.cli.add_command(command)
sys.exit(cli.main())
"""

START_TIMEOUT = 120.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def prefect_env(api_url: str, home: Path) -> dict[str, str]:
    """The environment a subprocess needs to use the session's server."""
    return {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`prefect server start` on 127.0.0.1 (SQLite, no UI); its API URL and home."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**prefect_env(url, home), "PREFECT_SERVER_UI_ENABLED": "false"}
    env.pop("PREFECT_API_URL")
    log = (home / "server.log").open("wb")
    server = subprocess.Popen(
        [str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_healthy(url, server, home / "server.log")
        yield url, home
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def _wait_healthy(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"prefect server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"prefect server did not answer in {START_TIMEOUT}s: {log.read_text()}")


@pytest.fixture
def prefect_api(prefect_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Flows run in this test (in-process or in subprocesses) use the session's server."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    url, home = prefect_server
    for name, value in prefect_env(url, home).items():
        if name.startswith("PREFECT_"):
            monkeypatch.setenv(name, value)
    with temporary_settings({PREFECT_API_URL: url, PREFECT_HOME: home}):
        yield url


@pytest.fixture(scope="session")
def flows_archive(tmp_path_factory: pytest.TempPathFactory, signing_key: SigningKey) -> ArchiveTree:
    base = tmp_path_factory.mktemp("flows-archive")
    packages = (
        *real_tool_debs(),
        CraftedDeb(
            "base-files",
            "12.4+deb12u5",
            priority="required",
            members=(
                Member("./etc/", "dir", mode=0o755),
                Member("./etc/os-release", data=OS_RELEASE),
            ),
        ),
        Deb("extra-data", "1.0-1", "all", payload="one"),
    )
    suites = [Suite("debian", "bookworm", "oldstable", "Debian", DATE, packages)]
    tree = ArchiveTree(base / "root", signing_key, suites, deb_cache=base / "debs")
    tree.publish()
    return tree
