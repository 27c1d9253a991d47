"""The `basekiln` command: results to stdout, progress and logs to stderr."""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click
from rich.logging import RichHandler

from basekiln import __version__
from basekiln._console import handles_errors, stderr
from basekiln.catalogue import load_selection
from basekiln.config import Config, load_config
from basekiln.errors import ExitCode, InputError, InterruptedRunError
from basekiln.lock import LockOutcome, Mode, lock_all
from basekiln.lockfile import lockfile_path, read_lockfile
from basekiln.publish import Signing
from basekiln.recipe import resolve_recipe_path
from basekiln.results import BuildResult

P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger("basekiln")


def _configure_logging(verbose: bool) -> None:
    handler = RichHandler(console=stderr, show_time=False, show_path=False, markup=False)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        handlers=[handler],
        format="%(message)s",
        force=True,
    )
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="basekiln")
@click.option("-v", "--verbose", is_flag=True, help="Debug logs and tracebacks.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Rebuild container base images from Debian packages, reproducibly."""
    _configure_logging(verbose)
    ctx.obj = None


def _config(ctx: click.Context) -> Config:
    if ctx.obj is None:
        ctx.obj = load_config()
    config: Config = ctx.obj
    return config


@cli.command()
@click.argument("recipes", nargs=-1)
@click.option(
    "--check", "check", is_flag=True, help="Write nothing; exit 1 naming every stale lockfile."
)
@click.option("--update", is_flag=True, help="Re-resolve against today's archive.")
@click.option(
    "--diff",
    "show_diff",
    is_flag=True,
    help="Show what an update changes (alone: without writing).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
@handles_errors
def lock(
    ctx: click.Context,
    recipes: tuple[str, ...],
    check: bool,
    update: bool,
    show_diff: bool,
    as_json: bool,
) -> None:
    """Resolve RECIPES (names in recipes/ or paths; default all) into lockfiles."""
    config = _config(ctx)
    selection = load_selection(list(recipes), config.recipes_dir)
    if check:
        mode = Mode.CHECK
    elif update or show_diff:
        mode = Mode.UPDATE
    else:
        mode = Mode.KEEP_FRESH
    outcomes = lock_all(config, selection, mode, dry_run=show_diff and not update)
    _print_lock_outcomes(outcomes, show_diff or update, as_json)
    if check and any(o.stale for o in outcomes):
        sys.exit(int(ExitCode.FAILURE))


def _print_lock_outcomes(outcomes: list[LockOutcome], show_diff: bool, as_json: bool) -> None:
    if as_json:
        click.echo(
            json.dumps(
                {
                    "lockfiles": [
                        {
                            "recipe": o.recipe,
                            "path": str(o.path),
                            "written": o.written,
                            "stale": o.stale,
                            "diff": {
                                "added": o.diff.added,
                                "removed": o.diff.removed,
                                "upgraded": o.diff.upgraded,
                            },
                        }
                        for o in outcomes
                    ]
                },
                indent=2,
            )
        )
        return
    for o in outcomes:
        state = "written" if o.written else ("stale" if o.stale else "up to date")
        click.echo(f"{o.recipe}: {state} ({o.path})")
        for reason in o.stale:
            click.echo(f"  stale: {reason}")
        if show_diff:
            for name, version in o.diff.added:
                click.echo(f"  + {name} {version}")
            for name, version in o.diff.removed:
                click.echo(f"  - {name} {version}")
            for name, old, new in o.diff.upgraded:
                click.echo(f"  ~ {name} {old} -> {new}")


@cli.command()
@click.argument("recipes", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
@handles_errors
def fetch(ctx: click.Context, recipes: tuple[str, ...], as_json: bool) -> None:
    """Download every locked .deb of RECIPES into the verified cache."""
    from basekiln.fetch import fetch as fetch_packages

    config = _config(ctx)
    selection = load_selection(list(recipes), config.recipes_dir)
    locks = [read_lockfile(lockfile_path(config.lockfiles_dir, r.recipe.name)) for r in selection]
    report = fetch_packages(config, locks, show_progress=stderr.is_terminal)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "downloaded": report.downloaded,
                    "already_cached": report.already_cached,
                    "bytes": report.bytes_downloaded,
                    "cache": str(config.cache_dir),
                }
            )
        )
    else:
        click.echo(
            f"{report.downloaded} downloaded ({report.bytes_downloaded} bytes), "
            f"{report.already_cached} already cached in {config.cache_dir}"
        )


