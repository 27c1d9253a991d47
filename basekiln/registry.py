"""A small OCI distribution client: push by digest, read back, tag, copy, list tags.

Everything is addressed by digest. `RegistryClient.push_image` uploads the blobs the
registry lacks, puts the manifest by digest, then reads it back and checks its sha256;
it never sets a tag, so a tag can only be set (`put_tags`) after the digest is signed.
`copy_image` copies a digest with cosign's signature and attestation tags
(`sha256-<hex>.sig`, `.att`, `.sbom`), which is how promotion keeps `cosign verify`
working in the release repository.

Retried, with exponential backoff: 429, 5xx, timeouts and connection resets. Never
retried: other 4xx, TLS certificate failures and bytes that fail a digest check. A blob
upload is retried whole, from a new upload session, so a half-sent chunk is never
resumed at a guessed offset.

Credentials come from BASEKILN_REGISTRY_USERNAME and BASEKILN_REGISTRY_PASSWORD; they
answer both a Basic challenge and the Bearer token flow. Plain HTTP is only allowed
for loopback registries.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
import os
import re
import ssl
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from basekiln import oci
from basekiln._http import USER_AGENT
from basekiln.errors import BasekilnError, ExitCode, InputError, VerificationError

log = logging.getLogger(__name__)

USERNAME_ENV = "BASEKILN_REGISTRY_USERNAME"
PASSWORD_ENV = "BASEKILN_REGISTRY_PASSWORD"  # noqa: S105 (a variable name)

MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_MEDIA_TYPES = (
    oci.MEDIA_MANIFEST,
    oci.MEDIA_INDEX,
    MEDIA_DOCKER_MANIFEST,
    MEDIA_DOCKER_LIST,
)
INDEX_MEDIA_TYPES = (oci.MEDIA_INDEX, MEDIA_DOCKER_LIST)

# cosign's legacy (2.x) tag scheme, plus the OCI 1.1 referrers fallback tag.
COSIGN_TAG_SUFFIXES = (".sig", ".att", ".sbom", "")

CHUNK_SIZE = 16 << 20
MAX_MANIFEST_BYTES = 4 << 20
T = TypeVar("T")


class RegistryError(BasekilnError):
    """A registry refused, failed, or answered something basekiln cannot use."""


class RegistryAuthError(RegistryError):
    """Credentials are missing, wrong, or lack permission; the user must fix them."""

    exit_code = ExitCode.INPUT


class RegistryUnreachableError(RegistryError):
    """No answer from the registry: refused, timed out, reset, or TLS not trusted."""


class RegistryStatusError(RegistryError):
    """The registry answered with an HTTP status the operation did not expect."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class ManifestNotFoundError(RegistryError):
    """No manifest under that digest or tag."""


class InvalidReferenceError(InputError):
    """An image reference that does not parse."""


# --- references -------------------------------------------------------------------

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST_RE = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?")
_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}")


@dataclass(frozen=True)
class Reference:
    """`registry/repository[:tag][@digest]`; when both are set the digest wins."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    @property
    def name(self) -> str:
        """`registry/repository`, with neither tag nor digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def identifier(self) -> str:
        """What goes after `/manifests/`: the digest if known, else the tag."""
        if self.digest:
            return self.digest
        if self.tag:
            return self.tag
        raise InvalidReferenceError(f"{self}: names no tag and no digest")

    def by_digest(self, digest: str) -> Reference:
        return replace(self, tag=None, digest=check_digest(digest))

    def by_tag(self, tag: str) -> Reference:
        return replace(self, tag=check_tag(tag), digest=None)

    def in_repository(self, repository: str) -> Reference:
        return parse_reference(f"{self.registry}/{repository}")


