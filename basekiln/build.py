"""The double build: one locked recipe, two isolated sandboxes, one verdict.

The image is accepted only when both builds give the same per-platform manifest
digest. Unchanged inputs (recipe, lockfile, templates, parent digest, BuildKit and
basekiln versions) reuse the last accepted result instead of building again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from basekiln import __version__, _buildctl
from basekiln._buildctl import NamedImage
from basekiln.assemble import (
    BuildInputs,
    ParentImage,
    git_revision,
    labels,
    link_or_copy,
    prepare_context,
    render_build,
)
from basekiln.cache import Cache
from basekiln.catalogue import load_selection
from basekiln.compare import compare_layouts_report
from basekiln.config import Config
from basekiln.errors import (
    BuildError,
    InputError,
    LockfileError,
    NotReproducibleError,
    ToolError,
)
from basekiln.fetch import fetch
from basekiln.imagetest import raise_on_failures, run_command_tests, run_static_tests
from basekiln.lock import platform_of
from basekiln.lockfile import Lockfile, file_sha256, lockfile_path, read_lockfile, write_atomic
from basekiln.oci import MEDIA_MANIFEST, read_image
from basekiln.recipe import LoadedRecipe, Recipe
from basekiln.render import templates_digest
from basekiln.results import BuildResult, SandboxBuild
from basekiln.sandbox import (
    PERTURBED,
    PLAIN,
    Perturbation,
    Sandbox,
    local_sandbox,
    remote_sandbox,
    sandbox_root,
    stop_all,
)
from basekiln.surface import check_build_budgets
from basekiln.toolimage import ToolImage, build_tool_image

log = logging.getLogger(__name__)

RESULT_NAME = "build.json"
SOURCE_URL = "https://github.com/basekiln/basekiln"


class BuildMismatchError(NotReproducibleError):
    """The two builds differed; carries the result so the CLI can still print it."""

    def __init__(self, message: str, result: BuildResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class BuildOptions:
    force: bool = False
    show_progress: bool = True
    run_tests: bool = True


def out_dir(config: Config, recipe: str) -> Path:
    return config.root / "out" / recipe


def buildkit_version(config: Config) -> str:
    """The BuildKit version the builds run: the local binary's, or the remote daemons'.

    Digests may differ across BuildKit versions, so two remote daemons on different
    versions cannot make a meaningful pair and are refused.
    """
    settings = config.file.buildkit
    if not settings.endpoints:
        from basekiln._run import run

        text = run(["buildkitd", "--version"], timeout=30).stdout.decode()
        return text.split()[2] if len(text.split()) > 2 else text.strip()
    versions = {}
    for address in settings.endpoints[:2]:
        endpoint = _remote_endpoint(config, address)
        try:
            versions[address] = _buildctl.server_version(endpoint)
        except ToolError as exc:
            raise BuildError(
                f"remote BuildKit daemon {address} does not answer ({exc.message.strip()}). "
                "Check that it runs, and basekiln.toml's [buildkit] endpoints and, for "
                "tcp://, tls_ca, tls_cert and tls_key."
            ) from exc
    if len(set(versions.values())) > 1:
        raise BuildError(
            f"basekiln.toml: [buildkit] endpoints run different BuildKit versions {versions}; "
            "digests may differ across versions, so point both at daemons of one version"
        )
    return next(iter(versions.values()))


def build_recipes(config: Config, names: list[str], options: BuildOptions) -> list[BuildResult]:
    """Build the named recipes and, first, any parent they need."""
    selection = load_selection(names, config.recipes_dir)
    results: dict[str, BuildResult] = {}
    for loaded in selection:
        parent = results.get(loaded.recipe.parent) if loaded.recipe.parent else None
        results[loaded.recipe.name] = build_one(config, loaded, selection, parent, options)
    return list(results.values())


def render_recipe(config: Config, name: str) -> tuple[str, str]:
    """The Dockerfile and assembly script `build` would use for one recipe."""
    selection = load_selection([name], config.recipes_dir)
    inputs = _build_inputs(config, selection[-1], selection, _built_parent(config, selection[-1]))
    statuses = {p.name: b"" for p in inputs.lock.packages_for(inputs.platform)}
    revision = source_revision(config, inputs.recipe_path, inputs.lockfile_path)
    rendered = render_build(inputs, statuses, SOURCE_URL, revision)
    return rendered.dockerfile, rendered.script


def _built_parent(config: Config, loaded: LoadedRecipe) -> ParentImage | None:
    """The parent's last accepted build, for commands that do not build it first."""
    parent = loaded.recipe.parent
    if parent is None:
        return None
    path = out_dir(config, parent) / RESULT_NAME
    if not path.is_file():
        raise BuildError(
            f"{loaded.recipe.name}: its parent {parent} is not built yet; run "
            f"`basekiln build {parent}`"
        )
    previous = BuildResult.read(path)
    return ParentImage(parent, Path(previous.oci_layout), previous.digest)


