"""What the nightly and rebuild flows sequence, as plain functions.

The flows in `flows/` only decorate and order these. Three kinds of logic live here:

- the catalogue plan: every recipe that can be loaded, parents first, and a reason for
  each that cannot (a missing parent, a cycle, an invalid file), so one bad recipe
  does not stop the others;
- the skip decision: an image whose inputs (recipe, lockfile, templates, parent
  digest, BuildKit and basekiln versions, as `build.inputs_digest` hashes them) match
  what `out/<recipe>/published.json` records, and whose signature and attestations
  still verify in the registry, is not rebuilt, unless its audit is due;
- the steps of one rebuild (lock check, fetch, double build, tests, evidence, push,
  sign and publish, record), each a function a Prefect task wraps.

A run of either flow holds an exclusive lock on `out/.basekiln.lock` for its checkout,
so two runs started at once take turns instead of writing the same lockfile, build
directory or tag together.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

import httpx

from basekiln import build, imagetest
from basekiln._buildctl import NamedImage
from basekiln.cache import Cache
from basekiln.catalogue import load_selection, topological
from basekiln.config import Config
from basekiln.errors import (
    BasekilnError,
    ExitCode,
    FetchError,
    InputError,
    InterruptedRunError,
    NotReproducibleError,
    VerificationError,
)
from basekiln.evidence import Evidence, produce_evidence
from basekiln.lock import Mode, lock_all
from basekiln.lockfile import (
    file_sha256,
    load_lock_chain,
    lockfile_path,
    read_lockfile,
    write_atomic,
)
from basekiln.oci import read_image
from basekiln.publish import (
    PublishResult,
    Signing,
    publish,
    registry_endpoint,
    repository_reference,
    signing_for_key,
    verify_published,
)
from basekiln.recipe import LoadedRecipe, load_recipe, recipe_names, resolve_recipe_path
from basekiln.registry import RegistryClient, RegistryStatusError, RegistryUnreachableError
from basekiln.results import BuildResult
from basekiln.sandbox import PLAIN, stop_all
from basekiln.sbom import locked_union
from basekiln.toolimage import build_tool_image

log = logging.getLogger(__name__)

RECORD_NAME = "published.json"
LOCK_NAME = ".basekiln.lock"


class Status(Enum):
    """What became of one image in a run."""

    PUBLISHED = "published"  # a new digest was pushed, signed and tagged
    UNCHANGED = "unchanged"  # inputs unchanged and still verified: not rebuilt
    REPRODUCED = "reproduced"  # rebuilt, and the digest is the one already published
    FAILED = "failed"
    SKIPPED = "skipped"  # not attempted: its parent failed or was skipped

    @property
    def ok(self) -> bool:
        return self in (Status.PUBLISHED, Status.UNCHANGED, Status.REPRODUCED)


class Action(Enum):
    BUILD = "build"
    AUDIT = "audit"
    SKIP = "skip"


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str


# --- the catalogue ------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """The recipes a run can attempt (parents first) and why the others cannot run."""

    recipes: tuple[LoadedRecipe, ...]
    failed: Mapping[str, str]  # the recipe's own file or parent link is wrong
    skipped: Mapping[str, str]  # an ancestor is in `failed`


def plan_catalogue(recipes_dir: Path, names: Sequence[str] = ()) -> Plan:
    """Load `names` (default: every recipe) and their parents, each on its own.

    Unlike `catalogue.load_selection`, a recipe with a missing parent or in a cycle of
    parents fails alone, and its descendants are skipped naming it.
    """
    loaded: dict[str, LoadedRecipe] = {}
    failed: dict[str, str] = {}
    pending = list(names) or recipe_names(recipes_dir)
    while pending:
        name = pending.pop()
        key = Path(name).stem
        if key in loaded or key in failed:
            continue
        try:
            recipe = load_recipe(resolve_recipe_path(name, recipes_dir))
        except InputError as exc:
            failed[key] = exc.message
            continue
        loaded[recipe.recipe.name] = recipe
        parent = recipe.recipe.parent
        if parent is not None:
            if (recipes_dir / f"{parent}.yaml").is_file():
                pending.append(parent)
            else:
                failed[recipe.recipe.name] = (
                    f"{recipe.path}: parent: no recipe named {parent!r} in {recipes_dir}; "
                    "create it or fix the name"
                )

    for name, cycle in _cycles(loaded).items():
        failed[name] = f"{loaded[name].path}: parent: recipes form a cycle ({cycle}); break it"
    skipped = _descendants_of(loaded, failed)
    usable = {n: r for n, r in loaded.items() if n not in failed and n not in skipped}
    return Plan(tuple(topological(usable)), failed, skipped)


def _cycles(loaded: Mapping[str, LoadedRecipe]) -> dict[str, str]:
    """Each recipe that is on a cycle of parents, with the cycle drawn from it."""
    found = {}
    for start in loaded:
        trail, name = [start], loaded[start].recipe.parent
        while name is not None and name in loaded and name not in trail:
            trail.append(name)
            name = loaded[name].recipe.parent
        if name == start:
            found[start] = " → ".join([*trail, start])
    return found


def _descendants_of(
    loaded: Mapping[str, LoadedRecipe], failed: Mapping[str, str]
) -> dict[str, str]:
    skipped: dict[str, str] = {}
    for name in loaded:
        if name in failed:
            continue
        parent = loaded[name].recipe.parent
        seen = {name}
        while parent is not None and parent not in seen:
            if parent in failed:
                skipped[name] = f"its ancestor {parent} failed: {failed[parent].splitlines()[0]}"
                break
            seen.add(parent)
            parent = loaded[parent].recipe.parent if parent in loaded else None
    return skipped


# --- the lock step --------------------------------------------------------------------


@dataclass(frozen=True)
class Relock:
    """What re-locking against today's archive changed."""

    changed: tuple[str, ...] = ()
    failed: Mapping[str, str] = field(default_factory=dict)
    diff: str = ""  # a unified diff of the lockfiles, for `git apply` or review


