"""The nightly logic without Prefect: the plan, skip decisions, the scheduler, locks."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from basekiln import nightly
from basekiln.config import load_config
from basekiln.errors import BasekilnError, FetchError, InputError, NotReproducibleError
from basekiln.nightly import (
    Action,
    ImageOutcome,
    PublishedRecord,
    Scheduler,
    Status,
    decide,
    plan_catalogue,
)
from basekiln.registry import RegistryStatusError, RegistryUnreachableError

NOW = datetime(2026, 6, 1, 3, 0, tzinfo=UTC)
REPO = "127.0.0.1:5000/staging/tiny"
DIGEST = "sha256:" + "a" * 64


def write(recipes: Path, name: str, parent: str | None = None, extra: str = "") -> None:
    recipes.mkdir(parents=True, exist_ok=True)
    text = f"name: {name}\n" + (f"parent: {parent}\n" if parent else "") + extra
    (recipes / f"{name}.yaml").write_text(text)


def record(**changes: object) -> PublishedRecord:
    values: dict[str, object] = {
        "recipe": "tiny",
        "repository": REPO,
        "digest": DIGEST,
        "inputs_digest": "inputs-1",
        "tags": ("tiny-latest",),
        "published_at": "2026-05-30T03:00:00+00:00",
        "reproduced_at": "2026-05-30T03:00:00+00:00",
        "size": 1000,
        "packages": {"base-files": "12.4"},
    }
    values.update(changes)
    return PublishedRecord(**values)  # type: ignore[arg-type]


# --- the plan ---------------------------------------------------------------------------


def test_plan_orders_parents_first(tmp_path: Path) -> None:
    write(tmp_path, "static")
    write(tmp_path, "base", "static")
    write(tmp_path, "cc", "base")
    write(tmp_path, "alone")
    plan = plan_catalogue(tmp_path)
    order = [r.recipe.name for r in plan.recipes]
    assert order.index("static") < order.index("base") < order.index("cc")
    assert set(order) == {"static", "base", "cc", "alone"}
    assert plan.failed == {} and plan.skipped == {}


def test_missing_parent_fails_that_recipe_and_skips_its_children(tmp_path: Path) -> None:
    write(tmp_path, "static")
    write(tmp_path, "orphan", "nowhere")
    write(tmp_path, "grandchild", "orphan")
    plan = plan_catalogue(tmp_path)
    assert [r.recipe.name for r in plan.recipes] == ["static"]
    assert "no recipe named 'nowhere'" in plan.failed["orphan"]
    assert "orphan.yaml" in plan.failed["orphan"]
    assert plan.skipped["grandchild"].startswith("its ancestor orphan failed")


def test_cycle_of_parents_fails_each_member_alone(tmp_path: Path) -> None:
    write(tmp_path, "a", "b")
    write(tmp_path, "b", "a")
    write(tmp_path, "c", "a")
    write(tmp_path, "fine")
    plan = plan_catalogue(tmp_path)
    assert [r.recipe.name for r in plan.recipes] == ["fine"]
    assert "cycle (a → b → a)" in plan.failed["a"]
    assert "cycle (b → a → b)" in plan.failed["b"]
    assert "c" in plan.skipped


def test_invalid_recipe_fails_alone(tmp_path: Path) -> None:
    write(tmp_path, "fine")
    write(tmp_path, "typo", extra="pakages: [x]\n")
    plan = plan_catalogue(tmp_path)
    assert [r.recipe.name for r in plan.recipes] == ["fine"]
    assert "unknown field 'pakages'" in plan.failed["typo"]


def test_named_recipes_bring_their_parents(tmp_path: Path) -> None:
    write(tmp_path, "static")
    write(tmp_path, "base", "static")
    write(tmp_path, "other")
    plan = plan_catalogue(tmp_path, ["base"])
    assert [r.recipe.name for r in plan.recipes] == ["static", "base"]


# --- the skip decision ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "repository", "audit", "expected"),
    [
        (None, REPO, False, Action.BUILD),
        (record(), "127.0.0.1:5000/other/tiny", False, Action.BUILD),
        (record(inputs_digest="inputs-0"), REPO, False, Action.BUILD),
        (record(), REPO, False, Action.SKIP),
        (record(), REPO, True, Action.AUDIT),
        (record(reproduced_at="2026-05-20T03:00:00+00:00"), REPO, False, Action.AUDIT),
        (record(reproduced_at="not a time"), REPO, False, Action.AUDIT),
    ],
)
def test_decide(
    current: PublishedRecord | None, repository: str, audit: bool, expected: Action
) -> None:
    decision = decide(current, "inputs-1", repository, NOW, audit_after_days=7, audit=audit)
    assert decision.action is expected, decision.reason


def test_audit_cadence_zero_never_audits() -> None:
    old = record(reproduced_at=(NOW - timedelta(days=400)).isoformat())
    assert decide(old, "inputs-1", REPO, NOW, audit_after_days=0).action is Action.SKIP


def test_record_round_trip(tmp_path: Path) -> None:
    (tmp_path / "basekiln.toml").write_text("")
    config = load_config(tmp_path)
    assert nightly.read_record(config, "tiny") is None
    nightly.write_record(config, record())
    assert nightly.read_record(config, "tiny") == record()
    nightly.record_path(config, "tiny").write_text("{not json")
    assert nightly.read_record(config, "tiny") is None


# --- the scheduler ----------------------------------------------------------------------


def _plan(tmp_path: Path) -> nightly.Plan:
    write(tmp_path, "static")
    write(tmp_path, "base", "static")
    write(tmp_path, "cc", "base")
    write(tmp_path, "other")
    return plan_catalogue(tmp_path)


def ok(name: str, digest: str = DIGEST) -> ImageOutcome:
    return ImageOutcome(name, Status.PUBLISHED, digest=digest)


def test_scheduler_starts_children_after_parents_within_the_limit(tmp_path: Path) -> None:
    scheduler = Scheduler(_plan(tmp_path), limit=2, not_locked={})
    first = scheduler.startable()
    assert sorted(n for n, _ in first) == ["other", "static"]
    assert scheduler.startable() == []  # the limit is reached

    scheduler.finish(ok("static", "sha256:" + "1" * 64))
    assert scheduler.startable() == [("base", "sha256:" + "1" * 64)]
    scheduler.finish(ok("other"))
    scheduler.finish(ok("base"))
    assert [n for n, _ in scheduler.startable()] == ["cc"]
    scheduler.finish(ok("cc"))
    assert scheduler.finished
    assert [o.recipe for o in scheduler.results()] == ["static", "base", "cc", "other"]


def test_a_failure_skips_descendants_only(tmp_path: Path) -> None:
    scheduler = Scheduler(_plan(tmp_path), limit=4, not_locked={})
    scheduler.startable()
    scheduler.finish(ImageOutcome("static", Status.FAILED, "boom", exit_code=3))
    scheduler.finish(ok("other"))
    assert scheduler.finished
    outcomes = {o.recipe: o for o in scheduler.results()}
    assert outcomes["base"].status is Status.SKIPPED
    assert outcomes["base"].reason == "its parent static failed"
    assert outcomes["cc"].reason == "its parent base was skipped"
    assert outcomes["other"].status is Status.PUBLISHED


def test_scheduler_reports_plan_and_lock_failures(tmp_path: Path) -> None:
    write(tmp_path, "orphan", "nowhere")
    plan = _plan(tmp_path)
    scheduler = Scheduler(plan, limit=4, not_locked={"base": "no such package"})
    outcomes = scheduler.outcomes
    assert outcomes["orphan"].status is Status.FAILED and outcomes["orphan"].exit_code == 2
    assert outcomes["base"].reason == "lock: no such package"
    assert outcomes["cc"].status is Status.SKIPPED
    assert sorted(n for n, _ in scheduler.startable()) == ["other", "static"]


def test_failed_outcome_keeps_the_error_and_its_exit_code() -> None:
    outcome = nightly.failed_outcome("tiny", NotReproducibleError("differs"), record())
    assert outcome.exit_code == 3 and outcome.reproducible is False
    assert outcome.previous_size == 1000
    other = nightly.failed_outcome("tiny", RuntimeError("bug"), None)
    assert other.exit_code == 1 and other.reason == "RuntimeError: bug"


# --- settings, retries, locks -----------------------------------------------------------


def test_run_settings_need_a_registry_and_a_key(tmp_path: Path) -> None:
    (tmp_path / "basekiln.toml").write_text("")
    config = load_config(tmp_path)
    with pytest.raises(InputError, match="--registry"):
        nightly.run_settings(config, None, "k.key")
    with pytest.raises(InputError, match="--key"):
        nightly.run_settings(config, "127.0.0.1:5000/staging", None)
    with pytest.raises(InputError, match="without a tag"):
        nightly.run_settings(config, "127.0.0.1:5000/staging:v1", "k.key")
    (tmp_path / "basekiln.toml").write_text(
        '[registry]\nstaging = "127.0.0.1:5000/s"\n[signing]\nkey = "k.key"\n'
    )
    # A key path in basekiln.toml is taken from the repository root, wherever we run.
    assert nightly.run_settings(load_config(tmp_path), None, None) == (
        "127.0.0.1:5000/s",
        str(tmp_path / "k.key"),
    )
    assert nightly.image_repository("127.0.0.1:5000/s/", "tiny") == "127.0.0.1:5000/s/tiny"


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (FetchError("all mirrors failed"), True),
        (RegistryUnreachableError("reset"), True),
        (RegistryStatusError("busy", 503), True),
        (RegistryStatusError("slow down", 429), True),
        (RegistryStatusError("denied", 400), False),
        (httpx.ConnectError("refused"), True),
        (NotReproducibleError("differs"), False),
        (None, False),
    ],
)
def test_only_network_failures_are_retried(error: BaseException | None, transient: bool) -> None:
    assert nightly.is_transient(error) is transient


HOLD = """
import sys, time
from pathlib import Path
from basekiln.config import load_config
from basekiln.nightly import run_lock
with run_lock(load_config(Path(sys.argv[1])), "holder"):
    print("held", flush=True)
    time.sleep(30)