def parse_reference(text: str) -> Reference:
    """Parse `HOST[:PORT]/REPO[:TAG][@sha256:HEX]`; the registry host is mandatory.

    There is no default registry: a first component without a dot, a colon or the
    name `localhost` is refused, so an image never lands on Docker Hub by accident.
    """
    name, at, digest = text.strip().partition("@")
    if at:
        check_digest(digest)
    tag: str | None = None
    colon, slash = name.rfind(":"), name.rfind("/")
    if colon > slash:
        name, tag = name[:colon], check_tag(name[colon + 1 :])

    host, sep, repository = name.partition("/")
    looks_like_host = "." in host or ":" in host or host == "localhost" or host.startswith("[")
    if not sep or not looks_like_host:
        raise InvalidReferenceError(
            f"{text!r}: name the registry and repository, like "
            "127.0.0.1:5000/staging/static@sha256:… or registry.example/team/app:tag"
        )
    if not _HOST_RE.fullmatch(host):
        raise InvalidReferenceError(f"{text!r}: {host!r} is not a valid registry host")
    bad = [c for c in repository.split("/") if not _COMPONENT_RE.fullmatch(c)]
    if bad or len(repository) > 255:
        raise InvalidReferenceError(
            f"{text!r}: {repository!r} is not a valid repository name (lowercase letters, "
            "digits and separators . _ __ - between them, components joined by /)"
        )
    return Reference(host, repository, tag, digest or None)


def check_digest(digest: str) -> str:
    if not _DIGEST_RE.fullmatch(digest):
        raise InvalidReferenceError(f"{digest!r} is not a sha256 digest (sha256:<64 hex>)")
    return digest


def check_tag(tag: str) -> str:
    if not _TAG_RE.fullmatch(tag):
        raise InvalidReferenceError(
            f"{tag!r} is not a valid tag (letters, digits, _ . -, at most 128, not starting "
            "with . or -)"
        )
    return tag


def is_loopback(host: str) -> bool:
    """Whether `host` (with optional port) names this machine."""
    name = host
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def cosign_tags(digest: str, tags: Sequence[str]) -> list[str]:
    """The tags in `tags` under which cosign stores artifacts for `digest`."""
    stem = check_digest(digest).replace(":", "-")
    wanted = {stem + suffix for suffix in COSIGN_TAG_SUFFIXES}
    return sorted(t for t in tags if t in wanted)


# --- endpoints and credentials ----------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    source: str = ""  # where they came from, for error messages


def credentials_from_env(env: Mapping[str, str] | None = None) -> Credentials | None:
    """Registry credentials from the environment, or None when neither is set."""
    env = os.environ if env is None else env
    username, password = env.get(USERNAME_ENV), env.get(PASSWORD_ENV)
    if username is None and password is None:
        return None
    if not username or password is None:
        raise RegistryAuthError(
            f"set both {USERNAME_ENV} and {PASSWORD_ENV} (only one of them is set, or the "
            "user name is empty)"
        )
    return Credentials(username, password, source=f"{USERNAME_ENV} and {PASSWORD_ENV}")


@dataclass(frozen=True)
class Endpoint:
    """How to reach one registry: scheme, trusted CA bundle and credentials."""

    host: str
    plain_http: bool = False
    ca_bundle: Path | None = None
    credentials: Credentials | None = None

    def __post_init__(self) -> None:
        if not _HOST_RE.fullmatch(self.host):
            raise InvalidReferenceError(f"{self.host!r} is not a valid registry host")
        if self.plain_http and not is_loopback(self.host):
            raise InputError(
                f"refusing plain HTTP to {self.host}: only loopback registries may skip TLS"
            )

    @property
    def base_url(self) -> str:
        return f"{'http' if self.plain_http else 'https'}://{self.host}"


