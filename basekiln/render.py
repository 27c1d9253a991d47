"""Render: a locked recipe into the Dockerfile and assembly script BuildKit runs.

Templates live in `builders/`; what they are given is computed here, so that
`basekiln render` prints exactly what is built.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from basekiln import __version__
from basekiln.lockfile import LockedPackage
from basekiln.recipe import Recipe

TEMPLATES = Path(__file__).resolve().parent.parent / "builders"
TEMPLATE_NAMES = ("Dockerfile.j2", "assemble.sh.j2", "imagetest.Dockerfile.j2", "buildkitd.toml.j2")


@dataclass(frozen=True)
class GeneratedFile:
    """A file basekiln writes into the image, with its owner and mode."""

    path: str
    content: bytes
    mode: int = 0o644
    uid: int = 0
    gid: int = 0

    @property
    def directory(self) -> str:
        return self.path.rpartition("/")[0]


@dataclass(frozen=True)
class Directory:
    path: str
    mode: int
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class UnpackStep:
    name: str
    sha256: str
    paths: tuple[str, ...]


def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # noqa: S701 (shell scripts and Dockerfiles, not HTML)
    )
    env.filters["shquote"] = shlex.quote
    env.filters["shglob"] = shell_glob
    return env


def shell_glob(path: str) -> str:
    """`path` as one shell word in which only `*` and `?` stay wildcards."""
    parts = re.split(r"([*?])", path)
    return "".join(p if p in ("*", "?") else shlex.quote(p) for p in parts if p)


def templates_digest() -> str:
    """One digest over every template: part of what a rebuild must match."""
    digest = hashlib.sha256()
    for name in TEMPLATE_NAMES:
        path = TEMPLATES / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def unpack_steps(recipe: Recipe, packages: list[LockedPackage]) -> list[UnpackStep]:
    paths = {spec.name: tuple(p.strip("/") for p in spec.paths or ()) for spec in recipe.packages}
    return [UnpackStep(p.name, p.sha256, paths.get(p.name, ())) for p in packages]


def render_assemble_script(
    recipe: Recipe,
    recipe_path: str,
    steps: list[UnpackStep],
    generated: list[GeneratedFile],
    directories: list[Directory],
    ca_bundle: bool,
    merged_usr: bool = False,
    dpkg_packages: list[tuple[str, str]] | None = None,
    source_date_epoch: int = 0,
) -> str:
    """The assembly script. `dpkg_packages` (name, architecture) are registered with
    dpkg and configured by it in the build; their database files are in the context."""
    return (
        environment()
        .get_template("assemble.sh.j2")
        .render(
            recipe_path=recipe_path,
            packages=steps,
            drop=[p.strip("/") for p in recipe.drop],
            generated=generated,
            directories=directories,
            ca_bundle=ca_bundle,
            steps=recipe.steps,
            ldconfig=recipe.ldconfig,
            merged_usr=merged_usr,
            dpkg_packages=dpkg_packages or [],
            source_date_epoch=source_date_epoch,
        )
    )


def render_dockerfile(
    recipe: Recipe, recipe_path: str, lockfile_path: str, has_parent: bool, labels: dict[str, str]
) -> str:
    contexts = ["tools", "parent"] if has_parent else ["tools"]
    return (
        environment()
        .get_template("Dockerfile.j2")
        .render(
            version=__version__,
            recipe_path=recipe_path,
            lockfile_path=lockfile_path,
            contexts=contexts,
            has_parent=has_parent,
            env=sorted(recipe.env.items()),
            user=recipe.user,
            workdir=recipe.workdir,
            entrypoint=recipe.entrypoint,
            cmd=recipe.cmd,
            labels=sorted(labels.items()),
        )
    )