"""


def test_run_lock_keeps_a_second_run_waiting(tmp_path: Path) -> None:
    (tmp_path / "basekiln.toml").write_text("")
    config = load_config(tmp_path)
    with subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLD), str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            started = time.monotonic()
            with pytest.raises(BasekilnError, match="holder"), nightly.run_lock(config, "x", 1.0):
                pass
            assert time.monotonic() - started >= 1.0
        finally:
            holder.kill()
    with nightly.run_lock(config, "after", 5.0), nightly.run_lock(config, "nested", 0.0):
        pass  # free again, and re-entrant within one process


def test_run_lock_is_reentrant_only_for_its_own_checkout(tmp_path: Path) -> None:
    configs = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "basekiln.toml").write_text("")
        configs.append(load_config(tmp_path / name))
    with (
        nightly.run_lock(configs[0], "first"),
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(HOLD), str(tmp_path / "two")],
            stdout=subprocess.PIPE,
            text=True,
        ) as holder,
    ):
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            # Holding checkout one's lock does not let this process into checkout two's.
            with (
                pytest.raises(BasekilnError, match="holder"),
                nightly.run_lock(configs[1], "x", 0.5),
            ):
                pass
        finally:
            holder.kill()


def test_abandoned_run_refuses_new_steps() -> None:
    nightly.begin_run()
    nightly.check_not_cancelled("tiny")
    nightly.abandon_run()
    with pytest.raises(BasekilnError, match="interrupted"):
        nightly.check_not_cancelled("tiny")
    nightly.begin_run()