def _build_inputs(
    config: Config, loaded: LoadedRecipe, selection: list[LoadedRecipe], parent: ParentImage | None
) -> BuildInputs:
    lock, lock_path = check_fresh(config, loaded)
    return BuildInputs(
        recipe=loaded.recipe,
        recipe_path=_relative(config, loaded.path),
        lock=lock,
        lockfile_path=_relative(config, lock_path),
        lockfile_sha256=file_sha256(lock_path),
        chain=_chain(loaded, selection),
        platform=platform_of(loaded.recipe.architectures[0]),
        parent=parent,
    )


def _tool_image(config: Config, inputs: BuildInputs, show_progress: bool) -> ToolImage:
    """Fetch what the build needs (the last network step) and the tool stage's image."""
    fetch(config, [inputs.lock], show_progress=show_progress)
    return build_tool_image(
        Cache(config.cache_dir),
        inputs.lock.tools_for(inputs.platform),
        inputs.lock.source_date_epoch,
        inputs.platform,
    )


def _named_images(tools: ToolImage, parent: ParentImage | None) -> list[NamedImage]:
    named = [NamedImage("tools", tools.layout, tools.digest)]
    if parent is not None:
        named.append(NamedImage("parent", parent.layout, parent.digest))
    return named


def check_fresh(config: Config, loaded: LoadedRecipe) -> tuple[Lockfile, Path]:
    """The recipe's lockfile, refusing one that no longer matches the recipe or parent."""
    path = lockfile_path(config.lockfiles_dir, loaded.recipe.name)
    lock = read_lockfile(path)
    problems = []
    if lock.recipe.sha256 != loaded.sha256:
        problems.append(f"{loaded.path.name} changed since it was locked")
    if loaded.recipe.parent:
        parent_path = lockfile_path(config.lockfiles_dir, loaded.recipe.parent)
        if (
            lock.parent is None
            or not parent_path.is_file()
            or (lock.parent.lockfile_sha256 != file_sha256(parent_path))
        ):
            problems.append(f"the parent {loaded.recipe.parent}'s lockfile changed")
    if problems:
        raise LockfileError(
            f"{path} is stale: {'; '.join(problems)}. Run `basekiln lock "
            f"{loaded.recipe.name}` and review the diff before building."
        )
    return lock, path