def relock(config: Config, recipes: Sequence[LoadedRecipe]) -> Relock:
    """`lock --update` every recipe; a recipe that cannot be locked fails alone."""
    paths = {r.recipe.name: lockfile_path(config.lockfiles_dir, r.recipe.name) for r in recipes}
    before = {name: _text(path) for name, path in paths.items()}
    failed: dict[str, str] = {}
    try:
        lock_all(config, list(recipes), Mode.UPDATE)
    except BasekilnError as exc:
        if is_transient(exc):
            raise  # the archive is unreachable: the whole step may be retried
        log.warning("locking the catalogue failed (%s); locking each recipe alone", exc.message)
        for loaded in recipes:
            parent = loaded.recipe.parent
            if parent in failed:
                failed[loaded.recipe.name] = f"its parent {parent} could not be locked"
                continue
            try:
                lock_all(config, [loaded], Mode.UPDATE)
            except BasekilnError as one:
                failed[loaded.recipe.name] = one.message

    after = {name: _text(path) for name, path in paths.items()}
    changed = tuple(name for name in paths if before[name] != after[name])
    diff = "".join(
        _unified(config, paths[name], before[name], after[name]) for name in sorted(changed)
    )
    return Relock(changed, failed, diff)


def _text(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


def _unified(config: Config, path: Path, old: str | None, new: str | None) -> str:
    relative = path.relative_to(config.root) if path.is_relative_to(config.root) else path
    lines = difflib.unified_diff(
        (old or "").splitlines(keepends=True),
        (new or "").splitlines(keepends=True),
        fromfile=f"a/{relative}" if old is not None else "/dev/null",
        tofile=f"b/{relative}" if new is not None else "/dev/null",
    )
    return "".join(lines)


# --- what was published -------------------------------------------------------------


@dataclass(frozen=True)
class PublishedRecord:
    """What the last successful run published for a recipe: `out/<recipe>/published.json`."""

    recipe: str
    repository: str  # HOST/REPO/<recipe>
    digest: str
    inputs_digest: str
    tags: tuple[str, ...]
    published_at: str
    reproduced_at: str  # the last time a double build gave this digest
    size: int
    packages: Mapping[str, str]  # every package in the image, with its parents'

    @property
    def image(self) -> str:
        return f"{self.repository}@{self.digest}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["tags"] = list(self.tags)
        data["packages"] = dict(sorted(self.packages.items()))
        return data


def record_path(config: Config, recipe: str) -> Path:
    return build.out_dir(config, recipe) / RECORD_NAME


def read_record(config: Config, recipe: str) -> PublishedRecord | None:
    """The recipe's publication record, or None when absent or unreadable."""
    path = record_path(config, recipe)
    try:
        data = json.loads(path.read_text())
        data["tags"] = tuple(data["tags"])
        return PublishedRecord(**data)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def write_record(config: Config, record: PublishedRecord) -> Path:
    path = record_path(config, record.recipe)
    write_atomic(path, (json.dumps(record.to_json(), indent=2) + "\n").encode())
    return path


def decide(
    record: PublishedRecord | None,
    inputs_digest: str,
    repository: str,
    now: datetime,
    audit_after_days: int,
    audit: bool = False,
) -> Decision:
    """Whether an image is rebuilt, rebuilt as an audit, or skipped (pending verification)."""
    if record is None:
        return Decision(Action.BUILD, "never published from this checkout")
    if record.repository != repository:
        return Decision(Action.BUILD, f"last published to {record.repository}, not {repository}")
    if record.inputs_digest != inputs_digest:
        return Decision(Action.BUILD, "inputs changed since the last publication")
    if audit:
        return Decision(Action.AUDIT, "audit requested")
    if audit_after_days:
        last = _parse_time(record.reproduced_at)
        if last is None or now - last >= timedelta(days=audit_after_days):
            return Decision(Action.AUDIT, f"last reproduced {record.reproduced_at}; audit due")
    return Decision(Action.SKIP, f"inputs unchanged since {record.published_at}")


def _parse_time(text: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def now_iso(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).isoformat(timespec="seconds")


# --- one image in a nightly run -----------------------------------------------------


@dataclass(frozen=True)
class ImageOutcome:
    """One image's line in the nightly report."""

    recipe: str
    status: Status
    reason: str = ""
    digest: str | None = None
    image: str | None = None
    reproducible: bool | None = None
    tags: tuple[str, ...] = ()
    size: int | None = None
    previous_size: int | None = None
    packages: Mapping[str, str] | None = None
    previous_packages: Mapping[str, str] | None = None
    seconds: float = 0.0
    exit_code: int = 0


@dataclass(frozen=True)
class Assessment:
    """Where one image stands before a run touches it."""

    recipe: str
    repository: str
    inputs_digest: str
    decision: Decision
    record: PublishedRecord | None


def image_repository(registry: str, recipe: str) -> str:
    """HOST/REPO/<recipe>, checked as a repository reference."""
    return str(repository_reference(f"{registry.rstrip('/')}/{recipe}"))


def assess(
    config: Config,
    recipe: str,
    registry: str,
    parent_digest: str | None,
    signing: Signing,
    *,
    audit: bool = False,
    ca_bundle: Path | None = None,
    now: datetime | None = None,
) -> Assessment:
    """Decide what to do with one image, verifying in the registry before a skip."""
    selection = load_selection([recipe], config.recipes_dir)
    loaded = selection[-1]
    _, lock_path = build.check_fresh(config, loaded)
    digest = build.inputs_digest(
        loaded.sha256,
        file_sha256(lock_path),
        parent_digest,
        build.buildkit_version(config),
        build.source_revision(config, loaded.path, lock_path),
    )
    repository = image_repository(registry, recipe)
    record = read_record(config, recipe)
    decision = decide(
        record,
        digest,
        repository,
        now or datetime.now(UTC),
        config.file.nightly.audit_after_days,
        audit,
    )
    if decision.action is Action.SKIP and record is not None:
        target = repository_reference(repository).by_digest(record.digest)
        try:
            verify_published(target, signing, registry_endpoint(target, ca_bundle))
        except VerificationError as exc:
            first = exc.message.splitlines()[0]
            decision = Decision(Action.BUILD, f"the published image no longer verifies: {first}")
    log.info("%s: %s (%s)", recipe, decision.action.value, decision.reason)
    return Assessment(recipe, repository, digest, decision, record)


def unchanged_outcome(assessment: Assessment) -> ImageOutcome:
    record = assessment.record
    assert record is not None
    return ImageOutcome(
        recipe=assessment.recipe,
        status=Status.UNCHANGED,
        reason=assessment.decision.reason,
        digest=record.digest,
        image=record.image,
        reproducible=True,
        tags=record.tags,
        size=record.size,
        previous_size=record.size,
        packages=record.packages,
        previous_packages=record.packages,
    )


def rebuilt_outcome(assessment: Assessment, record: PublishedRecord, reused: bool) -> ImageOutcome:
    """The outcome of a rebuild that ended in `record` (the new publication record)."""
    previous = assessment.record
    same = previous is not None and previous.digest == record.digest
    status = Status.REPRODUCED if same or reused else Status.PUBLISHED
    return ImageOutcome(
        recipe=assessment.recipe,
        status=status,
        reason=assessment.decision.reason,
        digest=record.digest,
        image=record.image,
        reproducible=True,
        tags=record.tags,
        size=record.size,
        previous_size=previous.size if previous else None,
        packages=record.packages,
        previous_packages=previous.packages if previous else None,
    )


def failed_outcome(
    recipe: str, error: BaseException, record: PublishedRecord | None
) -> ImageOutcome:
    if isinstance(error, BasekilnError):
        message, code = error.message, error.exit_code
    else:
        message, code = f"{type(error).__name__}: {error}", ExitCode.FAILURE
    return ImageOutcome(
        recipe=recipe,
        status=Status.FAILED,
        reason=message,
        reproducible=False if isinstance(error, NotReproducibleError) else None,
        previous_size=record.size if record else None,
        previous_packages=record.packages if record else None,
        exit_code=int(code),
    )


def skipped_outcome(recipe: str, reason: str) -> ImageOutcome:
    return ImageOutcome(recipe=recipe, status=Status.SKIPPED, reason=reason)


# --- ordering the work --------------------------------------------------------------


class Scheduler:
    """Hands out images whose parent is done, at most `limit` at once, in plan order.

    When an image does not end well, its descendants are skipped with that reason.
    """

    def __init__(self, plan: Plan, limit: int, not_locked: Mapping[str, str]) -> None:
        self.limit = limit
        self.parents = {r.recipe.name: r.recipe.parent for r in plan.recipes}
        self.order = [r.recipe.name for r in plan.recipes]
        self.outcomes: dict[str, ImageOutcome] = {}
        self.running: set[str] = set()
        for name, reason in plan.failed.items():
            self.outcomes[name] = ImageOutcome(name, Status.FAILED, reason, exit_code=2)
        for name, reason in plan.skipped.items():
            self.outcomes[name] = skipped_outcome(name, reason)
        for name in self.order:
            if name in not_locked and name not in self.outcomes:
                self.finish(
                    ImageOutcome(name, Status.FAILED, f"lock: {not_locked[name]}", exit_code=1)
                )

    @property
    def finished(self) -> bool:
        return not self.running and all(n in self.outcomes for n in self.order)

    def startable(self) -> list[tuple[str, str | None]]:
        """Images that may start now, each with its parent's digest; marks them running."""
        ready: list[tuple[str, str | None]] = []
        for name in self.order:
            if len(self.running) + len(ready) >= self.limit:
                break
            if name in self.outcomes or name in self.running:
                continue
            parent = self.parents[name]
            if parent is None:
                ready.append((name, None))
            elif parent in self.outcomes:
                ready.append((name, self.outcomes[parent].digest))
        self.running.update(name for name, _ in ready)
        return ready

    def finish(self, outcome: ImageOutcome) -> None:
        self.running.discard(outcome.recipe)
        self.outcomes[outcome.recipe] = outcome
        if outcome.status.ok:
            return
        verb = "failed" if outcome.status is Status.FAILED else "was skipped"
        for child in (n for n in self.order if self.parents[n] == outcome.recipe):
            self.finish(skipped_outcome(child, f"its parent {outcome.recipe} {verb}"))

    def results(self) -> list[ImageOutcome]:
        """Every outcome: planned images in order, then those the plan rejected."""
        ordered = [self.outcomes[n] for n in self.order]
        return ordered + [o for n, o in sorted(self.outcomes.items()) if n not in self.order]


# --- the steps of one rebuild -------------------------------------------------------


def lock_check(config: Config, recipe: str) -> LoadedRecipe:
    """The recipe, after checking its lockfile (and its parents') is fresh."""
    selection = load_selection([recipe], config.recipes_dir)
    for loaded in selection:
        build.check_fresh(config, loaded)
    return selection[-1]


def fetch_inputs(config: Config, recipe: str, show_progress: bool) -> int:
    """Download every .deb the image and its parents need; the number downloaded."""
    from basekiln.fetch import fetch

    selection = load_selection([recipe], config.recipes_dir)
    locks = [read_lockfile(lockfile_path(config.lockfiles_dir, r.recipe.name)) for r in selection]
    return fetch(config, locks, show_progress=show_progress).downloaded


def double_build(config: Config, recipe: str, *, force: bool, show_progress: bool) -> BuildResult:
    """Build the image twice (parents first, reusing theirs when unchanged) and compare.

    Image tests run in their own step, so a result written here is withdrawn when they
    fail (`withdraw_build`).
    """
    selection = load_selection([recipe], config.recipes_dir)
    parent: BuildResult | None = None
    if parent_name := selection[-1].recipe.parent:
        # Usually a reuse; siblings built at once must not both rebuild their parent.
        with _building(parent_name):
            parents = build.build_recipes(
                config, [parent_name], build.BuildOptions(show_progress=show_progress)
            )
        parent = parents[-1]
    options = build.BuildOptions(force=force, show_progress=show_progress, run_tests=False)
    with _building(recipe), _build_slot(config.file.nightly.concurrency):
        check_not_cancelled(recipe)  # the run may have been stopped while this waited
        return build.build_one(config, selection[-1], selection, parent, options)


_build_locks: dict[str, threading.Lock] = {}
_build_locks_guard = threading.Lock()
_slots: dict[int, threading.BoundedSemaphore] = {}


def _build_slot(limit: int) -> threading.BoundedSemaphore:
    """At most `[nightly] concurrency` double builds at once in this process."""
    with _build_locks_guard:
        return _slots.setdefault(limit, threading.BoundedSemaphore(limit))


@contextlib.contextmanager
def _building(recipe: str) -> Iterator[None]:
    """One build of a recipe at a time in this process (its out/ folder is shared)."""
    with _build_locks_guard:
        lock = _build_locks.setdefault(recipe, threading.Lock())
    with lock:
        yield


def check_reproduces(result: BuildResult, expected: str | None) -> None:
    """An audit passes only when the rebuild gives the digest already published."""
    if expected is not None and result.digest != expected:
        raise NotReproducibleError(
            f"{result.recipe}: the audit rebuild gave {result.digest}, but {expected} is "
            "published; the published image can no longer be reproduced from this "
            "checkout. Compare the two with `basekiln verify --rebuild`."
        )


def test_image(config: Config, recipe: str, result: BuildResult) -> int:
    """Run the recipe's image tests; the number that passed. A failure withdraws the build."""
    loaded = load_selection([recipe], config.recipes_dir)[-1]
    tests = loaded.recipe.tests
    image = read_image(Path(result.oci_layout), result.platform)
    try:
        outcomes = imagetest.run_static_tests(image, tests)
        if tests.commands:
            lock = read_lockfile(lockfile_path(config.lockfiles_dir, recipe))
            tools = build_tool_image(
                Cache(config.cache_dir),
                lock.tools_for(result.platform),
                lock.source_date_epoch,
                result.platform,
            )
            with build.sandbox_for(config, PLAIN) as sandbox:
                outcomes += imagetest.run_command_tests(
                    sandbox,
                    recipe,
                    image,
                    NamedImage("tools", tools.layout, tools.digest),
                    list(tests.commands),
                    lock.source_date_epoch,
                    result.platform,
                    config.file.buildkit.timeout_seconds,
                )
        imagetest.raise_on_failures(recipe, outcomes)
    except BasekilnError:
        withdraw_build(config, recipe)
        raise
    return len(outcomes)


def withdraw_build(config: Config, recipe: str) -> None:
    """Forget an accepted build, so that no later command reuses it untested."""
    (build.out_dir(config, recipe) / build.RESULT_NAME).unlink(missing_ok=True)


def make_evidence(config: Config, result: BuildResult, repository: str) -> Evidence:
    """SBOM, its cross-check against the lockfiles, provenance and reproducibility."""
    return produce_evidence(config, result, repository_reference(repository).name)


def push(
    config: Config, result: BuildResult, repository: str, ca_bundle: Path | None = None
) -> str:
    """Push the image by digest (no tag); safe to repeat, the registry keeps one copy."""
    target = repository_reference(repository).by_digest(result.digest)
    with RegistryClient(registry_endpoint(target, ca_bundle)) as client:
        pushed = client.push_image(read_image(Path(result.oci_layout), result.platform), target)
    log.info("%s: %d blobs uploaded, %d present", target, len(pushed.uploaded), len(pushed.skipped))
    return str(target)


def sign_and_publish(
    config: Config,
    result: BuildResult,
    repository: str,
    signing: Signing,
    ca_bundle: Path | None = None,
    evidence: Evidence | None = None,
) -> PublishResult:
    """Sign, attest, verify, then tag (`publish.publish`), with evidence made earlier."""
    return publish(config, result, repository, signing, ca_bundle=ca_bundle, evidence=evidence)


def record_publication(
    config: Config, result: BuildResult, published: PublishResult, repository: str
) -> PublishedRecord:
    """Write `out/<recipe>/published.json` for the next run's skip decision."""
    previous = read_record(config, result.recipe)
    now = now_iso()
    same = previous is not None and previous.digest == published.digest
    record = PublishedRecord(
        recipe=result.recipe,
        repository=repository,
        digest=published.digest,
        inputs_digest=result.inputs_digest,
        tags=published.tags,
        published_at=previous.published_at if same and previous else now,
        reproduced_at=result.finished_on or now,
        size=image_size(result),
        packages=image_packages(config, result),
    )
    write_record(config, record)
    return record


def image_size(result: BuildResult) -> int:
    """Bytes a pull transfers: the config and the compressed layers."""
    image = read_image(Path(result.oci_layout), result.platform)
    return image.config_descriptor.size + sum(layer.size for layer in image.layers)


def image_packages(config: Config, result: BuildResult) -> dict[str, str]:
    lock = read_lockfile(lockfile_path(config.lockfiles_dir, result.recipe))
    chain = load_lock_chain(config.lockfiles_dir, lock)
    return {p.name: p.version for p in locked_union(chain, result.platform)}


def is_transient(error: BaseException | None) -> bool:
    """Whether repeating a fetch or a push may succeed: the network, not the content."""
    if isinstance(error, RegistryStatusError):
        return error.status == 429 or error.status >= 500
    return isinstance(error, FetchError | RegistryUnreachableError | httpx.TransportError)


# --- settings, signing, locking, interrupting ---------------------------------------


def run_settings(config: Config, registry: str | None, key: str | None) -> tuple[str, str]:
    """The staging registry (HOST/REPO) and signing key: given, else from basekiln.toml."""
    registry = registry or config.file.registry.staging
    key = key or config.signing_key()
    if not registry:
        raise InputError(
            "name the staging registry with --registry HOST/REPO (images go to "
            "HOST/REPO/<recipe>), or set [registry] staging in basekiln.toml"
        )
    if not key:
        raise InputError(
            "name the signing key with --key (a cosign key file or env://VARIABLE, "
            "password in $COSIGN_PASSWORD), or set [signing] key in basekiln.toml"
        )
    repository_reference(registry)
    return registry, key


@contextlib.contextmanager
def signing(key: str) -> Iterator[Signing]:
    """A key-pair signing setup (password in $COSIGN_PASSWORD) for one run."""
    with tempfile.TemporaryDirectory(prefix="basekiln-signing-") as work:
        yield signing_for_key(key, Path(work))


_held_lock = threading.Lock()
_held_counts: dict[Path, int] = {}  # lock file -> holders in this process


@contextlib.contextmanager
def run_lock(config: Config, what: str, timeout: float | None = None) -> Iterator[None]:
    """Hold this checkout's run lock; wait for another run holding it, up to `timeout`.

    Re-entrant within one process for the same checkout, so a nightly run's rebuild
    subflows do not wait on the nightly run itself; another checkout's lock is its own.
    """
    path = (config.root / "out" / LOCK_NAME).resolve()
    with _held_lock:
        reentered = _held_counts.get(path, 0) > 0
        if reentered:
            _held_counts[path] += 1
    if reentered:
        try:
            yield
        finally:
            _release_count(path)
        return

    path.parent.mkdir(parents=True, exist_ok=True)
    limit = config.file.nightly.lock_timeout_seconds if timeout is None else timeout
    with open(path, "a+") as handle:
        _acquire(handle, path, limit)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "run": what, "since": now_iso()}) + "\n")
        handle.flush()
        with _held_lock:
            _held_counts[path] = _held_counts.get(path, 0) + 1
        try:
            yield
        finally:
            _release_count(path)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _release_count(path: Path) -> None:
    with _held_lock:
        _held_counts[path] -= 1
        if not _held_counts[path]:
            del _held_counts[path]


