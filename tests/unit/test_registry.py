"""The registry client without a registry: references, retries, auth flows, on fakes."""

from __future__ import annotations

import base64
import hashlib
import ssl
from pathlib import Path

import httpx
import pytest

from basekiln import oci
from basekiln.errors import ExitCode, InputError, VerificationError
from basekiln.registry import (
    Credentials,
    Endpoint,
    InvalidReferenceError,
    ManifestNotFoundError,
    Reference,
    RegistryAuthError,
    RegistryClient,
    RegistryStatusError,
    RegistryUnreachableError,
    cosign_tags,
    credentials_from_env,
    is_loopback,
    is_retryable,
    parse_challenge,
    parse_reference,
)

DIGEST = "sha256:" + "ab" * 32
HOST = "127.0.0.1:5000"


# --- references -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"127.0.0.1:5000/staging/static@{DIGEST}",
         Reference("127.0.0.1:5000", "staging/static", None, DIGEST)),
        ("registry.example/team/app:v1.2",
         Reference("registry.example", "team/app", "v1.2", None)),
        ("localhost/app", Reference("localhost", "app")),
        ("localhost:5000/a/b/c:latest", Reference("localhost:5000", "a/b/c", "latest")),
        (f"ghcr.io/x/y:tag@{DIGEST}", Reference("ghcr.io", "x/y", "tag", DIGEST)),
        ("[::1]:5000/img", Reference("[::1]:5000", "img")),
        ("reg.example/my_app/some-thing.v2", Reference("reg.example", "my_app/some-thing.v2")),
    ],
)  # fmt: skip
def test_parse_reference(text: str, expected: Reference) -> None:
    assert parse_reference(text) == expected
    assert str(parse_reference(text)) == text


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("library/ubuntu", "name the registry"),
        ("ubuntu", "name the registry"),
        ("127.0.0.1:5000", "name the registry"),
        ("reg.example/Team/app", "not a valid repository"),
        ("reg.example/team//app", "not a valid repository"),
        ("reg.example/app@sha256:abc", "not a sha256 digest"),
        ("reg.example/app@md5:" + "a" * 32, "not a sha256 digest"),
        ("reg.example/app:-bad", "not a valid tag"),
        ("reg.example/app:" + "t" * 129, "not a valid tag"),
        ("bad_host.example/app", "not a valid registry host"),
    ],
)
def test_parse_reference_refuses(text: str, complaint: str) -> None:
    with pytest.raises(InvalidReferenceError, match=complaint) as caught:
        parse_reference(text)
    assert caught.value.exit_code == ExitCode.INPUT


def test_reference_helpers() -> None:
    ref = parse_reference(f"{HOST}/staging/static:latest")
    assert ref.identifier == "latest"
    assert ref.by_digest(DIGEST).identifier == DIGEST
    assert str(ref.by_digest(DIGEST)) == f"{HOST}/staging/static@{DIGEST}"
    assert ref.in_repository("release/static").name == f"{HOST}/release/static"
    with pytest.raises(InvalidReferenceError):
        parse_reference(f"{HOST}/staging").identifier  # noqa: B018
    with pytest.raises(InvalidReferenceError):
        ref.by_tag("no spaces")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1:5000", True), ("127.1.2.3", True), ("localhost:80", True), ("[::1]:5000", True),
     ("10.0.0.1:5000", False), ("registry.example", False), ("localhost.example", False)],
)  # fmt: skip
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_cosign_tags_picks_only_this_digests_artifacts() -> None:
    stem = DIGEST.replace(":", "-")
    other = "sha256-" + "cd" * 32
    tags = ["latest", f"{stem}.sig", f"{stem}.att", f"{stem}.sbom", stem, f"{other}.sig", "x.sig"]
    assert cosign_tags(DIGEST, tags) == sorted([stem, f"{stem}.att", f"{stem}.sbom", f"{stem}.sig"])


def test_plain_http_only_for_loopback() -> None:
    assert Endpoint(HOST, plain_http=True).base_url == f"http://{HOST}"
    assert Endpoint("registry.example").base_url == "https://registry.example"
    with pytest.raises(InputError, match="only loopback"):
        Endpoint("registry.example", plain_http=True)


