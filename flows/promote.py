"""The promote flow: verify a staging image again, apply the policy, copy it by digest
to the release repository, attach a signed promotion record, then tag.

Steps, each a task: check (signature, every attestation, policy), copy (with the
signature and attestations, then verified where it landed), record and tag. Only the
copy is retried, on network failures: it is addressed by digest and sets no tag.
Whatever fails, no tag is moved, and the CLI exits 4.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from basekiln import nightly
from basekiln import promote as lib
from basekiln.config import Config, load_config
from basekiln.errors import InputError
from basekiln.publish import Signing
from flows.rebuild import transient_failure


@task(name="verify-and-check-policy", cache_policy=NO_CACHE)
def check(
    config: Config, wanted: lib.Request, signing: Signing
) -> tuple[lib.Verified, tuple[lib.PolicyCheck, ...]]:
    return lib.check(config, wanted, signing)


@task(
    name="copy",
    retries=1,
    retry_delay_seconds=10,
    retry_condition_fn=transient_failure,
    cache_policy=NO_CACHE,
)
def copy(wanted: lib.Request, signing: Signing) -> str:
    return lib.copy(wanted, signing)


@task(name="record-and-tag", cache_policy=NO_CACHE)
def record_and_tag(
    config: Config,
    wanted: lib.Request,
    signing: Signing,
    verified: lib.Verified,
    checks: tuple[lib.PolicyCheck, ...],
) -> lib.Promotion:
    return lib.record_and_tag(config, wanted, signing, verified, checks)


@flow(name="promote")
def promote(
    image: str,
    to: str | None = None,
    key: str | None = None,
    tags: list[str] | None = None,
    promoter: str | None = None,
    project: str | None = None,
    ca: str | None = None,
) -> dict[str, Any]:
    """Promote IMAGE (HOST/REPO@sha256:…) to TO (HOST/REPO), signed with KEY."""
    config = load_config(Path(project) if project else None)
    wanted = lib.request(
        config, image, to, tags=tags or (), promoter=promoter, ca_bundle=Path(ca) if ca else None
    )
    key = key or config.file.signing.key
    if not key:
        raise InputError("name the signing key with --key, or set [signing] key in basekiln.toml")
    with nightly.signing(key) as signing:
        verified, checks = check(config, wanted, signing)
        copy(wanted, signing)
        promotion = record_and_tag(config, wanted, signing, verified, checks)
    return promotion.to_json()
