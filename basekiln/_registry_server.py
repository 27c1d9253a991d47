"""A local CNCF distribution registry (Debian's `docker-registry`) on 127.0.0.1.

Two uses: tests start throwaway registries (plain HTTP, or TLS with a generated CA and
htpasswd basic auth) with `RegistryServer`, and `make registry` starts one persistent
plain-HTTP registry for a person with `python -m basekiln._registry_server start`.

The registry is a long-running daemon, so it is the one process basekiln starts with
`subprocess.Popen` rather than `basekiln._run.run`; the short commands around it
(openssl) still go through `run`. A started server is stopped by its context manager,
by `stop()`, or at interpreter exit, whichever comes first.

distribution's htpasswd auth accepts only bcrypt entries. They are made with the C
library's `crypt_rn` (libxcrypt, which Debian ships as libcrypt1), so neither
apache2-utils nor a Python bcrypt package is needed.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from basekiln._run import run, which
from basekiln.errors import BasekilnError, ToolError
from basekiln.registry import Credentials, Endpoint

log = logging.getLogger(__name__)

PROGRAM = "docker-registry"
HOST = "127.0.0.1"
DEFAULT_PORT = 5000
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
# distribution checks the bcrypt hash on every request; cost 10 adds ~0.1 s to each. A
# loopback registry's password guards nothing that a low cost would expose.
HTPASSWD_COST = 5


@dataclass(frozen=True)
class LocalRegistry:
    """A running local registry and how to reach it."""

    host: str  # 127.0.0.1:PORT
    state_dir: Path
    pid: int
    ca_path: Path | None = None  # set when the registry speaks TLS
    credentials: Credentials | None = None  # set when it asks for basic auth

    @property
    def plain_http(self) -> bool:
        return self.ca_path is None

    @property
    def url(self) -> str:
        return f"{'http' if self.plain_http else 'https'}://{self.host}"

    def endpoint(self, credentials: Credentials | None = None) -> Endpoint:
        """An endpoint for this registry; its own credentials unless others are given."""
        return Endpoint(self.host, self.plain_http, self.ca_path, credentials or self.credentials)


class RegistryServer:
    """Start and stop one docker-registry with its own config, storage and log.

    `port=0` picks a free port. `tls=True` generates a CA and a server certificate for
    127.0.0.1 and localhost under `state_dir`; `credentials` turns on htpasswd auth.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        port: int = 0,
        tls: bool = False,
        credentials: Credentials | None = None,
        storage: Path | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.port = port
        self.tls = tls
        self.credentials = credentials
        self.storage = storage or state_dir / "storage"
        self._process: _Child | None = None
        self._info: LocalRegistry | None = None

    def __enter__(self) -> LocalRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def info(self) -> LocalRegistry:
        if self._info is None:
            raise ToolError("the local registry is not running")
        return self._info

    def start(self, *, detach: bool = False) -> LocalRegistry:
        """Start the registry and wait until GET /v2/ answers.

        With `detach`, the registry gets its own session and outlives this process, and
        nothing stops it at exit: that is for `make registry`.
        """
        if self._process is not None:
            return self.info
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(parents=True, exist_ok=True)
        ca = _make_tls(self.state_dir) if self.tls else None
        htpasswd = self._write_htpasswd() if self.credentials else None

        attempts = 3 if self.port == 0 else 1  # a free port may be taken before we bind it
        for attempt in range(1, attempts + 1):
            port = self.port or _free_port()
            config = self._write_config(port, ca is not None, htpasswd)
            process = self._spawn(config, detach)
            info = LocalRegistry(f"{HOST}:{port}", self.state_dir, process.pid, ca,
                                 self.credentials)  # fmt: skip
            try:
                _wait_healthy(info, process, self.log_path)
            except ToolError:
                process.stop()
                if attempt == attempts or "address already in use" not in self._log_tail():
                    raise
                continue
            self._process, self._info = process, info
            if not detach:
                atexit.register(self.stop)
            log.info("local registry %s is up (pid %d)", info.url, process.pid)
            return info
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop the registry; waits for it to exit, killing it if it will not."""
        process, self._process, self._info = self._process, None, None
        atexit.unregister(self.stop)
        if process is not None:
            process.stop()
            log.debug("local registry pid %d stopped", process.pid)

    @property
    def log_path(self) -> Path:
        return self.state_dir / "registry.log"

    def _spawn(self, config: Path, detach: bool) -> _Child:
        program = which(PROGRAM)
        if program is None:
            raise ToolError(f"{PROGRAM} is not installed; run `make setup`")
        argv = [program, "serve", str(config)]
        if detach:
            return _Detached.spawn(argv, self.log_path)
        with self.log_path.open("ab") as log_file:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
            )
        return _Attached(process)

    def _write_config(self, port: int, tls: bool, htpasswd: Path | None) -> Path:
        # JSON strings are valid YAML double-quoted scalars, whatever the path holds.
        q = json.dumps
        lines = [
            "version: 0.1",
            "log:",
            "  level: info",
            "  accesslog:",
            "    disabled: true",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {q(str(self.storage.resolve()))}",
            "  delete:",
            "    enabled: true",
            "  maintenance:",
            "    uploadpurging:",
            "      enabled: false",
            "http:",
            f"  addr: {q(f'{HOST}:{port}')}",
            f"  secret: {q(secrets.token_hex(16))}",
        ]
        if tls:
            lines += [
                "  tls:",
                f"    certificate: {q(str(self.state_dir.resolve() / 'server.crt'))}",
                f"    key: {q(str(self.state_dir.resolve() / 'server.key'))}",
            ]
        if htpasswd is not None:
            lines += [
                "auth:",
                "  htpasswd:",
                "    realm: basekiln",
                f"    path: {q(str(htpasswd.resolve()))}",
            ]
        path = self.state_dir / "config.yml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _write_htpasswd(self) -> Path:
        assert self.credentials is not None
        path = self.state_dir / "htpasswd"
        hashed = bcrypt_hash(self.credentials.password, HTPASSWD_COST)
        entry = f"{self.credentials.username}:{hashed}\n"
        path.touch(mode=0o600)
        path.write_text(entry)
        return path

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""


def bcrypt_hash(password: str, cost: int = 10) -> str:
    """A `$2b$` bcrypt hash of `password`, as distribution's htpasswd auth requires."""
    name = ctypes.util.find_library("crypt") or "libcrypt.so.1"
    try:
        lib = ctypes.CDLL(name)
        crypt_rn = lib.crypt_rn
    except (OSError, AttributeError) as exc:
        raise ToolError(
            f"cannot load libxcrypt ({name}) to hash the registry password; install libcrypt1"
        ) from exc
    crypt_rn.restype = ctypes.c_char_p
    crypt_rn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
    setting = f"$2b${cost:02d}${_bcrypt_salt()}".encode()
    data = ctypes.create_string_buffer(32768)  # sizeof(struct crypt_data) in libxcrypt
    result = crypt_rn(password.encode(), setting, data, len(data))
    if not result or not result.startswith(b"$2b$"):
        raise ToolError("libxcrypt could not make a bcrypt hash (too old a libcrypt?)")
    return str(result.decode("ascii"))