def inputs_digest(
    recipe_sha: str,
    lock_sha: str,
    parent_digest: str | None,
    buildkit: str,
    revision: str | None,
) -> str:
    """What a rebuild must match: any change here means a new build.

    The source revision is among them because it is written into the image's labels:
    committing a lockfile that was built uncommitted changes the image's bytes.
    """
    parts = [
        f"recipe {recipe_sha}",
        f"lockfile {lock_sha}",
        f"templates {templates_digest()}",
        f"parent {parent_digest or '-'}",
        f"buildkit {buildkit}",
        f"basekiln {__version__}",
        f"revision {revision or '-'}",
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def previous_result(config: Config, recipe: str, digest: str) -> BuildResult | None:
    path = out_dir(config, recipe) / RESULT_NAME
    if not path.is_file():
        return None
    try:
        result = BuildResult.read(path)
    except (ValueError, KeyError, TypeError):
        return None
    layout = Path(result.oci_layout)
    if result.inputs_digest != digest or not result.reproducible or not layout.is_dir():
        return None
    try:
        if read_image(layout, result.platform).digest != result.digest:
            return None
    except BuildError:
        return None
    return result


def _chain(loaded: LoadedRecipe, selection: list[LoadedRecipe]) -> tuple[Recipe, ...]:
    by_name = {s.recipe.name: s.recipe for s in selection}
    chain = [loaded.recipe]
    while chain[0].parent:
        chain.insert(0, by_name[chain[0].parent])
    return tuple(chain)


def build_single(config: Config, name: str, perturbation: Perturbation = PLAIN) -> SandboxBuild:
    """One build in one sandbox, no comparison and no tests: the benchmark's baseline."""
    selection = load_selection([name], config.recipes_dir)
    inputs = _build_inputs(config, selection[-1], selection, _built_parent(config, selection[-1]))
    tools = _tool_image(config, inputs, show_progress=False)
    with tempfile.TemporaryDirectory(prefix="basekiln-single-", dir=sandbox_root()) as tmp:
        context = prepare_context(
            Cache(config.cache_dir), inputs, Path(tmp) / "context", SOURCE_URL, None
        )
        return _build_in_sandbox(
            config,
            perturbation,
            context,
            Path(tmp) / "oci",
            inputs,
            _named_images(tools, inputs.parent),
            {},
            config.file.buildkit.timeout_seconds,
            lambda _text: None,
        )


def build_one(
    config: Config,
    loaded: LoadedRecipe,
    selection: list[LoadedRecipe],
    parent_result: BuildResult | None,
    options: BuildOptions,
) -> BuildResult:
    recipe = loaded.recipe
    parent = None
    if recipe.parent:
        if parent_result is None:
            raise BuildError(f"{recipe.name}: its parent {recipe.parent} has no build result")
        parent = ParentImage(recipe.parent, Path(parent_result.oci_layout), parent_result.digest)
    inputs = _build_inputs(config, loaded, selection, parent)
    version = buildkit_version(config)
    revision = source_revision(config, inputs.recipe_path, inputs.lockfile_path)
    digest = inputs_digest(
        loaded.sha256, inputs.lockfile_sha256, parent.digest if parent else None, version, revision
    )
    if not options.force and (reused := previous_result(config, recipe.name, digest)):
        log.info("%s: inputs unchanged, reusing %s", recipe.name, reused.digest)
        return reused
    tools = _tool_image(config, inputs, options.show_progress)
    return _double_build(config, loaded, inputs, tools, version, digest, revision, options)


def source_revision(
    config: Config, recipe_path: str | Path, lockfile_path: str | Path
) -> str | None:
    """The commit that last touched the recipe and its lockfile, if both are committed."""
    return git_revision(config.root, [str(recipe_path), str(lockfile_path)])


def _relative(config: Config, path: Path) -> str:
    try:
        return str(path.resolve().relative_to(config.root.resolve()))
    except ValueError:
        return str(path)


def _double_build(
    config: Config,
    loaded: LoadedRecipe,
    inputs: BuildInputs,
    tools: ToolImage,
    version: str,
    digest: str,
    revision: str | None,
    options: BuildOptions,
) -> BuildResult:
    recipe = inputs.recipe
    out = out_dir(config, recipe.name)
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    image_labels = labels(inputs, SOURCE_URL, revision)
    annotations = {
        k: v for k, v in image_labels.items() if k.startswith("org.opencontainers.image.")
    }
    named = _named_images(tools, inputs.parent)
    cache = Cache(config.cache_dir)
    started = datetime.now(UTC)
    clock = time.monotonic()

    # The second build directory differs in depth and name, not only in a suffix.
    context_a = prepare_context(cache, inputs, work / "a" / "context", SOURCE_URL, revision)
    other_root = Path(tempfile.mkdtemp(prefix="basekiln-build-b-", dir=sandbox_root()))
    contexts = {"a": context_a, "b": other_root / "deeper" / "build" / "context"}
    group = f"{recipe.name}-{uuid.uuid4().hex[:8]}"
    try:
        shutil.copytree(context_a, contexts["b"], copy_function=link_or_copy)
        with _progress(options.show_progress) as progress:

            def one(perturbation: Perturbation) -> SandboxBuild:
                task = progress.add_task(
                    f"{recipe.name} [{perturbation.name}] starting", total=None
                )
                return _build_in_sandbox(
                    config,
                    perturbation,
                    contexts[perturbation.name],
                    work / perturbation.name / "oci",
                    inputs,
                    named,
                    annotations,
                    config.file.buildkit.timeout_seconds,
                    lambda text: progress.update(task, description=text),
                    group,
                )

            with ThreadPoolExecutor(max_workers=2) as pool:
                try:
                    builds = list(pool.map(one, (PLAIN, PERTURBED)))
                except BaseException:
                    # The twin must not run on after this build failed; other images'
                    # builds (a parallel nightly) are left alone.
                    stop_all(group)
                    raise
    finally:
        shutil.rmtree(other_root, ignore_errors=True)

    reproducible = builds[0].digest == builds[1].digest
    final_layout = out / "oci"
    report_path = None if reproducible else compare_layouts_report(out, builds, inputs.platform)
    result = BuildResult(
        recipe=recipe.name,
        recipe_path=inputs.recipe_path,
        recipe_sha256=loaded.sha256,
        lockfile_path=inputs.lockfile_path,
        lockfile_sha256=inputs.lockfile_sha256,
        platform=inputs.platform,
        digest=builds[0].digest,
        reproducible=reproducible,
        builds=tuple(builds),
        oci_layout=str(final_layout if reproducible else builds[0].oci_layout),
        buildkit_version=version,
        source_date_epoch=inputs.lock.source_date_epoch,
        started_on=started.isoformat(timespec="seconds"),
        finished_on=datetime.now(UTC).isoformat(timespec="seconds"),
        seconds=round(time.monotonic() - clock, 2),
        parent_digest=inputs.parent.digest if inputs.parent else None,
        report=str(report_path) if report_path else None,
        inputs_digest=digest,
        revision=revision,
    )
    if not reproducible:
        _write_result(out, result)
        raise BuildMismatchError(
            f"{recipe.name} is not reproducible: sandbox a gave {builds[0].digest}, sandbox "
            f"b gave {builds[1].digest}. Report: {report_path}",
            result,
        )

    # Only an image that passed every check takes the place of the last accepted one.
    candidate = Path(builds[0].oci_layout)
    _check_single_image(inputs, candidate)
    _check_parent_layers(inputs, candidate)
    if options.run_tests:
        _run_tests(config, inputs, candidate, named[0])
    check_build_budgets(inputs, candidate)
    shutil.rmtree(final_layout, ignore_errors=True)
    candidate.rename(final_layout)
    accepted = dataclasses.replace(builds[0], oci_layout=str(final_layout))
    result = dataclasses.replace(result, builds=(accepted, *builds[1:]))
    _write_result(out, result)
    shutil.rmtree(work, ignore_errors=True)
    return result


def sandbox_for(
    config: Config, perturbation: Perturbation, group: str = ""
) -> contextlib.AbstractContextManager[Sandbox]:
    """A fresh local sandbox, or the configured remote daemon for this build.

    With remote daemons, the two builds of one image must use two different ones, or
    the comparison would prove nothing about independence.
    """
    settings = config.file.buildkit
    if not settings.endpoints:
        return local_sandbox(perturbation, group=group)
    if len(set(settings.endpoints)) < 2:
        raise InputError(
            "basekiln.toml: [buildkit] endpoints must name two different daemons (the two "
            f"builds of an image must not share one); got {settings.endpoints}"
        )
    address = settings.endpoints[0 if perturbation.name == "a" else 1]
    return contextlib.nullcontext(
        remote_sandbox(_remote_endpoint(config, address), perturbation.name, perturbation)
    )


def _remote_endpoint(config: Config, address: str) -> _buildctl.Endpoint:
    settings = config.file.buildkit
    return _buildctl.Endpoint(address, settings.tls_ca, settings.tls_cert, settings.tls_key)


def _build_in_sandbox(
    config: Config,
    perturbation: Perturbation,
    context: Path,
    output: Path,
    inputs: BuildInputs,
    named: list[NamedImage],
    annotations: dict[str, str],
    timeout: float,
    status: Callable[[str], None],
    group: str = "",
) -> SandboxBuild:
    clock = time.monotonic()
    with sandbox_for(config, perturbation, group) as sandbox:
        status(f"{inputs.recipe.name} [{sandbox.name}] building")
        _run_build(sandbox, context, output, inputs, named, annotations, timeout, status)
    image = read_image(output, inputs.platform)
    return SandboxBuild(
        sandbox=sandbox.describes,
        digest=image.digest,
        perturbations=perturbation.describe(context, local=sandbox.state_dir is not None),
        oci_layout=str(output),
        seconds=round(time.monotonic() - clock, 2),
    )


def _run_build(
    sandbox: Sandbox,
    context: Path,
    output: Path,
    inputs: BuildInputs,
    named: list[NamedImage],
    annotations: dict[str, str],
    timeout: float,
    status: Callable[[str], None],
) -> None:
    perturbation = sandbox.perturbation
    argv = _buildctl.build_argv(
        sandbox.endpoint,
        context,
        output,
        inputs.lock.source_date_epoch,
        named,
        build_args={
            "TZ": perturbation.tz,
            "LANG": perturbation.locale,
            "BASEKILN_UMASK": f"{perturbation.umask:04o}",
        },
        frontend_opts={"hostname": perturbation.hostname},
        platform=inputs.platform,
        annotations=annotations,
        compression=inputs.recipe.compression,
    )

    def on_line(line: str) -> None:
        step = _buildctl.step_started(line)
        if step:
            status(f"{inputs.recipe.name} [{sandbox.name}] {step[:70]}")

    _buildctl.build(argv, timeout, on_line, output.parent / "build.log")


def _progress(enabled: bool) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        disable=not enabled,
        transient=True,
    )


