"""Recipes: the YAML that declares an image, validated into a typed model.

Validation reports every problem at once, each with the file, line and field path,
because a maintainer fixing a recipe should not have to run the tool once per typo.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from basekiln.errors import InputError, RecipeError

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
PACKAGE_PATTERN = r"^[a-z0-9][a-z0-9+.-]+$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Strict):
    """One suite of one configured archive, e.g. debian-security/bookworm-security."""

    archive: str
    suite: str
    components: list[str] = ["main"]


class PackageSpec(_Strict):
    """A package the image asks for; `dependencies: false` takes it alone."""

    name: str = Field(pattern=PACKAGE_PATTERN)
    dependencies: bool = True
    paths: list[str] | None = Field(default=None, min_length=1)

    @field_validator("paths")
    @classmethod
    def _paths_inside_the_package(cls, value: list[str] | None) -> list[str] | None:
        # Copied out of the unpacked package by the build: a path that is not absolute
        # and normalised could name something outside it.
        bad = [
            path
            for path in value or []
            if not path.startswith("/") or posixpath.normpath(path) != path or path == "/"
        ]
        if bad:
            raise ValueError(
                f"{', '.join(map(repr, bad))}: each must be an absolute, normalised path "
                "inside the package (like /usr/share/ca-certificates), without '..', '.' "
                "or a trailing '/'"
            )
        return value


class User(_Strict):
    name: str = Field(pattern=r"^[a-z_][a-z0-9_-]*$")
    uid: int = Field(ge=0, lt=2**31)
    gid: int | None = None
    home: str = "/nonexistent"
    shell: str = "/sbin/nologin"


class Group(_Strict):
    name: str = Field(pattern=r"^[a-z_][a-z0-9_-]*$")
    gid: int = Field(ge=0, lt=2**31)
    members: list[str] = []


class TestMount(_Strict):
    """A file from the repository that one command test sees, never part of the image.

    `source` is relative to the recipe's directory. A C or C++ source (`.c`, `.cc`,
    `.cpp`) is first compiled on the host with `cc` or `c++`, dynamically linked unless
    `flags` say otherwise (`-static`, `-lssl`, ...); any other file is mounted as it is.
    """

    __test__ = False  # not a pytest class, whatever its name says

    source: str = Field(min_length=1)
    target: str = Field(pattern=r"^/\.basekiln/[A-Za-z0-9_][A-Za-z0-9._/-]*$")
    flags: list[str] = []


class CommandTest(_Strict):
    name: str
    command: list[str] = Field(min_length=1)
    mounts: list[TestMount] = []
    user: str | None = None  # whom the command runs as; unset: the image's user
    exit_code: int = 0
    stdout: str | None = None
    stderr: str | None = None


class FileTest(_Strict):
    name: str
    path: str
    present: bool = True
    mode: str | None = Field(default=None, pattern=r"^0?[0-7]{3,4}$")
    uid: int | None = None
    gid: int | None = None
    contains: str | None = None


class MetadataTest(_Strict):
    name: str
    user: str | None = None
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: dict[str, str] = {}
    workdir: str | None = None


class Tests(_Strict):
    commands: list[CommandTest] = []
    files: list[FileTest] = []
    metadata: list[MetadataTest] = []


class Budgets(_Strict):
    """Limits a build must stay within; sizes and counts cover the whole image.

    The whole image means its parents' layers and packages too: what a user pulls and
    what the SBOM lists. `allow_setuid` also covers setgid files; `allow_world_writable`
    does not concern sticky directories such as /tmp.
    """

    max_compressed_bytes: int | None = Field(default=None, gt=0)
    max_uncompressed_bytes: int | None = Field(default=None, gt=0)
    max_packages: int | None = Field(default=None, gt=0)
    max_files: int | None = Field(default=None, gt=0)
    allow_setuid: bool = False
    allow_shell: bool = False
    allow_package_manager: bool = False
    allow_world_writable: bool = False


class Recipe(_Strict):
    """A validated recipe. `path` and `sha256` describe the file it came from."""

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    parent: str | None = Field(default=None, pattern=NAME_PATTERN)
    release: Literal["bookworm"] = "bookworm"
    sources: list[Source] | None = None
    architectures: list[Literal["amd64", "arm64"]] = Field(default=["amd64"], min_length=1)
    packages: list[PackageSpec] = []
    # Make /bin, /sbin, /lib and /lib64 links into /usr before unpacking, as Debian 12
    # systems are; needed where dpkg and apt will install more.
    merged_usr: bool = False
    # Where package metadata goes: `status.d` (one file per package, for scanners, as
    # distroless does) or `database` (a real /var/lib/dpkg with status and info/, for
    # images whose dpkg and apt must work). Unset: the parent's choice, else status.d.
    dpkg: Literal["status.d", "database"] | None = None
    # `snapshot`: write apt's sources pointing at snapshot.debian.org as of the
    # InRelease files the lockfile pins, so that apt sees the archive the image saw.
    apt_sources: Literal["snapshot"] | None = None
    # Write /etc/ld.so.cache for the whole image (parent included), as ldconfig would
    # after an install; without it glibc still searches its default directories.
    ldconfig: bool = False
    drop: list[str] = []
    # Shell commands run by the tool stage's busybox after unpacking, with $root the
    # image root and no network; for what no package does (compiling .pyc files, say).
    steps: list[str] = []
    users: list[User] = []
    groups: list[Group] = []
    env: dict[str, str] = {}
    workdir: str = "/"
    user: str | None = None
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    annotations: dict[str, str] = {}
    tests: Tests = Tests()
    budgets: Budgets | None = None  # none declared: the build enforces none
    # How this image's own layer is compressed (a parent's layers stay as they are).
    # gzip is read by every runtime; zstd exports about four times faster and is about
    # 15% smaller, but needs containerd 1.5, Docker Engine 23, Podman 3 or newer.
    compression: Literal["gzip", "zstd"] = "gzip"

    @field_validator("packages", mode="before")
    @classmethod
    def _names_as_specs(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    def effective_sources(self) -> list[Source]:
        """The suites to resolve against: explicit, or the release's usual three."""
        if self.sources is not None:
            return list(self.sources)
        release = self.release
        return [
            Source(archive="debian", suite=release),
            Source(archive="debian", suite=f"{release}-updates"),
            Source(archive="debian-security", suite=f"{release}-security"),
        ]