_BCRYPT_ALPHABET = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def _bcrypt_salt() -> str:
    # 22 characters of bcrypt's base64; the last holds only 2 significant bits (of 128).
    body = "".join(secrets.choice(_BCRYPT_ALPHABET) for _ in range(21))
    return body + secrets.choice(_BCRYPT_ALPHABET[::16])


def _make_tls(folder: Path) -> Path:
    """A self-signed CA and a server certificate for 127.0.0.1 and localhost."""
    ca_crt, ca_key = folder / "ca.crt", folder / "ca.key"
    crt, key, csr = folder / "server.crt", folder / "server.key", folder / "server.csr"
    if ca_crt.exists() and crt.exists() and key.exists():
        return ca_crt
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run(["openssl", "req", "-x509", *curve, "-keyout", str(ca_key), "-out", str(ca_crt),
         "-days", "3650", "-subj", "/CN=basekiln local registry CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"], timeout=60)  # fmt: skip
    run(["openssl", "req", *curve, "-keyout", str(key), "-out", str(csr),
         "-subj", "/CN=127.0.0.1"], timeout=60)  # fmt: skip
    extensions = folder / "server.ext"
    extensions.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
         "-CAcreateserial", "-out", str(crt), "-days", "825", "-sha256",
         "-extfile", str(extensions)], timeout=60)  # fmt: skip
    key.chmod(0o600)
    ca_key.chmod(0o600)
    return ca_crt


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def answers(info: LocalRegistry, timeout: float = 2.0) -> bool:
    """Whether a distribution registry answers GET /v2/ at `info.url`."""
    verify: ssl.SSLContext | bool = False
    if info.ca_path is not None:
        verify = ssl.create_default_context(cafile=str(info.ca_path))
    try:
        with httpx.Client(verify=verify, timeout=timeout, trust_env=False) as http:
            response = http.get(f"{info.url}/v2/")
    except httpx.HTTPError:
        return False
    return response.status_code in (200, 401) and "Docker-Distribution-Api-Version" in (
        response.headers
    )