def test_credentials_from_env() -> None:
    assert credentials_from_env({}) is None
    found = credentials_from_env(
        {"BASEKILN_REGISTRY_USERNAME": "u", "BASEKILN_REGISTRY_PASSWORD": "p"}
    )
    assert found is not None and (found.username, found.password) == ("u", "p")
    assert "p" not in repr(found)
    with pytest.raises(RegistryAuthError, match="BASEKILN_REGISTRY_PASSWORD"):
        credentials_from_env({"BASEKILN_REGISTRY_USERNAME": "u"})


# --- retry classification -----------------------------------------------------------


def _status(code: int) -> RegistryStatusError:
    return RegistryStatusError(f"HTTP {code}", code)


@pytest.mark.parametrize(
    ("exc", "retry"),
    [
        (_status(429), True), (_status(500), True), (_status(502), True), (_status(503), True),
        (_status(400), False), (_status(401), False), (_status(404), False),
        (_status(409), False),
        (httpx.ConnectError("connection refused"), True),
        (httpx.ReadTimeout("timed out"), True),
        (httpx.RemoteProtocolError("peer closed connection"), True),
        (httpx.ReadError("connection reset by peer"), True),
        (httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"), False),
        (RegistryAuthError("no"), False),
        (VerificationError("digest mismatch"), False),
        (ValueError("bug"), False),
    ],
)  # fmt: skip
def test_is_retryable(exc: BaseException, retry: bool) -> None:
    assert is_retryable(exc) is retry


def test_tls_failure_in_the_cause_chain_is_not_retried() -> None:
    wrapped = httpx.ConnectError("handshake failed")
    wrapped.__cause__ = ssl.SSLError(1, "wrong version number")
    assert not is_retryable(wrapped)


# --- challenges ---------------------------------------------------------------------


def test_parse_challenge() -> None:
    bearer = parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:team/app:pull,push"'
    )
    assert bearer.scheme == "bearer"
    assert bearer.params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:team/app:pull,push",
    }
    assert parse_challenge('Basic realm="basekiln"') == parse_challenge('basic realm="basekiln"')
    assert parse_challenge('Basic realm="a \\"quoted\\" realm"').params["realm"] == (
        'a "quoted" realm'
    )
    assert parse_challenge("").scheme == ""


# --- the client against a fake registry ---------------------------------------------


