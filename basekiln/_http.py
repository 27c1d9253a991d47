"""HTTP with the retry policy basekiln uses everywhere.

Retried: timeouts, connection resets, truncated bodies, 429 and 5xx. Never retried:
other 4xx (the file is not there) and content that fails verification.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
from tenacity import (
    RetryCallState,
    retry,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from basekiln import __version__

log = logging.getLogger(__name__)

USER_AGENT = f"basekiln/{__version__}"
T = TypeVar("T")


class NotFoundError(Exception):
    """The server answered a 4xx other than 429: retrying will not help."""

    def __init__(self, url: str, status: int) -> None:
        super().__init__(f"{url}: HTTP {status}")
        self.url = url
        self.status = status


def client(timeout: float) -> httpx.Client:
    return httpx.Client(
        timeout=httpx.Timeout(timeout, connect=min(timeout, 15.0)),
        headers={"User-Agent": USER_AGENT},
        follow_redirects=True,
    )


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, httpx.HTTPStatusError):
        code = exc.response.status_code
        return code == 429 or code >= 500
    return isinstance(exc, httpx.TransportError)


def _log_retry(state: RetryCallState) -> None:
    outcome = state.outcome
    exc = outcome.exception() if outcome else None
    log.warning("retrying after attempt %d failed: %s", state.attempt_number, exc)


def _policy(attempts: int) -> Callable[[Callable[[], T]], Callable[[], T]]:
    return retry(
        retry=retry_if_exception(is_transient),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=0.25, max=8.0),
        before_sleep=_log_retry,
        reraise=True,
    )


def get_bytes(http: httpx.Client, url: str, attempts: int) -> bytes:
    """GET a small file whole, with retries on transient failures."""

    @_policy(attempts)
    def attempt() -> bytes:
        response = http.get(url)
        _raise_for_status(response, url)
        return response.content

    return attempt()


def download(
    http: httpx.Client,
    url: str,
    target: Path,
    attempts: int,
    on_bytes: Callable[[int], None] | None = None,
) -> None:
    """Stream `url` into `target`, resuming from whatever `target` already holds."""

    @_policy(attempts)
    def attempt() -> None:
        have = target.stat().st_size if target.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        with http.stream("GET", url, headers=headers) as response:
            if response.status_code == 416 and have:
                # The partial file is already complete (or longer than the resource).
                return
            _raise_for_status(response, url)
            mode = "ab" if have and response.status_code == 206 else "wb"
            if mode == "wb" and have and on_bytes:
                on_bytes(-have)
            with open(target, mode) as handle:
                for chunk in response.iter_bytes(1 << 16):
                    handle.write(chunk)
                    if on_bytes:
                        on_bytes(len(chunk))

    attempt()


def _raise_for_status(response: httpx.Response, url: str) -> None:
    code = response.status_code
    if code < 400:
        return
    if code == 429 or code >= 500:
        raise httpx.HTTPStatusError(
            f"{url}: HTTP {code}", request=response.request, response=response
        )
    raise NotFoundError(url, code)
