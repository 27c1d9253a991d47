"""Image tests: what a recipe's `tests:` say about the image it built.

File and metadata tests read the image's layers and config directly. Command tests run
inside the image, in a BuildKit sandbox with no network; their exit code and output come
back as files from a scratch stage.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from basekiln import __version__
from basekiln._buildctl import NamedImage, build, build_argv
from basekiln._run import CommandError, run, which
from basekiln.errors import BuildError
from basekiln.oci import Image, iter_layer
from basekiln.recipe import CommandTest, FileTest, MetadataTest, Tests
from basekiln.render import environment
from basekiln.sandbox import Sandbox

COMPILERS = {".c": "cc", ".cc": "c++", ".cpp": "c++"}
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


@dataclass(frozen=True)
class FileInfo:
    path: str
    kind: str  # file | dir | symlink | hardlink | other
    mode: int
    uid: int
    gid: int
    size: int
    target: str


@dataclass(frozen=True)
class TestOutcome:
    name: str
    passed: bool
    detail: str


def _kind(member: tarfile.TarInfo) -> str:
    if member.isdir():
        return "dir"
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hardlink"
    return "file" if member.isfile() else "other"


def image_files(image: Image) -> dict[str, FileInfo]:
    """The image's final file tree: layers applied in order, whiteouts honoured."""
    files: dict[str, FileInfo] = {}
    for layer in image.layers:
        with iter_layer(image, layer) as tar:
            for member in tar:
                path = "/" + member.name.removeprefix("./").strip("/")
                directory, base = posixpath.split(path)
                if base == OPAQUE:
                    for key in [k for k in files if k.startswith(directory.rstrip("/") + "/")]:
                        del files[key]
                    continue
                if base.startswith(WHITEOUT):
                    gone = posixpath.join(directory, base[len(WHITEOUT) :])
                    for key in [k for k in files if k == gone or k.startswith(gone + "/")]:
                        del files[key]
                    continue
                files[path] = FileInfo(
                    path,
                    _kind(member),
                    member.mode,
                    member.uid,
                    member.gid,
                    member.size,
                    member.linkname,
                )
    return files


def resolve(files: dict[str, FileInfo], path: str, depth: int = 0) -> FileInfo | None:
    """Look a path up the way the kernel would, following symlinks inside the image."""
    if depth > 40:
        return None
    parts = [p for p in path.split("/") if p]
    current = "/"
    for i, part in enumerate(parts):
        candidate = posixpath.join(current, part)
        info = files.get(candidate)
        if info is None:
            return None
        if info.kind == "symlink" and (i < len(parts) - 1 or depth >= 0):
            base = "/" if info.target.startswith("/") else current
            target = posixpath.normpath(posixpath.join(base, info.target))
            rest = "/".join(parts[i + 1 :])
            return resolve(files, posixpath.join(target, rest) if rest else target, depth + 1)
        current = candidate
    return files.get(current) if current != "/" else FileInfo("/", "dir", 0o755, 0, 0, 0, "")


def check_file(
    files: dict[str, FileInfo], test: FileTest, read: Callable[[str], bytes]
) -> TestOutcome:
    info = resolve(files, test.path)
    if not test.present:
        ok = info is None and test.path not in files
        return TestOutcome(test.name, ok, "" if ok else f"{test.path} exists but must not")
    if info is None:
        return TestOutcome(test.name, False, f"{test.path} does not exist")
    problems = []
    if test.mode is not None and (info.mode & 0o7777) != int(test.mode, 8):
        problems.append(f"mode is {info.mode & 0o7777:04o}, expected {int(test.mode, 8):04o}")
    if test.uid is not None and info.uid != test.uid:
        problems.append(f"owner uid is {info.uid}, expected {test.uid}")
    if test.gid is not None and info.gid != test.gid:
        problems.append(f"group gid is {info.gid}, expected {test.gid}")
    if test.contains is not None and test.contains.encode() not in read(info.path):
        problems.append(f"does not contain {test.contains!r}")
    return TestOutcome(test.name, not problems, f"{test.path}: {'; '.join(problems)}")


def check_metadata(config: dict[str, object], test: MetadataTest) -> TestOutcome:
    section = config.get("config")
    image = section if isinstance(section, dict) else {}
    problems = []
    if test.user is not None and image.get("User", "") != test.user:
        problems.append(f"user is {image.get('User')!r}, expected {test.user!r}")
    if test.entrypoint is not None and image.get("Entrypoint") != test.entrypoint:
        problems.append(f"entrypoint is {image.get('Entrypoint')}, expected {test.entrypoint}")
    if test.cmd is not None and image.get("Cmd") != test.cmd:
        problems.append(f"cmd is {image.get('Cmd')}, expected {test.cmd}")
    if test.workdir is not None and image.get("WorkingDir") != test.workdir:
        problems.append(f"workdir is {image.get('WorkingDir')!r}, expected {test.workdir!r}")
    env = dict(e.split("=", 1) for e in image.get("Env") or [])
    for key, value in test.env.items():
        if env.get(key) != value:
            problems.append(f"env {key} is {env.get(key)!r}, expected {value!r}")
    return TestOutcome(test.name, not problems, "; ".join(problems))