class FakeRegistry:
    """A tiny in-memory registry behind httpx.MockTransport, with an auth mode."""

    def __init__(self, auth: str = "none", password: str = "secret") -> None:
        self.auth, self.password = auth, password
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.uploads: dict[str, bytearray] = {}
        self.requests: list[tuple[str, str]] = []
        self.faults: list[int] = []  # statuses to answer before anything else
        self.tampered = False

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path))
        if request.url.path == "/token":
            return self.token(request)
        if self.faults:
            return httpx.Response(self.faults.pop(0))
        denied = self.check_auth(request)
        if denied is not None:
            return denied
        return self.route(request)

    def token(self, request: httpx.Request) -> httpx.Response:
        expected = "Basic " + base64.b64encode(f"u:{self.password}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return httpx.Response(401)
        scope = request.url.params.get("scope", "")
        return httpx.Response(200, json={"token": f"tok:{scope}"})

    def check_auth(self, request: httpx.Request) -> httpx.Response | None:
        given = request.headers.get("Authorization", "")
        if self.auth == "basic":
            expected = "Basic " + base64.b64encode(f"u:{self.password}".encode()).decode()
            if given != expected:
                return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="fake"'})
        if self.auth == "bearer" and not given.startswith("Bearer tok:repository:"):
            challenge = 'Bearer realm="http://127.0.0.1:5000/token",service="fake"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        return None

    def route(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.split("/")
        method = request.method
        if "blobs" in parts and "uploads" in parts:
            return self.upload(request, parts)
        if "blobs" in parts:
            digest = parts[-1]
            if digest not in self.blobs:
                return httpx.Response(404)
            return httpx.Response(200, content=self.blobs[digest] if method == "GET" else b"")
        if "manifests" in parts:
            repo = "/".join(parts[2 : parts.index("manifests")])
            return self.manifest(request, repo, parts[-1])
        if parts[-1] == "list":
            repo = "/".join(parts[2 : parts.index("tags")])
            tags = sorted(t for (r, t) in self.manifests if r == repo and ":" not in t)
            return self.tags_page(request, repo, tags)
        return httpx.Response(404)

    def upload(self, request: httpx.Request, parts: list[str]) -> httpx.Response:
        if request.method == "POST":
            session = f"s{len(self.uploads)}"
            self.uploads[session] = bytearray()
            return httpx.Response(202, headers={"Location": f"{request.url.path}{session}?_s=1"})
        session = parts[-1]
        self.uploads[session] += request.content
        if request.method == "PATCH":
            return httpx.Response(202, headers={"Location": str(request.url.copy_with(query=None))})
        data = bytes(self.uploads.pop(session))
        digest = request.url.params["digest"]
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            return httpx.Response(400, json={"errors": [{"code": "DIGEST_INVALID"}]})
        self.blobs[digest] = data
        return httpx.Response(201)

    def manifest(self, request: httpx.Request, repo: str, ref: str) -> httpx.Response:
        if request.method == "PUT":
            digest = "sha256:" + hashlib.sha256(request.content).hexdigest()
            media = request.headers["Content-Type"]
            self.manifests[(repo, ref)] = self.manifests[(repo, digest)] = (request.content, media)
            return httpx.Response(201, headers={"Docker-Content-Digest": digest})
        if (repo, ref) not in self.manifests:
            return httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN"}]})
        data, media = self.manifests[(repo, ref)]
        if self.tampered:
            data = data + b" "
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        headers = {"Content-Type": media, "Docker-Content-Digest": digest}
        return httpx.Response(
            200, content=data if request.method == "GET" else b"", headers=headers
        )

    def tags_page(self, request: httpx.Request, repo: str, tags: list[str]) -> httpx.Response:
        last = request.url.params.get("last")
        remaining = [t for t in tags if last is None or t > last]
        page = remaining[:2]
        headers = {}
        if len(remaining) > 2:
            headers["Link"] = f'</v2/{repo}/tags/list?n=2&last={page[-1]}>; rel="next"'
        return httpx.Response(200, json={"name": repo, "tags": page}, headers=headers)


def _client(
    fake: FakeRegistry,
    password: str | None = "secret",
    attempts: int = 5,
    chunk_size: int = 1 << 20,
) -> RegistryClient:
    credentials = Credentials("u", password, source="the test") if password else None
    endpoint = Endpoint(HOST, plain_http=True, credentials=credentials)
    return RegistryClient(
        endpoint, transport=fake.transport(), backoff=0, attempts=attempts, chunk_size=chunk_size
    )


@pytest.fixture
def image(tmp_path: Path) -> oci.Image:
    oci.write_image(tmp_path, [[oci.FileEntry("a.txt", b"a" * 300)], [oci.FileEntry("b", b"b")]])
    return oci.read_image(tmp_path)


def _push(
    fake: FakeRegistry,
    image: oci.Image,
    password: str | None = "secret",
    attempts: int = 5,
    chunk_size: int = 1 << 20,
) -> None:
    with _client(fake, password, attempts, chunk_size) as client:
        client.push_image(image, parse_reference(f"{HOST}/team/app"))


@pytest.mark.parametrize("auth", ["none", "basic", "bearer"])
def test_push_with_each_auth_scheme(auth: str, image: oci.Image) -> None:
    fake = FakeRegistry(auth)
    _push(fake, image)
    assert ("team/app", image.digest) in fake.manifests
    assert len(fake.blobs) == 1 + len(image.layers)


def test_bearer_token_is_fetched_once_per_scope(image: oci.Image) -> None:
    fake = FakeRegistry("bearer")
    _push(fake, image)
    token_requests = [r for r in fake.requests if r[1] == "/token"]
    assert 1 <= len(token_requests) <= 2  # pull,push for the writes; pull for the reads


def test_chunked_upload(image: oci.Image) -> None:
    fake = FakeRegistry()
    _push(fake, image, chunk_size=64)
    assert sum(1 for method, _ in fake.requests if method == "PATCH") >= 5
    assert len(fake.blobs) == 3


def test_second_push_skips_present_blobs(image: oci.Image) -> None:
    fake = FakeRegistry()
    _push(fake, image)
    fake.requests.clear()
    with _client(fake) as client:
        result = client.push_image(image, parse_reference(f"{HOST}/team/app"))
    assert result.uploaded == () and len(result.skipped) == 3
    assert not any(method == "POST" for method, _ in fake.requests)


@pytest.mark.parametrize("auth", ["basic", "bearer"])
def test_missing_credentials_name_what_to_set(auth: str, image: oci.Image) -> None:
    with pytest.raises(RegistryAuthError, match="BASEKILN_REGISTRY_USERNAME") as caught:
        _push(FakeRegistry(auth), image, password=None)
    assert HOST in caught.value.message
    assert caught.value.exit_code == ExitCode.INPUT


@pytest.mark.parametrize("auth", ["basic", "bearer"])
def test_wrong_credentials_name_the_user(auth: str, image: oci.Image) -> None:
    with pytest.raises(RegistryAuthError, match="refused the login of user 'u' from the test"):
        _push(FakeRegistry(auth, password="other"), image)


def test_transient_statuses_are_retried(image: oci.Image) -> None:
    fake = FakeRegistry()
    fake.faults = [503, 429, 502]
    _push(fake, image)
    assert ("team/app", image.digest) in fake.manifests


def test_gives_up_after_the_attempts(image: oci.Image) -> None:
    fake = FakeRegistry()
    fake.faults = [503] * 10
    with pytest.raises(RegistryStatusError, match=r"HTTP 503.*gave up after 3 attempts"):
        _push(fake, image, attempts=3)
    assert len(fake.requests) == 3
    assert fake.manifests == {}


def test_other_4xx_is_not_retried(image: oci.Image) -> None:
    fake = FakeRegistry()
    fake.faults = [400, 503]
    with pytest.raises(RegistryStatusError, match="HTTP 400") as caught:
        _push(fake, image)
    assert caught.value.status == 400
    assert len(fake.requests) == 1


def test_connection_errors_are_retried_then_reported(image: oci.Image) -> None:
    calls: list[int] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise httpx.ConnectError("connection refused", request=request)

    endpoint = Endpoint(HOST, plain_http=True)
    client = RegistryClient(endpoint, transport=httpx.MockTransport(refuse), backoff=0, attempts=3)
    with client, pytest.raises(RegistryUnreachableError, match="cannot reach registry") as caught:
        client.push_image(image, parse_reference(f"{HOST}/team/app"))
    assert "is the registry running" in caught.value.message
    assert len(calls) == 3


def test_a_manifest_with_other_bytes_is_refused(image: oci.Image) -> None:
    fake = FakeRegistry()
    fake.tampered = True
    with pytest.raises(VerificationError, match="refusing it"):
        _push(fake, image)


def test_push_refuses_a_tag(image: oci.Image) -> None:
    with _client(FakeRegistry()) as client, pytest.raises(InputError, match="by digest only"):
        client.push_image(image, parse_reference(f"{HOST}/team/app:latest"))


def test_client_refuses_another_host(image: oci.Image) -> None:
    with _client(FakeRegistry()) as client, pytest.raises(InputError, match="talks to"):
        client.push_image(image, parse_reference("other.example/team/app"))


def test_tags_list_follows_pages_and_tags_move(image: oci.Image) -> None:
    fake = FakeRegistry()
    repo = parse_reference(f"{HOST}/team/app")
    with _client(fake) as client:
        pushed = client.push_image(image, repo).reference
        client.put_tags(pushed, ["a", "b", "c", "d", "e"])
        assert client.list_tags(repo) == ["a", "b", "c", "d", "e"]
        info = client.head_manifest(repo.by_tag("c"))
        assert info is not None and info.digest == image.digest
        assert client.head_manifest(repo.by_tag("nope")) is None
        with pytest.raises(ManifestNotFoundError):
            client.get_manifest(repo.by_tag("nope"))
        assert client.list_tags(parse_reference(f"{HOST}/team/unknown")) == []


def test_blob_digest_is_checked_before_upload(tmp_path: Path) -> None:
    source = tmp_path / "blob"
    source.write_bytes(b"not what the digest says")
    with (
        _client(FakeRegistry()) as client,
        source.open("rb") as handle,
        pytest.raises(VerificationError, match="refusing it"),
    ):
        client.upload_blob("team/app", DIGEST, handle)