@cli.command()
@click.argument("recipe")
@click.option(
    "--context",
    "show_context",
    is_flag=True,
    help="Also print the assembly script the Dockerfile runs.",
)
@click.pass_context
@handles_errors
def render(ctx: click.Context, recipe: str, show_context: bool) -> None:
    """Print the Dockerfile that `build` gives BuildKit for RECIPE."""
    from basekiln.build import render_recipe

    dockerfile, script = render_recipe(_config(ctx), recipe)
    click.echo(dockerfile, nl=False)
    if show_context:
        click.echo("\n# --- generated/assemble.sh ---")
        click.echo(script, nl=False)


@cli.command()
@click.argument("recipes", nargs=-1)
@click.option("--force", is_flag=True, help="Build even when the inputs are unchanged.")
@click.option("--no-tests", is_flag=True, help="Skip the recipe's image tests.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
@handles_errors
def build(
    ctx: click.Context, recipes: tuple[str, ...], force: bool, no_tests: bool, as_json: bool
) -> None:
    """Build RECIPES twice in two fresh BuildKit sandboxes and compare the digests.

    Parents are built first when needed; the output covers the recipes named (all of
    them when none is), one line of JSON each with --json.
    """
    from basekiln.build import BuildMismatchError, BuildOptions, build_recipes

    config = _config(ctx)
    options = BuildOptions(force=force, show_progress=stderr.is_terminal, run_tests=not no_tests)
    named = {resolve_recipe_path(name, config.recipes_dir).stem for name in recipes}
    try:
        results = build_recipes(config, list(recipes), options)
    except BuildMismatchError as exc:
        # The verdict is a result too: print it, then exit 3 with the report's path.
        _print_build(exc.result, as_json)
        raise
    for result in results:
        if not named or result.recipe in named:
            _print_build(result, as_json)


def _print_build(result: BuildResult, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(_build_json(result)))
        return
    click.echo(f"{result.recipe}: {result.digest}")
    for b in result.builds:
        click.echo(f"  sandbox {b.sandbox}: {b.digest} ({b.seconds:.1f}s)")
    verdict = "reproducible" if result.reproducible else "NOT reproducible"
    click.echo(f"  verdict: {verdict}; BuildKit {result.buildkit_version}; {result.seconds:.1f}s")
    click.echo(f"  oci layout: {result.oci_layout}")
    if result.report:
        click.echo(f"  report: {result.report}")


def _build_json(result: BuildResult) -> dict[str, Any]:
    return {
        "recipe": result.recipe,
        "digest": result.digest,
        "reproducible": result.reproducible,
        "builds": [
            {"sandbox": b.sandbox, "digest": b.digest, "perturbations": b.perturbations}
            for b in result.builds
        ],
        "oci_layout": result.oci_layout,
        "buildkit_version": result.buildkit_version,
        "seconds": result.seconds,
        "platform": result.platform,
        "source_date_epoch": result.source_date_epoch,
        "report": result.report,
    }


def _signing(key: str | None, keyless: dict[str, str | None], work: Path) -> Signing:
    from basekiln import _cosign
    from basekiln.publish import signing_for_key

    if key:
        return signing_for_key(key, work)
    if not keyless.get("identity"):
        raise InputError(
            "name a signing key with --key (a cosign key file or env://VARIABLE, password "
            "in $COSIGN_PASSWORD), or sign keylessly with --identity-token, "
            "--certificate-identity and --certificate-oidc-issuer"
        )
    return Signing(
        signer=_cosign.Keyless(
            identity_token=keyless["token"],
            oidc_issuer=keyless["issuer"],
            fulcio_url=keyless["fulcio"],
            rekor_url=keyless["rekor"],
        ),
        verifier=_cosign.KeylessPolicy(
            str(keyless["identity"]), str(keyless["issuer"]), keyless["rekor"]
        ),
    )


def _keyless_options(func: Callable[P, R]) -> Callable[P, R]:
    for option in (
        click.option("--identity-token", help="Keyless: an OIDC token (or a file holding one)."),
        click.option("--oidc-issuer", help="Keyless: the OIDC issuer URL."),
        click.option("--fulcio-url", help="Keyless: the Fulcio URL."),
        click.option("--rekor-url", help="Keyless: the Rekor URL."),
        click.option("--certificate-identity", help="Keyless: the identity to verify."),
    ):
        func = option(func)
    return func


@cli.command()
@click.argument("recipe")
@click.option("--registry", required=True, help="HOST/REPO to push to (by digest).")
@click.option("--key", help="cosign private key: a file or env://VARIABLE.")
@click.option(
    "--ca",
    type=click.Path(exists=True, dir_okay=False),
    help="CA bundle for a TLS registry with a private CA.",
)
@_keyless_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
@handles_errors
def publish(
    ctx: click.Context,
    recipe: str,
    registry: str,
    key: str | None,
    ca: str | None,
    identity_token: str | None,
    oidc_issuer: str | None,
    fulcio_url: str | None,
    rekor_url: str | None,
    certificate_identity: str | None,
    as_json: bool,
) -> None:
    """Build RECIPE if needed, push it by digest, sign, attest, verify, then tag."""
    from basekiln.build import BuildOptions, build_recipes
    from basekiln.publish import publish as publish_image
    from basekiln.publish import temporary_workdir

    config = _config(ctx)
    keyless = {
        "token": identity_token,
        "issuer": oidc_issuer,
        "fulcio": fulcio_url,
        "rekor": rekor_url,
        "identity": certificate_identity,
    }
    with temporary_workdir() as work:
        signing = _signing(key, keyless, Path(work))
        results = build_recipes(config, [recipe], BuildOptions(show_progress=stderr.is_terminal))
        result = next(r for r in results if r.recipe == Path(recipe).stem)
        published = publish_image(
            config, result, registry, signing, ca_bundle=Path(ca) if ca else None
        )
    if as_json:
        click.echo(
            json.dumps(
                {
                    "image": published.image,
                    "digest": published.digest,
                    "tags": list(published.tags),
                    "attestations": list(published.attestations),
                    "reused": published.reused,
                    "evidence": published.evidence,
                    "seconds": dict(published.seconds),
                }
            )
        )
    else:
        state = "already signed, nothing pushed" if published.reused else "pushed and signed"
        click.echo(f"{published.image} ({state})")
        click.echo(f"  tags: {', '.join(published.tags)}")
        click.echo(f"  attestations: {', '.join(published.attestations)}")


@cli.command()
@click.argument("image")
@click.option("--key", help="cosign public key (file, env://VARIABLE or KMS URI).")
@click.option(
    "--ca",
    type=click.Path(exists=True, dir_okay=False),
    help="CA bundle for a TLS registry with a private CA.",
)
@click.option("--rebuild", is_flag=True, help="Also rebuild from the lockfile and compare.")
@_keyless_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
@handles_errors
def verify(
    ctx: click.Context,
    image: str,
    key: str | None,
    ca: str | None,
    rebuild: bool,
    identity_token: str | None,
    oidc_issuer: str | None,
    fulcio_url: str | None,
    rekor_url: str | None,
    certificate_identity: str | None,
    as_json: bool,
) -> None:
    """Check IMAGE@sha256:…: signature, attestations, and provenance against this repo."""
    from basekiln import _cosign
    from basekiln.verify import verify_image

    if key:
        verifier: _cosign.Verifier = key
    elif certificate_identity and oidc_issuer:
        verifier = _cosign.KeylessPolicy(certificate_identity, oidc_issuer, rekor_url)
    else:
        raise InputError(
            "name the public key with --key, or the keyless identity with "
            "--certificate-identity and --oidc-issuer"
        )
    report = verify_image(
        _config(ctx), image, verifier, rebuild=rebuild, ca_bundle=Path(ca) if ca else None
    )
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        for check in report.checks:
            click.echo(f"{'ok    ' if check.passed else 'FAILED'} {check.name}: {check.detail}")
    report.raise_on_failure()


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@handles_errors
def doctor(as_json: bool) -> None:
    """List each external tool basekiln relies on, its version, and what is missing."""
    from basekiln.doctor import diagnose

    statuses = diagnose()
    if as_json:
        click.echo(json.dumps([vars(s) for s in statuses], indent=2))
    else:
        for s in statuses:
            mark = "ok  " if s.found else ("MISSING" if s.required else "absent")
            line = f"{mark:8} {s.name:24} {s.version or '-':16} {s.purpose}"
            if not s.found:
                line += f"\n         get it: {s.remedy}"
            click.echo(line)
    if any(s.required and not s.found for s in statuses):
        sys.exit(int(ExitCode.FAILURE))


def _register_commands() -> None:
    from basekiln.cli_flows import new, nightly_command, promote, rebuild
    from basekiln.surface import report_command

    for command in (report_command, rebuild, nightly_command, promote, new):
        cli.add_command(command)


_register_commands()


def _unwind_on_signals() -> None:
    # Ctrl-C and SIGTERM (a CI timeout, a stopped Prefect worker) must unwind through
    # `finally` blocks, so that sandboxes are torn down rather than leaked.
    def handler(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        raise InterruptedRunError(f"interrupted by {name}; sandboxes were torn down")

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def main() -> Any:
    _unwind_on_signals()
    return cli()