def endpoint_from_env(
    host: str,
    *,
    plain_http: bool = False,
    ca_bundle: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Endpoint:
    """An endpoint for `host` with credentials from the environment, if any."""
    return Endpoint(host, plain_http, ca_bundle, credentials_from_env(env))


# --- retries ------------------------------------------------------------------------


def is_retryable(exc: BaseException) -> bool:
    """429, 5xx, timeouts and resets are worth another try; nothing else is."""
    if isinstance(exc, RegistryStatusError):
        return exc.status == 429 or exc.status >= 500
    if isinstance(exc, httpx.TransportError):
        return not _is_tls_failure(exc)
    return False


def _is_tls_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(10):  # the cause chain, bounded
        if seen is None:
            break
        if isinstance(seen, ssl.SSLError) or "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# --- auth challenges ----------------------------------------------------------------

_PARAM_RE = re.compile(r'([A-Za-z_]+)=(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "basic" or "bearer"
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge:
    """Parse one `WWW-Authenticate` value, such as `Bearer realm="…",scope="…"`."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    for match in _PARAM_RE.finditer(rest):
        quoted, bare = match[2], match[3]
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
        params[match[1].lower()] = value
    return Challenge(scheme.lower(), params)


@dataclass(frozen=True)
class ManifestInfo:
    digest: str
    media_type: str
    size: int


@dataclass(frozen=True)
class Manifest:
    digest: str
    media_type: str
    data: bytes

    def json(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.data)
        return parsed


@dataclass(frozen=True)
class PushResult:
    reference: Reference  # by digest
    uploaded: tuple[str, ...]
    skipped: tuple[str, ...]

    @property
    def digest(self) -> str:
        assert self.reference.digest is not None
        return self.reference.digest


@dataclass(frozen=True)
class CopyResult:
    reference: Reference  # the destination, by digest
    artifact_tags: tuple[str, ...]  # cosign tags copied along
    tags: tuple[str, ...]  # tags set on the destination digest


class RegistryClient:
    """One registry, one HTTP connection pool, one auth state. Use as a context manager."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        timeout: float = 60.0,
        attempts: int = 5,
        backoff: float = 0.25,
        chunk_size: int = CHUNK_SIZE,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """`transport` replaces the network, for tests (an `httpx.MockTransport`)."""
        self.endpoint = endpoint
        self.attempts = attempts
        self.backoff = backoff
        self.chunk_size = chunk_size
        verify: ssl.SSLContext | bool = True
        if endpoint.ca_bundle is not None:
            verify = ssl.create_default_context(cafile=str(endpoint.ca_bundle))
        self._http = httpx.Client(
            base_url=endpoint.base_url,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 15.0)),
            headers={"User-Agent": USER_AGENT},
            verify=verify,
            trust_env=False,
            transport=transport,
        )
        self._basic = False
        self._tokens: dict[str, str] = {}

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    @property
    def host(self) -> str:
        return self.endpoint.host

    # --- reading --------------------------------------------------------------------

    def head_manifest(self, ref: Reference) -> ManifestInfo | None:
        """Digest, media type and size of a manifest, or None when absent."""
        self._check_host(ref)

        def attempt() -> ManifestInfo | None:
            response = self._request(
                "HEAD",
                f"/v2/{ref.repository}/manifests/{ref.identifier}",
                repository=ref.repository,
                headers={"Accept": ", ".join(MANIFEST_MEDIA_TYPES)},
            )
            if response.status_code == 404:
                return None
            self._expect(response, 200, f"looking up {ref}")
            return ManifestInfo(
                response.headers.get("Docker-Content-Digest", ref.digest or ""),
                _media_type(response),
                int(response.headers.get("Content-Length", "0")),
            )

        return self._retrying(f"looking up {ref}", attempt)

    def get_manifest(self, ref: Reference) -> Manifest:
        """The manifest's exact bytes; by digest, checked against that digest."""
        self._check_host(ref)

        def attempt() -> Manifest:
            response = self._request(
                "GET",
                f"/v2/{ref.repository}/manifests/{ref.identifier}",
                repository=ref.repository,
                headers={"Accept": ", ".join(MANIFEST_MEDIA_TYPES)},
            )
            if response.status_code == 404:
                raise ManifestNotFoundError(f"{ref}: no such manifest on {self.host}")
            self._expect(response, 200, f"reading {ref}")
            data = response.content
            if len(data) > MAX_MANIFEST_BYTES:
                raise RegistryError(f"{ref}: manifest of {len(data)} bytes is too large")
            return Manifest(oci.sha256_digest(data), _media_type(response), data)

        manifest = self._retrying(f"reading {ref}", attempt)
        if ref.digest and manifest.digest != ref.digest:
            raise VerificationError(
                f"{ref}: the registry {self.host} served a manifest whose sha256 is "
                f"{manifest.digest}; refusing it"
            )
        return manifest

    def blob_exists(self, repository: str, digest: str) -> bool:
        def attempt() -> bool:
            response = self._request(
                "HEAD", f"/v2/{repository}/blobs/{digest}", repository=repository
            )
            if response.status_code == 404:
                return False
            self._expect(response, 200, f"looking up blob {digest} in {repository}")
            return True

        return self._retrying(f"looking up blob {digest}", attempt)

    def list_tags(self, repo: Reference) -> list[str]:
        """Every tag in the repository, following pagination; [] for an unknown one."""
        self._check_host(repo)
        tags: list[str] = []
        url: str | None = f"/v2/{repo.repository}/tags/list?n=1000"
        while url is not None:
            page = self._tags_page(repo, url)
            if page is None:
                return []
            tags += page.json().get("tags") or []
            url = _next_link(page)
        return sorted(tags)

    def _tags_page(self, repo: Reference, url: str) -> httpx.Response | None:
        def attempt() -> httpx.Response | None:
            response = self._request("GET", url, repository=repo.repository)
            if response.status_code == 404:
                return None
            self._expect(response, 200, f"listing tags of {repo.name}")
            return response

        return self._retrying(f"listing tags of {repo.name}", attempt)

    # --- writing --------------------------------------------------------------------

    def push_image(self, image: oci.Image, target: Reference) -> PushResult:
        """Push one image by digest to `target`'s repository; sets no tag.

        Blobs the registry already holds are skipped; the manifest goes up last, then is
        read back by digest and its sha256 compared with the local one.
        """
        self._check_host(target)
        if target.tag is not None or target.digest not in (None, image.digest):
            raise InputError(
                f"{target}: push_image pushes by digest only; name the repository without "
                "a tag and set tags with put_tags once the digest is signed"
            )
        repo = target.repository
        uploaded, skipped = [], []
        for blob in [image.config_descriptor, *image.layers]:
            if self.blob_exists(repo, blob.digest):
                log.debug("%s: blob %s already present", target.name, blob.digest)
                skipped.append(blob.digest)
                continue
            path = image.blob_path(blob.digest)
            if not path.is_file():
                raise oci.LayoutError(f"{image.layout}: blob {blob.digest} is missing")
            with path.open("rb") as source:
                self.upload_blob(repo, blob.digest, source)
            uploaded.append(blob.digest)

        data = image.blob_path(image.digest).read_bytes()
        if oci.sha256_digest(data) != image.digest:
            raise oci.LayoutError(f"{image.layout}: manifest blob {image.digest} is corrupt")
        media_type = image.manifest.get("mediaType") or image.manifest_descriptor.media_type
        pushed = target.by_digest(image.digest)
        self.put_manifest(pushed, data, media_type)
        self.get_manifest(pushed)  # raises unless the registry serves the same sha256
        log.debug(
            "pushed %s (%d blobs uploaded, %d already there)", pushed, len(uploaded), len(skipped)
        )
        return PushResult(pushed, tuple(uploaded), tuple(skipped))

    def pull_image(self, ref: Reference, layout: Path, platform: str) -> oci.Image:
        """Write the image at `ref` (by digest) for `platform` into an OCI layout.

        Every blob is checked against its digest as it arrives (`fetch_blob`).
        """
        self._check_host(ref)
        manifest = self.get_manifest(ref)
        if manifest.media_type in INDEX_MEDIA_TYPES:
            entries = manifest.json().get("manifests", [])
            entry = next((m for m in entries if oci.for_platform(m, platform)), None)
            if entry is None:
                raise InputError(f"{ref}: no image for {platform} in its index")
            manifest = self.get_manifest(ref.by_digest(entry["digest"]))
        body = manifest.json()
        oci.write_blob(layout, manifest.data)
        for blob in [body["config"], *body.get("layers", [])]:
            path = oci.blob_path(layout, blob["digest"])
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as target:
                self.fetch_blob(ref.repository, blob["digest"], target)
        descriptor = {
            "mediaType": manifest.media_type,
            "digest": manifest.digest,
            "size": len(manifest.data),
        }
        oci.write_index(layout, descriptor)
        return oci.read_image(layout, platform)

    def upload_blob(self, repository: str, digest: str, source: IO[bytes]) -> None:
        """Upload `source` as blob `digest`: in one PUT if small, else PATCH by chunk."""
        check_digest(digest)
        size = source.seek(0, os.SEEK_END)

        def attempt() -> None:
            source.seek(0)
            location = self._start_upload(repository)
            if size <= self.chunk_size:
                data = source.read()
                _check_bytes(digest, hashlib.sha256(data).hexdigest(), repository)
                self._finish_upload(repository, location, digest, data)
                return
            hasher, offset = hashlib.sha256(), 0
            while chunk := source.read(self.chunk_size):
                hasher.update(chunk)
                location = self._patch(repository, location, chunk, offset)
                offset += len(chunk)
            _check_bytes(digest, hasher.hexdigest(), repository)
            self._finish_upload(repository, location, digest, b"")

        self._retrying(f"uploading blob {digest} to {repository}", attempt)

    def mount_blob(self, repository: str, digest: str, from_repository: str) -> bool:
        """Ask the registry to mount a blob from another of its repositories."""

        def attempt() -> bool:
            response = self._request(
                "POST",
                f"/v2/{repository}/blobs/uploads/",
                repository=repository,
                push=True,
                params={"mount": digest, "from": from_repository},
                extra_scopes=[f"repository:{from_repository}:pull"],
            )
            if response.status_code == 201:
                return True
            self._expect(response, 202, f"mounting {digest} into {repository}")
            # The registry declined and opened an upload session instead; close it.
            self._request("DELETE", _location(response), repository=repository, push=True)
            return False

        return self._retrying(f"mounting blob {digest}", attempt)

    def put_manifest(self, ref: Reference, data: bytes, media_type: str) -> None:
        """PUT a manifest under `ref`'s digest or tag; the registry must echo its digest."""
        self._check_host(ref)
        digest = oci.sha256_digest(data)
        if ref.digest and ref.digest != digest:
            raise InputError(f"{ref}: these manifest bytes have digest {digest}")

        def attempt() -> None:
            response = self._request(
                "PUT",
                f"/v2/{ref.repository}/manifests/{ref.identifier}",
                repository=ref.repository,
                push=True,
                headers={"Content-Type": media_type},
                content=data,
            )
            self._expect(response, 201, f"putting manifest {ref}")
            echoed = response.headers.get("Docker-Content-Digest")
            if echoed and echoed != digest:
                raise VerificationError(
                    f"{ref}: registry {self.host} stored the manifest as {echoed}, not {digest}"
                )

        self._retrying(f"putting manifest {ref}", attempt)

    def put_tags(self, ref: Reference, tags: Sequence[str]) -> None:
        """Point each tag at `ref`'s digest, creating or moving it."""
        if ref.digest is None:
            raise InputError(f"{ref}: tags are set on a digest; name one")
        manifest = self.get_manifest(ref)
        for tag in tags:
            self.put_manifest(ref.by_tag(tag), manifest.data, manifest.media_type)
            log.debug("tagged %s as %s", ref, tag)

    # --- plumbing -------------------------------------------------------------------

    def _start_upload(self, repository: str) -> str:
        response = self._request(
            "POST", f"/v2/{repository}/blobs/uploads/", repository=repository, push=True
        )
        self._expect(response, 202, f"starting an upload to {repository}")
        return _location(response)

    def _patch(self, repository: str, location: str, chunk: bytes, offset: int) -> str:
        response = self._request(
            "PATCH",
            location,
            repository=repository,
            push=True,
            content=chunk,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
            },
        )
        self._expect(response, 202, f"uploading a chunk to {repository}")
        return _location(response)

    def _finish_upload(self, repository: str, location: str, digest: str, data: bytes) -> None:
        url = httpx.URL(location).copy_merge_params({"digest": digest})
        response = self._request(
            "PUT",
            str(url),
            repository=repository,
            push=True,
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        self._expect(response, 201, f"finishing the upload of {digest} to {repository}")

    def fetch_blob(self, repository: str, digest: str, target: IO[bytes]) -> None:
        """Stream blob `digest` into `target`, checking its sha256."""

        def attempt() -> None:
            target.seek(0)
            target.truncate()
            hasher = hashlib.sha256()
            with self._stream("GET", f"/v2/{repository}/blobs/{digest}", repository) as resp:
                self._expect(resp, 200, f"reading blob {digest} from {repository}")
                for chunk in resp.iter_bytes(1 << 16):
                    hasher.update(chunk)
                    target.write(chunk)
            _check_bytes(digest, hasher.hexdigest(), f"{self.host}/{repository}")

        self._retrying(f"reading blob {digest}", attempt)

    def _check_host(self, ref: Reference) -> None:
        if ref.registry != self.host:
            raise InputError(f"{ref}: this client talks to {self.host}, not {ref.registry}")

    def _retrying(self, what: str, fn: Callable[[], T]) -> T:
        retryer = Retrying(
            retry=retry_if_exception(is_retryable),
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=self.backoff, max=8.0),
            before_sleep=_log_retry,
            reraise=True,
        )
        try:
            return retryer(fn)
        except httpx.TransportError as exc:
            raise self._unreachable(what, exc) from exc
        except RegistryStatusError as exc:
            if not is_retryable(exc):
                raise
            raise RegistryStatusError(
                f"{exc.message} (gave up after {self.attempts} attempts)", exc.status
            ) from exc

    def _unreachable(self, what: str, exc: httpx.TransportError) -> RegistryUnreachableError:
        if _is_tls_failure(exc):
            hint = (
                "the TLS handshake failed; if the registry uses a private CA, pass its CA "
                "bundle, and if it speaks plain HTTP on loopback, say so"
            )
        else:
            hint = f"gave up after {self.attempts} attempts; is the registry running?"
        return RegistryUnreachableError(
            f"cannot reach registry {self.endpoint.base_url} while {what}: "
            f"{type(exc).__name__}: {exc or 'no detail'}; {hint}"
        )

    def _expect(self, response: httpx.Response, status: int, what: str) -> None:
        code = response.status_code
        if code == status:
            return
        if code == 403:
            raise RegistryAuthError(
                f"registry {self.host} denied {what} (HTTP 403{_error_codes(response)}); "
                "the credentials lack permission for this repository"
            )
        raise RegistryStatusError(
            f"registry {self.host} answered HTTP {code} while {what}{_error_codes(response)}",
            code,
        )

    def _request(
        self,
        method: str,
        url: str,
        *,
        repository: str,
        push: bool = False,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        params: Mapping[str, str] | None = None,
        extra_scopes: Sequence[str] = (),
    ) -> httpx.Response:
        scopes = (f"repository:{repository}:{'pull,push' if push else 'pull'}", *extra_scopes)
        request = self._http.build_request(
            method, url, headers=headers, content=content, params=params
        )
        return self._send(request, scopes, stream=False)

    def _stream(self, method: str, url: str, repository: str) -> _StreamedResponse:
        scopes = (f"repository:{repository}:pull",)
        request = self._http.build_request(method, url)
        return _StreamedResponse(self._send(request, scopes, stream=True))

    def _send(self, request: httpx.Request, scopes: Sequence[str], stream: bool) -> httpx.Response:
        self._authorize(request, scopes)
        response = self._http.send(request, stream=stream, follow_redirects=True)
        if response.status_code != 401:
            return response
        response.close()

        challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        had_auth = "Authorization" in request.headers
        if challenge.scheme == "basic":
            if self._basic and had_auth:
                raise self._refused()
            self._basic = True
        elif challenge.scheme == "bearer":
            self._tokens[_scope_key(scopes)] = self._fetch_token(challenge, scopes)
        else:
            raise RegistryAuthError(
                f"registry {self.host} asks for unsupported authentication "
                f"{challenge.scheme or '(none given)'}"
            )
        self._authorize(request, scopes)
        response = self._http.send(request, stream=stream, follow_redirects=True)
        if response.status_code == 401:
            response.close()
            raise self._refused()
        return response

    def _authorize(self, request: httpx.Request, scopes: Sequence[str]) -> None:
        token = self._tokens.get(_scope_key(scopes))
        if token is not None:
            request.headers["Authorization"] = f"Bearer {token}"
        elif self._basic:
            request.headers["Authorization"] = self._basic_header()

    def _basic_header(self) -> str:
        credentials = self._require_credentials()
        pair = f"{credentials.username}:{credentials.password}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")

    def _fetch_token(self, challenge: Challenge, scopes: Sequence[str]) -> str:
        realm = challenge.params.get("realm")
        if not realm:
            raise RegistryAuthError(f"registry {self.host} sent a Bearer challenge with no realm")
        wanted = list(scopes)
        if challenge.params.get("scope") and challenge.params["scope"] not in wanted:
            wanted.append(challenge.params["scope"])
        params = tuple(("scope", s) for s in wanted)
        if challenge.params.get("service"):
            params = (("service", challenge.params["service"]), *params)
        credentials = self.endpoint.credentials
        auth = (credentials.username, credentials.password) if credentials else None
        response = self._http.get(realm, params=params, auth=auth, follow_redirects=True)
        if response.status_code in (401, 403):
            raise self._refused() if credentials else self._missing()
        self._expect(response, 200, f"asking {realm} for a token")
        body = response.json()
        token = body.get("token") or body.get("access_token")
        if not isinstance(token, str) or not token:
            raise RegistryAuthError(f"the token service {realm} answered without a token")
        return token

    def _require_credentials(self) -> Credentials:
        if self.endpoint.credentials is None:
            raise self._missing()
        return self.endpoint.credentials

    def _missing(self) -> RegistryAuthError:
        return RegistryAuthError(
            f"registry {self.host} requires a login; set {USERNAME_ENV} and {PASSWORD_ENV}"
        )

    def _refused(self) -> RegistryAuthError:
        credentials = self.endpoint.credentials
        if credentials is None:
            return self._missing()
        origin = f" from {credentials.source}" if credentials.source else ""
        return RegistryAuthError(
            f"registry {self.host} refused the login of user {credentials.username!r}"
            f"{origin}; check the user name and password"
        )


