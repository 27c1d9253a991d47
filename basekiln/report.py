"""The nightly report: one line per image, as JSON for machines and Markdown for people.

Both are written under the configured reports folder (`reports/` by default) as
`nightly-<UTC time>.json` and `.md`, with the lockfile changes beside them as a
`.diff` that `git apply` accepts. The flow also shows the Markdown as a Prefect
artifact.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from debian.debian_support import version_compare

from basekiln.config import Config
from basekiln.errors import ExitCode
from basekiln.lockfile import write_atomic
from basekiln.nightly import ImageOutcome, Relock, Status
from basekiln.surface import Surface, markdown_table


@dataclass(frozen=True)
class PackageChanges:
    """How an image's packages differ from the last published image's."""

    added: tuple[tuple[str, str], ...] = ()
    removed: tuple[tuple[str, str], ...] = ()
    upgraded: tuple[tuple[str, str, str], ...] = ()
    downgraded: tuple[tuple[str, str, str], ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.upgraded or self.downgraded)

    def to_json(self) -> dict[str, list[dict[str, str]]]:
        return {
            "added": [{"name": n, "version": v} for n, v in self.added],
            "removed": [{"name": n, "version": v} for n, v in self.removed],
            "upgraded": [{"name": n, "from": a, "to": b} for n, a, b in self.upgraded],
            "downgraded": [{"name": n, "from": a, "to": b} for n, a, b in self.downgraded],
        }

    def summary(self) -> str:
        parts = [
            f"+{len(self.added)}" if self.added else "",
            f"−{len(self.removed)}" if self.removed else "",
            f"↑{len(self.upgraded)}" if self.upgraded else "",
            f"↓{len(self.downgraded)}" if self.downgraded else "",
        ]
        return " ".join(p for p in parts if p) or "none"


def package_changes(old: Mapping[str, str], new: Mapping[str, str]) -> PackageChanges:
    """Packages added, removed, and moved to a higher or lower Debian version."""
    common = sorted(old.keys() & new.keys())
    return PackageChanges(
        added=tuple((n, new[n]) for n in sorted(new.keys() - old.keys())),
        removed=tuple((n, old[n]) for n in sorted(old.keys() - new.keys())),
        upgraded=tuple((n, old[n], new[n]) for n in common if version_compare(new[n], old[n]) > 0),
        downgraded=tuple(
            (n, old[n], new[n]) for n in common if version_compare(new[n], old[n]) < 0
        ),
    )


def changes_of(outcome: ImageOutcome) -> PackageChanges | None:
    """Changes since the last published image; None when nothing new was built."""
    if outcome.packages is None:
        return None
    return package_changes(outcome.previous_packages or {}, outcome.packages)


def size_change(outcome: ImageOutcome) -> int | None:
    if outcome.size is None or outcome.previous_size is None:
        return None
    return outcome.size - outcome.previous_size


@dataclass(frozen=True)
class NightlyReport:
    started: datetime
    finished: datetime
    registry: str
    audit: bool
    images: tuple[ImageOutcome, ...]
    relock: Relock
    flow_run: str | None = None  # the Prefect flow run's id, when run by Prefect
    surfaces: Mapping[str, Surface] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return round((self.finished - self.started).total_seconds(), 2)

    @property
    def counts(self) -> dict[str, int]:
        return {s.value: sum(1 for i in self.images if i.status is s) for s in Status}

    @property
    def ok(self) -> bool:
        return all(i.status.ok for i in self.images)

    @property
    def stamp(self) -> str:
        return self.started.strftime("%Y%m%dT%H%M%SZ")

    def exit_code(self) -> int:
        """0 when every image ended well; else the failures' shared code, or 1."""
        codes = {i.exit_code for i in self.images if i.status is Status.FAILED}
        if not codes:
            return int(ExitCode.FAILURE) if not self.ok else int(ExitCode.OK)
        return codes.pop() if len(codes) == 1 else int(ExitCode.FAILURE)

    def to_json(self, files: Mapping[str, str] | None = None) -> dict[str, Any]:
        return {
            "run": {
                "started": self.started.isoformat(timespec="seconds"),
                "finished": self.finished.isoformat(timespec="seconds"),
                "seconds": self.seconds,
                "registry": self.registry,
                "audit": self.audit,
                "flow_run": self.flow_run,
                "exit_code": self.exit_code(),
            },
            "summary": self.counts,
            "images": [_image_json(i) for i in self.images],
            "lockfiles": {
                "changed": list(self.relock.changed),
                "failed": dict(self.relock.failed),
            },
            "files": dict(files or {}),
            "attack_surface": {name: s.to_json() for name, s in self.surfaces.items()},
        }

    def to_markdown(self, files: Mapping[str, str] | None = None) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in self.counts.items() if n)
        lines = [
            f"# basekiln nightly, {self.started:%Y-%m-%d %H:%M} UTC",
            "",
            f"Registry `{self.registry}`; {len(self.images)} images: {counts or 'none'}; "
            f"{self.seconds:.1f} s{' (audit)' if self.audit else ''}.",
            "",
            "| Image | Status | Digest | Reproducible | Packages | Size | Time |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [_table_row(i) for i in self.images]
        for outcome in self.images:
            lines += _details(outcome)
        if self.surfaces:
            lines += ["", "## Attack surface", "", markdown_table(dict(self.surfaces))]
        lines += _lockfile_section(self.relock, (files or {}).get("diff"))
        return "\n".join(lines) + "\n"


def _image_json(outcome: ImageOutcome) -> dict[str, Any]:
    changes = changes_of(outcome)
    return {
        "recipe": outcome.recipe,
        "status": outcome.status.value,
        "digest": outcome.digest,
        "image": outcome.image,
        "reproducible": outcome.reproducible,
        "reason": outcome.reason,
        "tags": list(outcome.tags),
        "packages": changes.to_json() if changes is not None else None,
        "first_publication": outcome.packages is not None and outcome.previous_packages is None,
        "size": outcome.size,
        "size_change": size_change(outcome),
        "seconds": round(outcome.seconds, 2),
    }


def _table_row(outcome: ImageOutcome) -> str:
    digest = f"`{outcome.digest[:19]}…`" if outcome.digest else "–"
    reproducible = {True: "yes", False: "**no**", None: "–"}[outcome.reproducible]
    changes = changes_of(outcome)
    packages = "–" if changes is None else changes.summary()
    if changes is not None and outcome.previous_packages is None:
        packages += " (first)"
    size = "–" if outcome.size is None else human_size(outcome.size)
    delta = size_change(outcome)
    if delta:
        size += f" ({'+' if delta > 0 else '−'}{human_size(abs(delta))})"
    status = outcome.status.value
    if outcome.status is Status.FAILED:
        status = f"**{status}**"
    return (
        f"| {outcome.recipe} | {status} | {digest} | {reproducible} | {packages} | {size} "
        f"| {outcome.seconds:.1f} s |"
    )


def _details(outcome: ImageOutcome) -> list[str]:
    lines: list[str] = []
    if outcome.status in (Status.FAILED, Status.SKIPPED):
        reason = outcome.reason.strip().replace("\n", "\n    ")
        lines += [f"- {outcome.status.value}: {reason}"]
    changes = changes_of(outcome)
    if changes is not None and outcome.previous_packages is not None and not changes.empty:
        lines += [f"- added: {n} {v}" for n, v in changes.added]
        lines += [f"- removed: {n} {v}" for n, v in changes.removed]
        lines += [f"- upgraded: {n} {a} → {b}" for n, a, b in changes.upgraded]
        lines += [f"- downgraded: {n} {a} → {b}" for n, a, b in changes.downgraded]
    if outcome.image and outcome.status is Status.PUBLISHED:
        lines += [f"- image: `{outcome.image}`"]
    return ["", f"## {outcome.recipe}", "", *lines] if lines else []


def _lockfile_section(relock: Relock, diff: str | None) -> list[str]:
    lines = ["", "## Lockfiles", ""]
    if relock.changed:
        lines.append(f"Re-locked against today's archive: {', '.join(relock.changed)} changed.")
        if diff:
            lines.append(f"Review and commit them; the diff is `{diff}`.")
    else:
        lines.append("Re-locked against today's archive: no lockfile changed.")
    lines += [f"- could not lock {n}: {m.splitlines()[0]}" for n, m in relock.failed.items()]
    return lines


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def write_report(config: Config, report: NightlyReport) -> dict[str, str]:
    """Write the JSON, the Markdown and (if any) the lockfile diff; their paths.

    Called under the run lock, so choosing a free name cannot race another run.
    """
    folder = Path(config.file.nightly.reports_dir)
    folder = folder if folder.is_absolute() else config.root / folder
    stem = folder / f"nightly-{report.stamp}"
    suffix = 1
    while stem.with_suffix(".json").exists():  # two runs started in the same second
        suffix += 1
        stem = folder / f"nightly-{report.stamp}-{suffix}"
    files = {"json": f"{stem}.json", "markdown": f"{stem}.md"}
    if report.relock.diff:
        files["diff"] = f"{stem}.diff"
        write_atomic(Path(files["diff"]), report.relock.diff.encode())
    write_atomic(Path(files["markdown"]), report.to_markdown(files).encode())
    text = json.dumps(report.to_json(files), indent=2) + "\n"
    write_atomic(Path(files["json"]), text.encode())
    write_atomic(folder / "latest.json", text.encode())
    return files
