"""The test mirror's own behaviour: byte ranges, faults that wear off, request counts."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.fixtures.archive import Deb
from tests.fixtures.httpserver import ArchiveServer, _ranged


@pytest.mark.parametrize(
    ("header", "status", "content_range", "body"),
    [
        (None, 200, None, b"0123456789"),
        ("bytes=4-", 206, "bytes 4-9/10", b"456789"),
        ("bytes=2-4", 206, "bytes 2-4/10", b"234"),
        ("bytes=-3", 206, "bytes 7-9/10", b"789"),
        ("bytes=8-100", 206, "bytes 8-9/10", b"89"),
        ("bytes=10-", 416, "bytes */10", b""),
        ("items=1-2", 200, None, b"0123456789"),
    ],
)
def test_ranges(header: str | None, status: int, content_range: str | None, body: bytes) -> None:
    got_status, headers, got_body = _ranged(b"0123456789", header)
    assert (got_status, headers.get("Content-Range"), got_body) == (status, content_range, body)


def test_faults_wear_off_and_requests_are_counted(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x" * 1000)
    with ArchiveServer(tmp_path) as server, httpx.Client() as client:
        server.fail("/file", 503, times=1)
        server.replace("/other", b"served anyway", times=1)
        assert client.get(f"{server.url}/file").status_code == 503
        assert client.get(f"{server.url}/file").content == b"x" * 1000
        assert client.get(f"{server.url}/other").content == b"served anyway"
        assert client.get(f"{server.url}/other").status_code == 404
        assert client.get(f"{server.url}/../etc/passwd").status_code == 404
        server.truncate("/file")
        with pytest.raises(httpx.RemoteProtocolError):
            client.get(f"{server.url}/file")
        assert server.count("/file") == 3
        assert [r.status for r in server.requests("/other")] == [200, 404]


def test_deb_pool_path_drops_the_epoch() -> None:
    deb = Deb("busybox-static", "1:1.35.0-4+b3", source="busybox (1:1.35.0-4)")
    assert deb.pool_path == "pool/main/b/busybox/busybox-static_1.35.0-4+b3_amd64.deb"
    assert Deb("libssl3", "3.0", source="openssl").pool_path.startswith("pool/main/o/openssl/")
    assert Deb("libc6", "2.36", source="glibc").pool_path.startswith("pool/main/g/glibc/")
    assert Deb("libidn2-0", "2.3").pool_path.startswith("pool/main/libi/libidn2-0/")
