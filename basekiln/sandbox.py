"""Sandboxes: a fresh buildkitd per build, or a named remote daemon.

A local sandbox owns a new state directory, socket and runc worker, is health-checked
before use, and is torn down afterwards whatever happened: the daemon's whole process
group is stopped and any mount left under its state directory is detached, so no
process or mount outlives the build. The second sandbox of a double build is perturbed
(time zone, locale, umask, host name, CPU count, build directory) so that a build
depending on any of them is caught.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from basekiln._buildctl import Endpoint, ping
from basekiln._run import CommandError, which
from basekiln.errors import BuildError
from basekiln.render import environment

log = logging.getLogger(__name__)

# Running daemons and the group each belongs to (the double build that started it).
_running: dict[subprocess.Popen[bytes], str] = {}
_running_lock = threading.Lock()

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
MNT_DETACH = 2


@dataclass(frozen=True)
class Perturbation:
    """The environment one sandbox builds in."""

    name: str
    tz: str
    locale: str
    umask: int
    hostname: str
    cpus: int | None  # None: every CPU of the machine

    def describe(self, build_dir: Path, local: bool = True) -> dict[str, str]:
        """What the build ran under; a remote daemon keeps its own CPUs."""
        cpus = str(self.cpus) if self.cpus else str(os.cpu_count() or 1)
        return {
            "tz": self.tz,
            "locale": self.locale,
            "umask": f"{self.umask:04o}",
            "hostname": self.hostname,
            "build_dir": str(build_dir),
            "cpus": cpus if local else "the remote daemon's own",
        }


PLAIN = Perturbation("a", tz="UTC", locale="C.UTF-8", umask=0o022, hostname="basekiln-a", cpus=None)
PERTURBED = Perturbation(
    "b",
    tz="Pacific/Kiritimati",
    locale="fr_FR.UTF-8",
    umask=0o077,
    hostname="kiln-b-perturbed.example",
    cpus=1,
)


@dataclass(frozen=True)
class Sandbox:
    name: str
    endpoint: Endpoint
    perturbation: Perturbation
    state_dir: Path | None  # None for remote daemons

    @property
    def describes(self) -> str:
        return f"local buildkitd {self.name}" if self.state_dir else self.endpoint.address


# A sandbox is thrown away after its build, so its state belongs in memory: on a disk,
# BuildKit's fsyncs and snapshot writes took longer than the build steps themselves
# (bench/build.py). Without a roomy tmpfs, the temporary directory is used instead.
# (/dev/shm is shared: the directory basekiln makes there must be its own, see _private.)
MEMORY_DIR = Path("/dev/shm")  # noqa: S108
MEMORY_MIN_FREE = 4 << 30
MOUNTS = Path("/proc/self/mounts")


def sandbox_root() -> Path:
    """Where sandboxes, their state and the second build context live.

    $BASEKILN_SANDBOX_DIR if set; else a private directory on /dev/shm when that is a
    tmpfs with at least 4 GiB free; else the temporary directory.
    """
    configured = os.environ.get("BASEKILN_SANDBOX_DIR")
    if configured:
        return Path(configured)
    if in_memory(MEMORY_DIR) and shutil.disk_usage(MEMORY_DIR).free >= MEMORY_MIN_FREE:
        root = MEMORY_DIR / "basekiln"
        with contextlib.suppress(FileExistsError):
            root.mkdir(mode=0o700)
        if _private(root):
            return root
        log.warning("%s is not a directory of this user's alone; using the temp dir", root)
    return Path(tempfile.gettempdir())


def _private(path: Path) -> bool:
    info = path.lstat()
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and info.st_mode & 0o077 == 0


def in_memory(path: Path) -> bool:
    """Whether `path` is the mount point of a writable tmpfs."""
    try:
        mounts = MOUNTS.read_text()
    except OSError:
        return False
    found = False
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[1] == str(path):
            # The last mount on a path is the one in effect.
            found = fields[2] == "tmpfs" and "rw" in fields[3].split(",")
    return found and os.access(path, os.W_OK)


@contextlib.contextmanager
def local_sandbox(
    perturbation: Perturbation, parent_dir: Path | None = None, group: str = ""
) -> Iterator[Sandbox]:
    """Start a fresh buildkitd; stop it and remove its state on the way out.

    `group` names the builds that stand or fall together (see `stop_all`).
    """
    if which("buildkitd") is None:
        raise BuildError("buildkitd is not installed; run `make setup`")
    base = parent_dir or sandbox_root()
    base.mkdir(parents=True, exist_ok=True)
    state = Path(tempfile.mkdtemp(prefix=f"basekiln-{perturbation.name}-", dir=base))
    # Unix socket paths are limited to 104 bytes, so the socket lives in a short path.
    socket_dir = Path(tempfile.mkdtemp(prefix="bk-", dir="/tmp"))
    socket = socket_dir / "buildkitd.sock"
    address = f"unix://{socket}"
    process: subprocess.Popen[bytes] | None = None
    try:
        process = _start(state, address, perturbation)
        with _running_lock:
            _running[process] = group
        endpoint = Endpoint(address)
        _wait_healthy(process, endpoint, state, socket)
        log.debug("sandbox %s ready at %s", perturbation.name, address)
        yield Sandbox(perturbation.name, endpoint, perturbation, state)
    finally:
        if process is not None:
            _stop(process)
            with _running_lock:
                _running.pop(process, None)
        detach_mounts(state)
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(socket_dir, ignore_errors=True)


def _start(state: Path, address: str, perturbation: Perturbation) -> subprocess.Popen[bytes]:
    cpus = perturbation.cpus or os.cpu_count() or 1
    config = state / "buildkitd.toml"
    config.write_text(
        environment()
        .get_template("buildkitd.toml.j2")
        .render(root=state / "root", address=address, max_parallelism=cpus)
    )
    env = {
        **os.environ,
        "TZ": perturbation.tz,
        "LANG": perturbation.locale,
        "LC_ALL": perturbation.locale,
    }
    daemon = which("buildkitd")
    assert daemon is not None
    argv = [
        daemon,
        "--config",
        str(config),
        "--root",
        str(state / "root"),
        "--addr",
        address,
        # Its own trace socket too: the default, /run/buildkit/otel-grpc.sock, is one
        # path for every daemon, so two sandboxes starting at once would collide.
        "--otel-socket-path",
        str(Path(address.removeprefix("unix://")).with_name("otel-grpc.sock")),
        "--oci-worker=true",
        "--containerd-worker=false",
    ]
    allowed = set(list(sorted(os.sched_getaffinity(0)))[:cpus])

    def in_child() -> None:
        os.umask(perturbation.umask)
        os.sched_setaffinity(0, allowed)

    log_file = open(state / "buildkitd.log", "wb")  # noqa: SIM115 (owned by the daemon)
    try:
        return subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=in_child,
        )
    finally:
        log_file.close()


def stop_all(group: str | None = None) -> None:
    """Kill local daemons now (those of `group`, or all), so builds fail fast and unwind.

    Each sandbox's own `finally` still detaches its mounts and removes its state.
    """
    with _running_lock:
        processes = [p for p, g in _running.items() if group is None or g == group]
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def _wait_healthy(
    process: subprocess.Popen[bytes], endpoint: Endpoint, state: Path, socket: Path
) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BuildError(
                f"buildkitd exited with code {process.returncode} while starting;"
                f" its log ends:\n{log_tail(state)}"
            )
        if socket.exists():
            with contextlib.suppress(CommandError):
                ping(endpoint, timeout=5)
                return
        time.sleep(0.1)
    raise BuildError(
        f"buildkitd did not become healthy within {START_TIMEOUT:.0f}s; its log "
        f"ends:\n{log_tail(state)}"
    )


def log_tail(state: Path, lines: int = 25) -> str:
    path = state / "buildkitd.log"
    if not path.is_file():
        return "(no log written)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _stop(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        log.warning("buildkitd %d ignored SIGTERM; killing it", process.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    # Children (runc, shims) that outlived the daemon share its process group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path`, deepest first (from /proc/self/mountinfo)."""
    prefix = str(path.resolve())
    found = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def detach_mounts(path: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for point in mounts_under(path):
        if libc.umount2(point.encode(), MNT_DETACH) != 0:
            log.warning("could not detach %s: %s", point, os.strerror(ctypes.get_errno()))


def remote_sandbox(endpoint: Endpoint, name: str, perturbation: Perturbation) -> Sandbox:
    """A daemon someone else runs; only client-side perturbations apply."""
    address = endpoint.address
    try:
        ping(endpoint, timeout=15)
    except CommandError as exc:
        raise BuildError(
            f"remote BuildKit daemon {address} does not answer: {exc.message}"
        ) from exc
    return Sandbox(name, endpoint, perturbation, None)
