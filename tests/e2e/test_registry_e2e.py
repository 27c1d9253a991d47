"""The registry client against real docker-registry processes, with injected faults."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import time
from dataclasses import replace
from pathlib import Path

import pytest

from basekiln import _registry_server, oci
from basekiln._registry_server import LocalRegistry, RegistryServer
from basekiln.registry import (
    Credentials,
    Endpoint,
    ManifestNotFoundError,
    RegistryAuthError,
    RegistryStatusError,
    RegistryUnreachableError,
    copy_image,
)
from tests.fixtures.faultproxy import FaultProxy
from tests.fixtures.registry import (
    client,
    fault_proxy,
    make_image,
    plain_registry,
    repo_ref,
    tls_registry,
)

pytestmark = pytest.mark.slow
__all__ = ["fault_proxy", "plain_registry", "tls_registry"]


def _proxied(proxy: FaultProxy) -> Endpoint:
    return Endpoint(proxy.host, plain_http=True)


def test_push_by_digest_and_read_back(plain_registry: LocalRegistry, tmp_path: Path) -> None:
    image = make_image(tmp_path, layers=2)
    repo = repo_ref(plain_registry)
    with client(plain_registry.endpoint()) as registry:
        result = registry.push_image(image, repo)
        manifest = registry.get_manifest(result.reference)
        spool = io.BytesIO()
        registry.fetch_blob(repo.repository, image.layers[1].digest, spool)

    assert result.digest == image.digest
    assert result.reference == repo.by_digest(image.digest)
    assert len(result.uploaded) == 3 and result.skipped == ()
    assert manifest.data == image.blob_path(image.digest).read_bytes()
    assert manifest.media_type == oci.MEDIA_MANIFEST
    assert spool.getvalue() == image.blob_path(image.layers[1].digest).read_bytes()


def test_push_sets_no_tag_and_a_second_push_skips_every_blob(
    plain_registry: LocalRegistry, tmp_path: Path
) -> None:
    image = make_image(tmp_path)
    repo = repo_ref(plain_registry)
    with client(plain_registry.endpoint()) as registry:
        registry.push_image(image, repo)
        again = registry.push_image(image, repo)
        assert registry.list_tags(repo) == []
    assert again.uploaded == ()
    assert set(again.skipped) == {image.config_descriptor.digest, image.layers[0].digest}


def test_chunked_upload_of_a_larger_layer(plain_registry: LocalRegistry, tmp_path: Path) -> None:
    data = hashlib.sha512(b"seed").digest() * 4096  # 256 KiB that gzip cannot shrink much
    oci.write_image(tmp_path, [[oci.FileEntry("big.bin", data)]])
    image = oci.read_image(tmp_path)
    repo = repo_ref(plain_registry)
    with client(plain_registry.endpoint(), chunk_size=64 << 10) as registry:
        result = registry.push_image(image, repo)
        assert registry.get_manifest(result.reference).digest == image.digest
        assert registry.blob_exists(repo.repository, image.layers[0].digest)


def test_tags_are_set_and_moved_separately(plain_registry: LocalRegistry, tmp_path: Path) -> None:
    first, second = make_image(tmp_path / "a"), make_image(tmp_path / "b")
    repo = repo_ref(plain_registry)
    with client(plain_registry.endpoint()) as registry:
        a = registry.push_image(first, repo).reference
        b = registry.push_image(second, repo).reference
        registry.put_tags(a, ["latest", "v1"])
        assert registry.list_tags(repo) == ["latest", "v1"]
        registry.put_tags(b, ["latest"])
        latest = registry.head_manifest(repo.by_tag("latest"))
        v1 = registry.head_manifest(repo.by_tag("v1"))
    assert latest is not None and latest.digest == second.digest
    assert v1 is not None and v1.digest == first.digest


def test_tls_with_basic_auth(tls_registry: LocalRegistry, tmp_path: Path) -> None:
    image = make_image(tmp_path)
    repo = repo_ref(tls_registry)
    assert tls_registry.url.startswith("https://")
    with client(tls_registry.endpoint()) as registry:
        pushed = registry.push_image(image, repo).reference
        registry.put_tags(pushed, ["stable"])
        assert registry.list_tags(repo) == ["stable"]


def test_missing_credentials(tls_registry: LocalRegistry, tmp_path: Path) -> None:
    anonymous = replace(tls_registry.endpoint(), credentials=None)
    with client(anonymous) as registry, pytest.raises(RegistryAuthError) as caught:
        registry.push_image(make_image(tmp_path), repo_ref(tls_registry))
    message = caught.value.message
    assert tls_registry.host in message and "BASEKILN_REGISTRY_USERNAME" in message


def test_wrong_credentials(tls_registry: LocalRegistry, tmp_path: Path) -> None:
    wrong = tls_registry.endpoint(Credentials("basekiln", "not-the-password"))
    with client(wrong) as registry, pytest.raises(RegistryAuthError) as caught:
        registry.push_image(make_image(tmp_path), repo_ref(tls_registry))
    assert "refused the login of user 'basekiln'" in caught.value.message


def test_untrusted_certificate_fails_fast(tls_registry: LocalRegistry, tmp_path: Path) -> None:
    no_ca = replace(tls_registry.endpoint(), ca_bundle=None)
    started = time.monotonic()
    with client(no_ca, attempts=5) as registry, pytest.raises(RegistryUnreachableError) as caught:
        registry.list_tags(repo_ref(tls_registry))
    assert "CA bundle" in caught.value.message
    assert time.monotonic() - started < 5, "a certificate failure must not be retried"


def test_unreachable_registry(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{sock.getsockname()[1]}"  # bound, never listening: refused
        with (
            client(Endpoint(host, plain_http=True), attempts=2) as registry,
            pytest.raises(RegistryUnreachableError) as caught,
        ):
            registry.push_image(make_image(tmp_path), repo_ref(host))
    assert f"cannot reach registry http://{host}" in caught.value.message
    assert "gave up after 2 attempts" in caught.value.message


def test_recovers_from_a_burst_of_503(fault_proxy: FaultProxy, tmp_path: Path) -> None:
    image = make_image(tmp_path)
    repo = repo_ref(fault_proxy.host)
    fault_proxy.fail(times=3)
    with client(_proxied(fault_proxy), attempts=5) as registry:
        result = registry.push_image(image, repo)
        assert registry.get_manifest(result.reference).digest == image.digest
    assert fault_proxy.count(503) == 3


def test_recovers_from_dropped_connections(fault_proxy: FaultProxy, tmp_path: Path) -> None:
    image = make_image(tmp_path)
    fault_proxy.reset(times=1, match=lambda method, path: method == "PUT")
    fault_proxy.reset(times=1, match=lambda method, path: method == "POST")
    with client(_proxied(fault_proxy), attempts=4) as registry:
        registry.push_image(image, repo_ref(fault_proxy.host))
    assert fault_proxy.count(0) == 2


def test_503_forever_fails_clearly_and_sets_no_tag(
    fault_proxy: FaultProxy, plain_registry: LocalRegistry, tmp_path: Path
) -> None:
    image = make_image(tmp_path)
    repo = repo_ref(fault_proxy.host)
    fault_proxy.fail(times=None, match=lambda method, path: "/manifests/" in path)
    with (
        client(_proxied(fault_proxy), attempts=3) as registry,
        pytest.raises(RegistryStatusError, match=r"HTTP 503.*gave up after 3 attempts"),
    ):
        registry.push_image(image, repo)
    direct = repo_ref(plain_registry).in_repository(repo.repository)
    with client(plain_registry.endpoint()) as registry:
        assert registry.head_manifest(direct.by_digest(image.digest)) is None
        assert registry.list_tags(direct) == []


def test_not_found_is_not_retried(fault_proxy: FaultProxy, tmp_path: Path) -> None:
    repo = repo_ref(fault_proxy.host)
    with (
        client(_proxied(fault_proxy), attempts=5) as registry,
        pytest.raises(ManifestNotFoundError),
    ):
        registry.get_manifest(repo.by_digest("sha256:" + "0" * 64))
    assert len(fault_proxy.log) == 1


def test_copy_within_and_across_registries(
    plain_registry: LocalRegistry, tls_registry: LocalRegistry, tmp_path: Path
) -> None:
    image = make_image(tmp_path, layers=2)
    staging, release = repo_ref(plain_registry, "staging"), repo_ref(plain_registry, "release")
    remote = repo_ref(tls_registry, "release")
    with client(plain_registry.endpoint()) as source, client(tls_registry.endpoint()) as target:
        pushed = source.push_image(image, staging).reference
        local = copy_image(source, pushed, source, release, tags=["v1"])
        across = copy_image(source, pushed, target, remote, tags=["v1"])
        assert source.get_manifest(local.reference).digest == image.digest
        assert target.get_manifest(across.reference).digest == image.digest
        assert target.list_tags(remote) == ["v1"]
        spool = io.BytesIO()
        target.fetch_blob(remote.repository, image.layers[1].digest, spool)
    assert spool.getvalue() == image.blob_path(image.layers[1].digest).read_bytes()


def test_server_stops_without_leaving_a_process(tmp_path: Path) -> None:
    server = RegistryServer(tmp_path / "state")
    info = server.start()
    assert _alive(info.pid)
    server.stop()
    server.stop()  # idempotent
    assert not _alive(info.pid)


def test_persistent_registry_is_idempotent(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    state = tmp_path / "persistent"
    info, started = _registry_server.start_persistent(state, port)
    try:
        assert started and _alive(info.pid)
        again, started_again = _registry_server.start_persistent(state, port)
        assert not started_again and again.host == info.host
        assert (
            _registry_server.main(["status", "--port", str(port), "--state-dir", str(state)]) == 0
        )
    finally:
        assert _registry_server.stop_persistent(state)
    assert not _alive(info.pid)
    assert not _registry_server.stop_persistent(state)


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status and os.path.exists(f"/proc/{pid}")