def _acquire(handle: Any, path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    announced = False
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        if time.monotonic() >= deadline:
            raise BasekilnError(
                f"{path}: another basekiln run still holds this checkout ({holder}); wait "
                "for it to finish, or stop it"
            )
        if not announced:
            log.info("another run holds %s (%s); waiting for it", path, holder)
            announced = True
        time.sleep(0.5)


_cancelled = threading.Event()


def begin_run() -> None:
    _cancelled.clear()


def abandon_run() -> None:
    """Stop every image of this run now: later steps refuse to start, daemons are killed."""
    _cancelled.set()
    stop_all()


def check_not_cancelled(recipe: str) -> None:
    if _cancelled.is_set():
        raise InterruptedRunError(f"{recipe}: the run was interrupted; nothing more was started")


# --- progress -------------------------------------------------------------------------


class ProgressSink(Protocol):
    """Where a run reports steps as they start and images as they end (a CLI's bars)."""

    def step(self, recipe: str, step: str) -> None: ...

    def done(self, outcome: ImageOutcome) -> None: ...


class _Silent:
    def step(self, recipe: str, step: str) -> None:
        return

    def done(self, outcome: ImageOutcome) -> None:
        return


_sink: ProgressSink = _Silent()


def progress() -> ProgressSink:
    return _sink


@contextlib.contextmanager
def reporting_to(sink: ProgressSink) -> Iterator[None]:
    global _sink
    previous, _sink = _sink, sink
    try:
        yield
    finally:
        _sink = previous