class _StreamedResponse:
    def __init__(self, response: httpx.Response) -> None:
        self.response = response

    def __enter__(self) -> httpx.Response:
        return self.response

    def __exit__(self, *exc: object) -> None:
        self.response.close()


def copy_image(
    source: RegistryClient,
    ref: Reference,
    target: RegistryClient,
    destination: Reference,
    *,
    tags: Sequence[str] = (),
    with_cosign_artifacts: bool = True,
) -> CopyResult:
    """Copy `ref` (by digest) into `destination`'s repository, with its cosign tags.

    The image's manifests and blobs go first, then each cosign artifact
    (`sha256-<hex>.sig`, `.att`, `.sbom`) by digest and under its tag, and only then
    the `tags` on the copied digest. Blobs move by cross-repository mount when both
    repositories are on one registry. An artifact tag already in the destination is
    replaced, so signatures made only there are dropped.
    """
    if ref.digest is None:
        raise InputError(f"{ref}: copy an image by digest, never by tag")
    if destination.tag is not None or destination.digest is not None:
        raise InputError(f"{destination}: name the destination repository only")
    _copy_tree(source, ref, target, destination.by_digest(ref.digest))

    artifacts: list[str] = []
    if with_cosign_artifacts:
        for tag in cosign_tags(ref.digest, source.list_tags(ref)):
            manifest = source.get_manifest(ref.by_tag(tag))
            _copy_tree(
                source,
                ref.by_digest(manifest.digest),
                target,
                destination.by_digest(manifest.digest),
            )
            target.put_manifest(destination.by_tag(tag), manifest.data, manifest.media_type)
            artifacts.append(tag)

    copied = destination.by_digest(ref.digest)
    if tags:
        target.put_tags(copied, tags)
    log.debug("copied %s to %s with %d cosign artifacts", ref, copied, len(artifacts))
    return CopyResult(copied, tuple(artifacts), tuple(tags))


