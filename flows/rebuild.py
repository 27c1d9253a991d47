"""The rebuild flow: one recipe, from its lockfile to a signed image in staging.

Steps, each a task: lock check, fetch, double build (and, for an audit, the check
that it reproduces the published digest), image tests, SBOM and provenance, push by
digest, sign and publish, record. Only fetch and push are retried, and only on
network failures: a second attempt can then succeed without changing anything. A
build that does not reproduce is a finding and never retried; signing is not
retried, since a signature that seemed to fail may have been stored.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from prefect import Task, flow, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun

from basekiln import nightly
from basekiln.config import Config, load_config
from basekiln.evidence import Evidence
from basekiln.publish import PublishResult, Signing
from basekiln.results import BuildResult

RETRY_DELAYS: list[float] = [5.0, 30.0]


def transient_failure(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect's retry condition: retry network failures only."""
    error = state.data if isinstance(state.data, BaseException) else None
    return nightly.is_transient(error)


def _begin(recipe: str, step: str) -> None:
    nightly.check_not_cancelled(recipe)
    nightly.progress().step(recipe, step)


@task(name="lock-check", cache_policy=NO_CACHE)
def lock_check(config: Config, recipe: str) -> str:
    _begin(recipe, "lock check")
    return nightly.lock_check(config, recipe).sha256


@task(
    name="fetch",
    retries=len(RETRY_DELAYS),
    retry_delay_seconds=RETRY_DELAYS,
    retry_condition_fn=transient_failure,
    cache_policy=NO_CACHE,
)
def fetch(config: Config, recipe: str, show_progress: bool) -> int:
    _begin(recipe, "fetch")
    return nightly.fetch_inputs(config, recipe, show_progress)


@task(name="double-build", cache_policy=NO_CACHE)
def double_build(
    config: Config, recipe: str, force: bool, expect_digest: str | None, show_progress: bool
) -> BuildResult:
    _begin(recipe, "double build")
    with build_slot(config):
        result = nightly.double_build(config, recipe, force=force, show_progress=show_progress)
    nightly.check_reproduces(result, expect_digest)
    return result


@task(name="test", cache_policy=NO_CACHE)
def test_image(config: Config, recipe: str, result: BuildResult) -> int:
    _begin(recipe, "test")
    return nightly.test_image(config, recipe, result)


@task(name="sbom-and-provenance", cache_policy=NO_CACHE)
def evidence(config: Config, result: BuildResult, repository: str) -> Evidence:
    _begin(result.recipe, "sbom and provenance")
    return nightly.make_evidence(config, result, repository)


@task(
    name="push",
    retries=len(RETRY_DELAYS),
    retry_delay_seconds=RETRY_DELAYS,
    retry_condition_fn=transient_failure,
    cache_policy=NO_CACHE,
)
def push(config: Config, result: BuildResult, repository: str, ca: Path | None) -> str:
    _begin(result.recipe, "push")
    return nightly.push(config, result, repository, ca)


@task(name="sign-and-publish", cache_policy=NO_CACHE)
def sign_and_publish(
    config: Config,
    result: BuildResult,
    repository: str,
    signing: Signing,
    ca: Path | None,
    made: Evidence | None,
) -> PublishResult:
    _begin(result.recipe, "sign and publish")
    return nightly.sign_and_publish(config, result, repository, signing, ca, made)


@task(name="record", cache_policy=NO_CACHE)
def record(
    config: Config, result: BuildResult, published: PublishResult, repository: str
) -> nightly.PublishedRecord:
    return nightly.record_publication(config, result, published, repository)


def build_slot(config: Config) -> contextlib.AbstractContextManager[Any]:
    """A slot of the configured Prefect global concurrency limit, if any."""
    name = config.file.nightly.prefect_limit
    if not name:
        return contextlib.nullcontext()
    from prefect.concurrency.sync import concurrency

    return concurrency(name, occupy=1, strict=True)


@flow(name="rebuild")
def rebuild(
    recipe: str,
    registry: str | None = None,
    key: str | None = None,
    project: str | None = None,
    force: bool = False,
    expect_digest: str | None = None,
    ca: str | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Rebuild RECIPE and publish it to REGISTRY/<recipe>, signed with KEY.

    `expect_digest` makes the run an audit: the rebuild must give that digest.
    """
    config = load_config(Path(project) if project else None)
    registry, key = nightly.run_settings(config, registry, key)
    repository = nightly.image_repository(registry, recipe)
    ca_bundle = Path(ca) if ca else None
    with nightly.run_lock(config, f"rebuild {recipe}"), nightly.signing(key) as signing:
        lock_check(config, recipe)
        fetch(config, recipe, show_progress)
        force = force or expect_digest is not None
        result = double_build(config, recipe, force, expect_digest, show_progress)
        test_image(config, recipe, result)
        made = None
        if expect_digest is None:
            made = evidence(config, result, repository)
            push(config, result, repository, ca_bundle)
        published = sign_and_publish(config, result, repository, signing, ca_bundle, made)
        kept = record(config, result, published, repository)
    return {
        "recipe": recipe,
        "status": "reproduced" if published.reused else "published",
        "digest": kept.digest,
        "image": kept.image,
        "tags": list(kept.tags),
        "reproducible": result.reproducible,
        "reused": published.reused,
        "size": kept.size,
        "build_seconds": result.seconds,
        "record": str(nightly.record_path(config, recipe)),
    }