def _check_single_image(inputs: BuildInputs, layout: Path) -> None:
    """The layout holds one image manifest and nothing else: BuildKit's own attestations
    (which carry timestamps and invocation ids) must have stayed off."""
    entries = json.loads((layout / "index.json").read_bytes()).get("manifests", [])
    kinds = [entry.get("mediaType") for entry in entries]
    if kinds != [MEDIA_MANIFEST]:
        raise BuildError(
            f"{inputs.recipe.name}: BuildKit wrote {kinds} to {layout}/index.json, expected "
            "one image manifest; its provenance or SBOM attestations must be off for "
            "comparable builds (check the buildctl options and any remote daemon's config)."
        )


def _check_parent_layers(inputs: BuildInputs, layout: Path) -> None:
    """A derived image must carry its parent's layers byte for byte (moby/buildkit#4805)."""
    if inputs.parent is None:
        return
    parent = read_image(inputs.parent.layout, inputs.platform)
    child = read_image(layout, inputs.platform)
    expected = [layer.digest for layer in parent.layers]
    actual = [layer.digest for layer in child.layers[: len(expected)]]
    if actual != expected:
        raise BuildError(
            f"{inputs.recipe.name}: the build changed its parent's layers (expected "
            f"{expected}, got {actual}); timestamp rewriting touched base layers "
            "(moby/buildkit#4805). Refusing the image."
        )


def _run_tests(config: Config, inputs: BuildInputs, layout: Path, tools: NamedImage) -> None:
    tests = inputs.recipe.tests
    image = read_image(layout, inputs.platform)
    outcomes = run_static_tests(image, tests)
    if tests.commands:
        with sandbox_for(config, PLAIN) as sandbox:
            outcomes += run_command_tests(
                sandbox,
                inputs.recipe.name,
                image,
                tools,
                list(tests.commands),
                inputs.lock.source_date_epoch,
                inputs.platform,
                config.file.buildkit.timeout_seconds,
            )
    raise_on_failures(inputs.recipe.name, outcomes)
    log.info("%s: %d image tests passed", inputs.recipe.name, len(outcomes))


def _write_result(out: Path, result: BuildResult) -> None:
    write_atomic(out / RESULT_NAME, (json.dumps(result.to_json(), indent=2) + "\n").encode())