def _copy_tree(
    source: RegistryClient, ref: Reference, target: RegistryClient, destination: Reference
) -> None:
    """Copy one manifest (an index with its children) and its blobs, by digest."""
    if target.head_manifest(destination) is not None:
        return  # a registry only stores a manifest whose blobs it holds
    manifest = source.get_manifest(ref)
    body = manifest.json()
    if manifest.media_type in INDEX_MEDIA_TYPES or "manifests" in body:
        for child in body.get("manifests", []):
            _copy_tree(
                source,
                ref.by_digest(child["digest"]),
                target,
                destination.by_digest(child["digest"]),
            )
    else:
        for blob in _blobs(body):
            _copy_blob(source, ref, target, destination, blob)
    target.put_manifest(destination, manifest.data, manifest.media_type)


def _blobs(manifest: dict[str, Any]) -> Iterator[str]:
    if "config" in manifest:
        yield manifest["config"]["digest"]
    for layer in manifest.get("layers", []):
        yield layer["digest"]


def _copy_blob(
    source: RegistryClient,
    ref: Reference,
    target: RegistryClient,
    destination: Reference,
    digest: str,
) -> None:
    repository = destination.repository
    if target.blob_exists(repository, digest):
        return
    if source.host == target.host and target.mount_blob(repository, digest, ref.repository):
        return
    with tempfile.SpooledTemporaryFile(max_size=source.chunk_size) as spool:
        source.fetch_blob(ref.repository, digest, spool)
        target.upload_blob(repository, digest, spool)