def _wait_healthy(info: LocalRegistry, process: _Child, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise ToolError(f"{PROGRAM} exited with code {code}:\n{tail}")
        if answers(info, timeout=1.0):
            return
        time.sleep(0.05)
    raise ToolError(f"{PROGRAM} did not answer on {info.url} within {START_TIMEOUT:.0f}s")


class _Child:
    pid: int

    def poll(self) -> int | None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class _Attached(_Child):
    """A registry that lives and dies with this process."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process, self.pid = process, process.pid

    def poll(self) -> int | None:
        return self.process.poll()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)


class _Detached(_Child):
    """A registry in its own session that outlives this process (`make registry`)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    @classmethod
    def spawn(cls, argv: list[str], log_path: Path) -> _Detached:
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(log_path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ]
        return cls(os.posix_spawn(argv[0], argv, os.environ, file_actions=actions, setsid=True))

    def poll(self) -> int | None:
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return -1  # already reaped
        return None if pid == 0 else os.waitstatus_to_exitcode(status)

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.poll() is not None:
                return
            os.kill(self.pid, sig)
            deadline = time.monotonic() + STOP_TIMEOUT
            while self.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)


# --- the persistent registry behind `make registry` ---------------------------------


def default_state_dir() -> Path:
    return Path(__file__).resolve().parent.parent / ".cache" / "registry"


def start_persistent(state_dir: Path, port: int = DEFAULT_PORT) -> tuple[LocalRegistry, bool]:
    """Start a detached plain-HTTP registry unless one already answers on `port`.

    Returns the registry and whether this call started it.
    """
    existing = LocalRegistry(f"{HOST}:{port}", state_dir, _read_pid(state_dir) or 0)
    if answers(existing):
        return existing, False
    if _port_taken(port):
        raise BasekilnError(
            f"{HOST}:{port} is taken by something that is not a registry; stop it or pick "
            "another port with --port"
        )
    server = RegistryServer(state_dir, port=port, storage=state_dir / "storage")
    info = server.start(detach=True)
    (state_dir / "registry.pid").write_text(f"{info.pid}\n")
    return info, True


def stop_persistent(state_dir: Path) -> bool:
    """Stop the registry `start_persistent` started; False if none was running."""
    pid_file = state_dir / "registry.pid"
    pid = _read_pid(state_dir)
    if pid is None or not _is_registry_process(pid):
        pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while _is_registry_process(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _is_registry_process(pid):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it when this process started it
    pid_file.unlink(missing_ok=True)
    return True


def _read_pid(state_dir: Path) -> int | None:
    try:
        return int((state_dir / "registry.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def _is_registry_process(pid: int) -> bool:
    """True for a live docker-registry process (not a zombie, not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    zombie = any(line.startswith("State:") and "Z" in line for line in status.splitlines())
    return PROGRAM.encode() in cmdline and not zombie


def _port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((HOST, port)) == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m basekiln._registry_server",
        description="Run a persistent local registry on 127.0.0.1 (plain HTTP, no auth).",
    )
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--state-dir", type=Path, default=default_state_dir())
    args = parser.parse_args(argv)
    state_dir: Path = args.state_dir

    if args.action == "start":
        info, started = start_persistent(state_dir, args.port)
        verb = "started" if started else "already answering at"
        print(f"registry {verb} {info.host} (storage {state_dir / 'storage'})", file=sys.stderr)
        print(info.host)
        return 0
    if args.action == "stop":
        stopped = stop_persistent(state_dir)
        print("registry stopped" if stopped else "no registry was running", file=sys.stderr)
        return 0
    up = answers(LocalRegistry(f"{HOST}:{args.port}", state_dir, 0))
    print(f"registry {'answers' if up else 'does not answer'} at {HOST}:{args.port}")
    return 0 if up else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BasekilnError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(int(exc.exit_code))
