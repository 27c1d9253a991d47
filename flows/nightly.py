"""The nightly flow: re-lock the catalogue, rebuild what changed, report.

1. Re-lock every recipe against today's archive (`lock --update`); changed lockfiles
   are written back, and their diff goes beside the report.
2. Walk the parent DAG: an image starts when its parent has ended well, with up to
   `[nightly] concurrency` double builds at once. Each image is assessed first:
   unchanged and still verified, it is skipped; otherwise the rebuild flow runs as a
   subflow (as an audit when due). A failure ends only that image; its descendants
   are skipped.
3. Write the report (JSON, Markdown) and show it as a Prefect artifact.

The run holds the checkout's run lock throughout, and a deployment of it (prefect.yaml)
runs one at a time. An interrupted run can simply be started again: what was
published is recorded, and what was built is reused.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.futures import PrefectFuture, as_completed
from prefect.states import Failed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from basekiln import nightly as lib
from basekiln.config import Config, load_config
from basekiln.publish import Signing
from basekiln.recipe import LoadedRecipe
from basekiln.report import NightlyReport, write_report
from basekiln.surface import surfaces_of
from flows.rebuild import rebuild, transient_failure

# Images in flight at once (assessing, testing, publishing); of these, at most
# `[nightly] concurrency` run a double build at a time.
IMAGES_IN_FLIGHT = 8
ARTIFACT_KEY = "basekiln-nightly-report"
# Prefect types the flow's runner invariantly, so its own thread runner needs a cast.
_THREADS = cast(
    "TaskRunner[PrefectFuture[Any]]", ThreadPoolTaskRunner(max_workers=IMAGES_IN_FLIGHT)
)


@dataclass(frozen=True)
class Run:
    """What every image task of one nightly run shares."""

    config: Config
    registry: str
    key: str
    signing: Signing
    audit: bool
    ca: str | None


@task(
    name="relock",
    retries=1,
    retry_delay_seconds=30,
    retry_condition_fn=transient_failure,
    cache_policy=NO_CACHE,
)
def relock(config: Config, recipes: Sequence[LoadedRecipe]) -> lib.Relock:
    return lib.relock(config, recipes)


@task(name="image", task_run_name="image-{recipe}", cache_policy=NO_CACHE)
def image(run: Run, recipe: str, parent_digest: str | None) -> lib.ImageOutcome:
    """Assess one image; skip it, or rebuild it (as an audit when due)."""
    lib.check_not_cancelled(recipe)
    lib.progress().step(recipe, "assess")
    ca = Path(run.ca) if run.ca else None
    assessment = lib.assess(
        run.config, recipe, run.registry, parent_digest, run.signing, audit=run.audit, ca_bundle=ca
    )
    if assessment.decision.action is lib.Action.SKIP:
        return lib.unchanged_outcome(assessment)
    audit = assessment.decision.action is lib.Action.AUDIT
    summary = rebuild(
        recipe=recipe,
        registry=run.registry,
        key=run.key,
        project=str(run.config.root),
        expect_digest=assessment.record.digest if audit and assessment.record else None,
        ca=run.ca,
    )
    record = lib.read_record(run.config, recipe)
    assert record is not None, "the rebuild flow records what it published"
    return lib.rebuilt_outcome(assessment, record, reused=bool(summary["reused"]))


@flow(name="nightly", task_runner=_THREADS)
def nightly(
    registry: str | None = None,
    key: str | None = None,
    project: str | None = None,
    recipes: list[str] | None = None,
    audit: bool = False,
    update_locks: bool = True,
    ca: str | None = None,
) -> Any:
    """Re-lock, rebuild what changed, publish to REGISTRY/<recipe>, and report.

    Returns the report as JSON; the flow run ends Failed (with the report as its
    data) when any image failed.
    """
    started = datetime.now(UTC)
    config = load_config(Path(project) if project else None)
    registry, key = lib.run_settings(config, registry, key)
    lib.begin_run()
    with lib.run_lock(config, "nightly"), lib.signing(key) as signing:
        plan = lib.plan_catalogue(config.recipes_dir, recipes or ())
        locked = relock(config, plan.recipes) if update_locks and plan.recipes else lib.Relock()
        scheduler = lib.Scheduler(plan, IMAGES_IN_FLIGHT, locked.failed)
        run = Run(config, registry, key, signing, audit, ca)
        try:
            _walk(run, scheduler)
        except BaseException:
            lib.abandon_run()  # builds in other threads stop instead of running on
            raise
        report = NightlyReport(
            started,
            datetime.now(UTC),
            registry,
            audit,
            tuple(scheduler.results()),
            locked,
            _flow_run_id(),
            surfaces_of(config.root / "out", [r.recipe.name for r in plan.recipes], "linux/amd64"),
        )
        files = write_report(config, report)
    create_markdown_artifact(
        markdown=report.to_markdown(files),
        key=ARTIFACT_KEY,
        description=f"basekiln nightly report, {report.counts}",
    )
    data = report.to_json(files)
    if not report.ok:
        failed = [i.recipe for i in report.images if not i.status.ok]
        return Failed(message=f"images not published: {', '.join(failed)}", data=data)
    return data


def _walk(run: Run, scheduler: lib.Scheduler) -> None:
    """Start images as their parents end, up to the limit, until all have ended."""
    running: dict[PrefectFuture[lib.ImageOutcome], tuple[str, float]] = {}
    while not scheduler.finished:
        for name, parent_digest in scheduler.startable():
            running[image.submit(run, name, parent_digest)] = (name, time.monotonic())
        if not running:
            raise RuntimeError("the scheduler has nothing to run but is not finished")
        done = next(iter(as_completed(list(running))))
        name, started = running.pop(done)
        outcome = _outcome(run, name, done.result(raise_on_failure=False))
        outcome = dataclasses.replace(outcome, seconds=time.monotonic() - started)
        scheduler.finish(outcome)
        lib.progress().done(outcome)


def _outcome(run: Run, name: str, value: object) -> lib.ImageOutcome:
    if isinstance(value, lib.ImageOutcome):
        return value
    error = value if isinstance(value, BaseException) else RuntimeError(repr(value))
    return lib.failed_outcome(name, error, lib.read_record(run.config, name))


def _flow_run_id() -> str | None:
    from prefect.runtime import flow_run

    run_id = flow_run.get_id()
    return str(run_id) if run_id else None


def run_nightly(**parameters: Any) -> Any:
    """Run the flow here and return its report (also when the run ended Failed).

    An error that stopped the run before it could report is returned, not raised.
    """
    state = cast("State[Any]", nightly(**parameters, return_state=True))
    return state.result(raise_on_failure=False)