def read_file(image: Image, path: str) -> bytes:
    """The content of `path` from the topmost layer holding it."""
    wanted = path.lstrip("/")
    content = b""
    for layer in image.layers:
        with iter_layer(image, layer) as tar:
            for member in tar:
                if member.name.removeprefix("./").strip("/") == wanted and member.isfile():
                    handle = tar.extractfile(member)
                    content = handle.read() if handle else b""
    return content


def command_argv(index: int, test: CommandTest) -> list[str]:
    script = (
        f'"$@" > /.basekiln-results/{index}.out 2> /.basekiln-results/{index}.err; '
        f"echo $? > /.basekiln-results/{index}.code"
    )
    return ["/.basekiln/busybox", "sh", "-c", script, "basekiln-test", *test.command]


def mount_name(test_index: int, mount_index: int) -> str:
    """Where a test's mounted file sits in the test build's context."""
    return f"mounts/{test_index}-{mount_index}"


def render_command_tests(recipe: str, image: Image, tests: list[CommandTest]) -> str:
    user = str((image.config.get("config") or {}).get("User") or "0")
    return (
        environment()
        .get_template("imagetest.Dockerfile.j2")
        .render(
            version=__version__,
            recipe=recipe,
            image_digest=image.digest,
            user=user,
            tests=[
                {
                    "argv": command_argv(i, t),
                    "mounts": [(mount_name(i, j), m.target) for j, m in enumerate(t.mounts)],
                    "user": t.user or user,
                }
                for i, t in enumerate(tests)
            ],
        )
    )


def prepare_mounts(tests: list[CommandTest], context: Path) -> None:
    """Put each test's mounted files into the test build's context, compiling sources."""
    for i, test in enumerate(tests):
        for j, mount in enumerate(test.mounts):
            target = context / mount_name(i, j)
            target.parent.mkdir(parents=True, exist_ok=True)
            source = Path(mount.source)
            compiler = COMPILERS.get(source.suffix)
            if compiler is None:
                shutil.copyfile(source, target)
                target.chmod(0o755 if os.access(source, os.X_OK) else 0o644)
            else:
                compile_program(compiler, source, target, mount.flags, test.name)


def compile_program(compiler: str, source: Path, target: Path, flags: list[str], test: str) -> None:
    """Build a test program on the host; it reaches the test, never the image."""
    if which(compiler) is None:
        raise BuildError(
            f"test {test!r} mounts {source.name}, which needs a {compiler} compiler on this "
            "machine; install gcc and g++ (Debian: apt-get install build-essential)"
        )
    argv = [compiler, "-O2", "-Wall", "-o", str(target), str(source), *flags]
    try:
        run(argv, timeout=300)
    except CommandError as exc:
        raise BuildError(
            f"test {test!r}: compiling {source} failed:\n{exc.stderr.strip()[-2000:]}"
        ) from exc


def judge_command(test: CommandTest, code: int, stdout: str, stderr: str) -> TestOutcome:
    problems = []
    if code != test.exit_code:
        problems.append(f"exit code {code}, expected {test.exit_code}")
    if test.stdout is not None and not re.search(test.stdout, stdout):
        problems.append(f"stdout does not match /{test.stdout}/")
    if test.stderr is not None and not re.search(test.stderr, stderr):
        problems.append(f"stderr does not match /{test.stderr}/")
    detail = "; ".join(problems)
    if problems:
        detail += f"\n    stdout: {stdout.strip()[-800:]!r}\n    stderr: {stderr.strip()[-800:]!r}"
    return TestOutcome(test.name, not problems, detail)


def run_command_tests(
    sandbox: Sandbox,
    recipe: str,
    image: Image,
    tools: NamedImage,
    tests: list[CommandTest],
    epoch: int,
    platform: str,
    timeout: float,
) -> list[TestOutcome]:
    if not tests:
        return []
    with tempfile.TemporaryDirectory(prefix="basekiln-test-") as tmp:
        context, results = Path(tmp) / "context", Path(tmp) / "results"
        context.mkdir()
        (context / "Dockerfile").write_text(render_command_tests(recipe, image, tests))
        prepare_mounts(tests, context)
        named = [tools, NamedImage("image", image.layout, image.digest)]
        argv = build_argv(sandbox.endpoint, context, results, epoch, named, {}, {}, platform, {})
        output_at = argv.index("--output") + 1
        argv[output_at] = f"type=local,dest={results}"
        build(argv, timeout, lambda _line: None)
        outcomes = []
        for i, test in enumerate(tests):
            code_text = (results / f"{i}.code").read_text().strip()
            outcomes.append(
                judge_command(
                    test,
                    int(code_text),
                    (results / f"{i}.out").read_text(errors="replace"),
                    (results / f"{i}.err").read_text(errors="replace"),
                )
            )
    return outcomes


def run_static_tests(image: Image, tests: Tests) -> list[TestOutcome]:
    files = image_files(image)
    outcomes = [check_file(files, t, lambda p: read_file(image, p)) for t in tests.files]
    outcomes += [check_metadata(image.config, t) for t in tests.metadata]
    return outcomes


def raise_on_failures(recipe: str, outcomes: list[TestOutcome]) -> None:
    failed = [o for o in outcomes if not o.passed]
    if failed:
        lines = "\n".join(f"  - {o.name}: {o.detail}" for o in failed)
        raise BuildError(f"{recipe}: {len(failed)} of {len(outcomes)} image tests failed:\n{lines}")


def outcomes_json(outcomes: list[TestOutcome]) -> str:
    return json.dumps([vars(o) for o in outcomes], indent=2)
