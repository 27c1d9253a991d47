"""`basekiln rebuild`, `nightly`, `promote` and `new`: the commands that run the flows.

Register them on the main group with `cli.add_command(...)`. Arguments are checked
before Prefect is started, so a usage error costs no server start-up. Without a
Prefect server configured ($PREFECT_API_URL), Prefect runs the flow against a
temporary local server (SQLite); `prefect server start` once avoids that cost and
keeps the runs for the UI.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from basekiln import _cosign, nightly
from basekiln._console import handles_errors, stderr
from basekiln.config import Config, load_config
from basekiln.errors import BasekilnError

P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger(__name__)


def _config() -> Config:
    # Prefect's temporary server gets 20 s to start by default, which a busy machine
    # can exceed; a configured value still wins.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    return load_config()


def _check_key(key: str) -> None:
    """A missing key file or an unset $COSIGN_PASSWORD fails now, not after a build."""
    _cosign.check_signer(key)


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


@click.command()
@click.argument("recipe")
@click.option("--registry", help="HOST/REPO; the image goes to HOST/REPO/RECIPE.")
@click.option("--key", help="cosign private key: a file or env://VARIABLE.")
@click.option("--force", is_flag=True, help="Build even when the inputs are unchanged.")
@click.option("--ca", type=click.Path(exists=True, dir_okay=False), help="Registry CA bundle.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@handles_errors
def rebuild(
    recipe: str,
    registry: str | None,
    key: str | None,
    force: bool,
    ca: str | None,
    as_json: bool,
) -> None:
    """Run the rebuild flow: lock check, fetch, double build, tests, evidence, publish."""
    config = _config()
    registry, key = nightly.run_settings(config, registry, key)
    nightly.image_repository(registry, Path(recipe).stem)
    nightly.lock_check(config, recipe)
    _check_key(key)

    from flows.rebuild import rebuild as rebuild_flow

    summary = rebuild_flow(
        recipe=Path(recipe).stem,
        registry=registry,
        key=key,
        project=str(config.root),
        force=force,
        ca=ca,
        show_progress=stderr.is_terminal,
    )
    if as_json:
        _echo_json(summary)
        return
    click.echo(f"{summary['recipe']}: {summary['status']} {summary['image']}")
    click.echo(f"  tags: {', '.join(summary['tags'])}")


@click.command("nightly")
@click.argument("recipes", nargs=-1)
@click.option("--registry", help="HOST/REPO; each image goes to HOST/REPO/<recipe>.")
@click.option("--key", help="cosign private key: a file or env://VARIABLE.")
@click.option("--audit", is_flag=True, help="Rebuild unchanged images too; each must reproduce.")
@click.option("--no-update", is_flag=True, help="Keep the lockfiles; do not re-lock first.")
@click.option("--ca", type=click.Path(exists=True, dir_okay=False), help="Registry CA bundle.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@handles_errors
def nightly_command(
    recipes: tuple[str, ...],
    registry: str | None,
    key: str | None,
    audit: bool,
    no_update: bool,
    ca: str | None,
    as_json: bool,
) -> None:
    """Run the nightly flow over RECIPES (default: the catalogue) and print its report.

    Re-locks against today's archive, rebuilds in parent order what changed (or is
    due an audit), publishes each image to HOST/REPO/<recipe>, and writes the report
    under reports/. Exits 0 when every image ended well, else with the failures' code.
    """
    config = _config()
    registry, key = nightly.run_settings(config, registry, key)
    _check_key(key)

    from flows.nightly import run_nightly

    with _progress_bars(enabled=stderr.is_terminal and not as_json):
        report = run_nightly(
            registry=registry,
            key=key,
            project=str(config.root),
            recipes=list(recipes) or None,
            audit=audit,
            update_locks=not no_update,
            ca=ca,
        )
    if isinstance(report, BaseException):
        raise report
    if as_json:
        _echo_json(report)
    else:
        _print_report(report)
    code = int(report["run"]["exit_code"])
    if code:
        sys.exit(code)


def _print_report(report: dict[str, Any]) -> None:
    for image in report["images"]:
        line = f"{image['recipe']}: {image['status']}"
        if image["digest"]:
            line += f" {image['digest']}"
        if image["status"] in ("failed", "skipped"):
            line += f" ({image['reason'].splitlines()[0]})"
        click.echo(line)
    files = report.get("files", {})
    if files:
        click.echo(f"report: {files.get('markdown')}")
    if files.get("diff"):
        click.echo(f"lockfile changes: {files['diff']}")


class _Bars:
    """Progress rows, one per image, fed by the nightly run."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.rows: dict[str, TaskID] = {}

    def _row(self, recipe: str) -> TaskID:
        if recipe not in self.rows:
            self.rows[recipe] = self.progress.add_task(recipe, total=1)
        return self.rows[recipe]

    def step(self, recipe: str, step: str) -> None:
        self.progress.update(self._row(recipe), description=f"{recipe}: {step}")

    def done(self, outcome: nightly.ImageOutcome) -> None:
        row = self._row(outcome.recipe)
        text = f"{outcome.recipe}: {outcome.status.value}"
        self.progress.update(row, description=text, completed=1)


@contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=stderr) as progress, nightly.reporting_to(_Bars(progress)):
        yield


@click.command("promote")
@click.argument("image")
@click.option("--to", "to", help="Release repository HOST/REPO/NAME (default: [registry] release).")
@click.option("--key", help="cosign private key: a file or env://VARIABLE.")
@click.option("--tag", "tags", multiple=True, help="Tag to set (default: latest and a dated one).")
@click.option("--promoter", help="Who promotes (default: $BASEKILN_PROMOTER, else user@host).")
@click.option("--ca", type=click.Path(exists=True, dir_okay=False), help="Registry CA bundle.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@handles_errors
def promote(
    image: str,
    to: str | None,
    key: str | None,
    tags: tuple[str, ...],
    promoter: str | None,
    ca: str | None,
    as_json: bool,
) -> None:
    """Promote IMAGE (HOST/REPO@sha256:…, never a tag) to the release repository.

    Verifies the signature and every attestation again, checks the promotion policy,
    copies the image with its signature and attestations by digest, attaches a signed
    promotion record (a SLSA verification summary), then tags it. Any failure exits 4
    and moves no tag.
    """
    from basekiln import promote as promotion

    config = _config()
    wanted = promotion.request(config, image, to, tags=tags, promoter=promoter)
    key = key or config.signing_key()
    if not key:
        raise promotion.PromotionError("name the signing key with --key, or set [signing] key")
    try:
        _check_key(key)
    except BasekilnError as exc:
        raise promotion.PromotionError(exc.message) from exc

    from flows.promote import promote as promote_flow

    result = promote_flow(
        image=str(wanted.source),
        to=str(wanted.destination),
        key=key,
        tags=list(wanted.tags),
        promoter=wanted.promoter,
        project=str(config.root),
        ca=ca,
    )
    if as_json:
        _echo_json(result)
        return
    click.echo(f"promoted {result['promoted']}")
    click.echo(f"  tags: {', '.join(result['tags'])}")
    for check in result["checks"]:
        click.echo(f"  ok {check['name']}: {check['detail']}")


@click.command("new")
@click.argument("name")
@click.option("--parent", help="The recipe this one builds on.")
@click.option("--package", "packages", multiple=True, help="A Debian package (repeatable).")
@click.option(
    "--source",
    "sources",
    multiple=True,
    help="ARCHIVE/SUITE to resolve against (repeatable; default: the parent's, else "
    "the release's usual three).",
)
@click.option("--description", default="", help="One line about the image.")
@click.option("--no-build", is_flag=True, help="Write and lock only.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@handles_errors
def new(
    name: str,
    parent: str | None,
    packages: tuple[str, ...],
    sources: tuple[str, ...],
    description: str,
    no_build: bool,
    as_json: bool,
) -> None:
    """Write recipes/NAME.yaml with safe defaults, lock it, and build it once."""
    from basekiln.newrecipe import new_recipe, parse_source

    created = new_recipe(
        _config(),
        name,
        parent=parent,
        packages=packages,
        sources=[parse_source(s) for s in sources],
        description=description,
        build=not no_build,
        show_progress=stderr.is_terminal,
    )
    built = created.build
    if as_json:
        _echo_json(
            {
                "recipe": str(created.path),
                "lockfile": str(created.lockfile),
                "packages": created.packages,
                "digest": built.digest if built else None,
                "reproducible": built.reproducible if built else None,
                "oci_layout": built.oci_layout if built else None,
            }
        )
        return
    click.echo(f"wrote {created.path} and {created.lockfile} ({created.packages} packages)")
    if built:
        click.echo(f"built {built.digest} (reproducible) in {built.oci_layout}")