class LoadedRecipe(BaseModel):
    """A recipe together with where it came from."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    recipe: Recipe
    path: Path
    sha256: str


def resolve_recipe_path(name_or_path: str, recipes_dir: Path) -> Path:
    """A name from recipes/ or a path to a recipe file."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or "/" in name_or_path:
        if not candidate.is_file():
            raise InputError(f"{name_or_path}: no such recipe file")
        return candidate.resolve()
    for suffix in (".yaml", ".yml"):
        path = recipes_dir / f"{name_or_path}{suffix}"
        if path.is_file():
            return path
    known = ", ".join(sorted(p.stem for p in recipes_dir.glob("*.yaml"))) or "none"
    raise InputError(
        f"no recipe named {name_or_path!r} in {recipes_dir} (known: {known}); pass a name "
        "from recipes/ or a path to a recipe file"
    )


def load_recipe(path: Path) -> LoadedRecipe:
    """Parse and validate a recipe file, reporting every problem at once."""
    raw = path.read_bytes()
    document = _parse_yaml(path, raw)
    try:
        recipe = Recipe.model_validate(_plain(document))
    except ValidationError as exc:
        raise RecipeError(str(path), _describe(path, document, exc)) from exc
    if recipe.name != path.stem:
        line = _line_of(document, ("name",))
        raise RecipeError(
            str(path),
            [f"{path}:{line}: name: {recipe.name!r} must match the file name {path.stem!r}"],
        )
    recipe = _anchor_mounts(path, document, recipe)
    return LoadedRecipe(recipe=recipe, path=path, sha256=hashlib.sha256(raw).hexdigest())


def _anchor_mounts(path: Path, document: CommentedMap, recipe: Recipe) -> Recipe:
    """Test mounts with their sources made absolute, each checked to exist."""
    base = path.resolve().parent
    problems = []
    commands = []
    for i, test in enumerate(recipe.tests.commands):
        mounts = []
        for j, mount in enumerate(test.mounts):
            source = (base / mount.source).resolve()
            if not source.is_file():
                loc = ("tests", "commands", i, "mounts", j, "source")
                problems.append(
                    f"{path}:{_line_of(document, loc)}: {_dotted(loc)}: {mount.source} is "
                    f"not a file (sources are relative to {base})"
                )
            mounts.append(mount.model_copy(update={"source": str(source)}))
        commands.append(test.model_copy(update={"mounts": mounts}))
    if problems:
        raise RecipeError(str(path), problems)
    tests = recipe.tests.model_copy(update={"commands": commands})
    return recipe.model_copy(update={"tests": tests})


def _parse_yaml(path: Path, raw: bytes) -> CommentedMap:
    yaml = YAML(typ="rt")
    try:
        document = yaml.load(raw)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise RecipeError(str(path), [f"{where}: malformed YAML: {exc.problem}"]) from exc
    if not isinstance(document, CommentedMap):
        raise RecipeError(str(path), [f"{path}:1: the recipe must be a YAML mapping"])
    return document


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def _describe(path: Path, document: CommentedMap, exc: ValidationError) -> list[str]:
    problems = []
    for error in exc.errors():
        loc = tuple(p for p in error["loc"] if not _is_internal_loc(p))
        field = _dotted(loc) or "(top level)"
        line = _line_of(document, loc)
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = f"unknown field {loc[-1]!r}; check its spelling"
        elif error["type"] == "missing":
            message = "is required"
        problems.append(f"{path}:{line}: {field}: {message}")
    return problems


def _is_internal_loc(part: Any) -> bool:
    # pydantic names union branches in locations; they mean nothing to a recipe author.
    return isinstance(part, str) and part.startswith(("function-", "list[", "literal["))


def _dotted(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _line_of(document: Any, loc: tuple[Any, ...]) -> int:
    """The 1-based line of the deepest node along `loc` that exists in the YAML."""
    node, line = document, 1
    for part in loc:
        if isinstance(node, CommentedMap) and part in node:
            line = node.lc.key(part)[0] + 1
            node = node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and part < len(node):
            line = node.lc.item(part)[0] + 1
            node = node[part]
        else:
            break
    return line


def recipe_names(recipes_dir: Path) -> list[str]:
    return sorted(p.stem for p in recipes_dir.glob("*.yaml") if re.match(NAME_PATTERN, p.stem))