def _check_bytes(digest: str, hexdigest: str, where: str) -> None:
    actual = "sha256:" + hexdigest
    if actual != digest:
        raise VerificationError(f"blob {digest} for {where} has sha256 {actual}; refusing it")


def _media_type(response: httpx.Response) -> str:
    content_type: str = response.headers.get("Content-Type", "")
    return content_type.partition(";")[0].strip()


def _location(response: httpx.Response) -> str:
    location = response.headers.get("Location")
    if not location:
        raise RegistryError(f"{response.request.url}: upload answer has no Location header")
    return str(response.request.url.join(location))


def _next_link(response: httpx.Response) -> str | None:
    link = response.headers.get("Link", "")
    match = re.search(r'<([^>]+)>\s*;\s*rel="?next"?', link)
    return str(response.request.url.join(match[1])) if match else None


def _scope_key(scopes: Sequence[str]) -> str:
    return " ".join(sorted(scopes))


def _error_codes(response: httpx.Response) -> str:
    try:
        errors = response.json().get("errors") or []
        text = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
    except (ValueError, AttributeError):
        text = ""
    return f" ({text})" if text else ""


def _log_retry(state: RetryCallState) -> None:
    outcome = state.outcome
    exc = outcome.exception() if outcome else None
    log.warning("registry: retrying after attempt %d failed: %s", state.attempt_number, exc)
