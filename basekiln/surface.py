"""Attack surface: what an image holds that an attacker could use, and its budgets.

The report reads the image itself (its OCI layout), not the recipe: packages as the
dpkg metadata in the image declares them (what scanners and the SBOM see), files,
sizes, setuid and setgid files, world-writable paths, shells and package managers.
A recipe's `budgets` bound the same figures; a build over budget fails.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
import stat
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click

from basekiln.assemble import BuildInputs
from basekiln.errors import BasekilnError, BuildError, InputError
from basekiln.imagetest import FileInfo, image_files, resolve
from basekiln.lockfile import write_atomic
from basekiln.oci import Image, LayoutError, iter_layer, layer_stream, read_image
from basekiln.recipe import Budgets

log = logging.getLogger(__name__)

SHELLS = frozenset(
    {"sh", "ash", "bash", "dash", "rbash", "zsh", "ksh", "ksh93", "mksh", "posh", "yash"}
    | {"csh", "tcsh", "fish", "busybox"}
)
PACKAGE_MANAGERS = frozenset(
    {"dpkg", "apt", "apt-get", "aptitude", "rpm", "yum", "dnf", "microdnf", "zypper", "apk"}
    | {"pip", "pip3", "pipx", "easy_install", "conda", "mamba", "npm", "gem"}
)
VERSIONED_PIP = re.compile(r"^pip3\.\d+$")
PIP_MODULE = re.compile(
    r"^.*?/(site|dist)-packages/pip(?=/|$)"  # pip installed as a module
    r"|^.*/ensurepip/_bundled/pip-[^/]+\.whl$"  # the wheel ensurepip would install
)
DPKG_STATUS = "/var/lib/dpkg/status"
DPKG_STATUS_D = "/var/lib/dpkg/status.d/"


@dataclass(frozen=True)
class Surface:
    """What one image exposes; sizes in bytes, paths absolute and sorted."""

    digest: str
    layers: int
    compressed_bytes: int  # every layer, as a registry stores and a client pulls them
    own_compressed_bytes: int  # the layers above the parent's
    uncompressed_bytes: int  # the layers' tar streams, unpacked
    packages: tuple[str, ...]
    files: int  # regular files (hard links counted once)
    setuid: tuple[str, ...]
    setgid: tuple[str, ...]
    world_writable: tuple[str, ...]  # symlinks aside; sticky directories marked (sticky)
    shells: tuple[str, ...]
    package_managers: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def examine(image: Image, parent_layers: int = 0) -> Surface:
    """The attack surface of `image`; the first `parent_layers` layers are its parent's."""
    files = image_files(image)
    sizes = [layer.size for layer in image.layers]
    return Surface(
        digest=image.digest,
        layers=len(sizes),
        compressed_bytes=sum(sizes),
        own_compressed_bytes=sum(sizes[parent_layers:]),
        uncompressed_bytes=sum(_unpacked_size(image, i) for i in range(len(sizes))),
        packages=tuple(sorted(installed_packages(image, files))),
        files=sum(1 for f in files.values() if f.kind == "file"),
        setuid=_with_mode(files, stat.S_ISUID),
        setgid=_with_mode(files, stat.S_ISGID),
        world_writable=world_writable(files),
        shells=shells(files),
        package_managers=package_managers(files),
    )


def _unpacked_size(image: Image, index: int) -> int:
    size = 0
    with layer_stream(image.blob_path(image.layers[index].digest)) as stream:
        while chunk := stream.read(1 << 20):
            size += len(chunk)
    return size


def installed_packages(image: Image, files: dict[str, FileInfo]) -> set[str]:
    """Package names from status.d entries and from a dpkg status file, if present."""
    wanted = {
        path
        for path, info in files.items()
        if info.kind == "file" and (path == DPKG_STATUS or path.startswith(DPKG_STATUS_D))
    }
    names: set[str] = set()
    for path, content in _contents(image, wanted).items():
        for paragraph in content.decode("utf-8", errors="replace").split("\n\n"):
            fields = _fields(paragraph)
            if "Package" not in fields:
                continue
            if path == DPKG_STATUS and not fields.get("Status", "").endswith(" installed"):
                continue
            names.add(fields["Package"])
    return names


def _contents(image: Image, wanted: set[str]) -> dict[str, bytes]:
    """The final content of each wanted path (the topmost layer's copy wins)."""
    found: dict[str, bytes] = {}
    for layer in image.layers:
        with iter_layer(image, layer) as tar:
            for member in tar:
                path = "/" + member.name.removeprefix("./").strip("/")
                if path in wanted and member.isfile():
                    handle = tar.extractfile(member)
                    found[path] = handle.read() if handle else b""
    return found


def _fields(paragraph: str) -> dict[str, str]:
    fields = {}
    for line in paragraph.splitlines():
        if line and not line[0].isspace() and ":" in line:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def _with_mode(files: dict[str, FileInfo], bit: int) -> tuple[str, ...]:
    return tuple(
        sorted(p for p, f in files.items() if f.kind in ("file", "hardlink") and f.mode & bit)
    )


def world_writable(files: dict[str, FileInfo]) -> tuple[str, ...]:
    found = []
    for path, info in sorted(files.items()):
        if info.kind == "symlink" or not info.mode & stat.S_IWOTH:
            continue
        sticky = info.kind == "dir" and info.mode & stat.S_ISVTX
        found.append(f"{path} (sticky)" if sticky else path)
    return tuple(found)


def _runnable(files: dict[str, FileInfo], path: str) -> bool:
    """A path that leads (through links) to a regular file somebody may execute."""
    # A layer may omit a directory's own entry; then the path is looked up as it is.
    target = resolve(files, path) or files.get(path)
    if target is None or target.kind not in ("file", "hardlink"):
        return False
    return bool(target.mode & 0o111) or target.kind == "hardlink"


def shells(files: dict[str, FileInfo]) -> tuple[str, ...]:
    return tuple(
        sorted(p for p in files if posixpath.basename(p) in SHELLS and _runnable(files, p))
    )


def package_managers(files: dict[str, FileInfo]) -> tuple[str, ...]:
    def named_like_one(path: str) -> bool:
        base = posixpath.basename(path)
        return base in PACKAGE_MANAGERS or VERSIONED_PIP.match(base) is not None

    programs = {p for p in files if named_like_one(p) and _runnable(files, p)}
    modules = {m.group(0) for p in files if (m := PIP_MODULE.match(p))}  # pip, the module
    return tuple(sorted(programs | modules))


def budget_violations(surface: Surface, budgets: Budgets) -> list[str]:
    """Each budget the surface exceeds, saying by how much."""
    problems = []
    limits = [
        ("compressed size", surface.compressed_bytes, budgets.max_compressed_bytes, "bytes"),
        ("uncompressed size", surface.uncompressed_bytes, budgets.max_uncompressed_bytes, "bytes"),
        ("packages", len(surface.packages), budgets.max_packages, "packages"),
        ("files", surface.files, budgets.max_files, "files"),
    ]
    field = {
        "compressed size": "max_compressed_bytes",
        "uncompressed size": "max_uncompressed_bytes",
        "packages": "max_packages",
        "files": "max_files",
    }
    for what, actual, limit, unit in limits:
        if limit is not None and actual > limit:
            over = actual - limit
            problems.append(
                f"{what} is {actual:,} {unit}, over {field[what]} ({limit:,}) by {over:,} "
                f"{unit} ({100 * over / limit:.1f}%)"
            )
    if not budgets.allow_setuid and (surface.setuid or surface.setgid):
        paths = ", ".join(surface.setuid + surface.setgid)
        problems.append(f"setuid or setgid files, which allow_setuid forbids: {paths}")
    if not budgets.allow_shell and surface.shells:
        problems.append(f"a shell, which allow_shell forbids: {', '.join(surface.shells)}")
    if not budgets.allow_package_manager and surface.package_managers:
        problems.append(
            "a package manager, which allow_package_manager forbids: "
            + ", ".join(surface.package_managers)
        )
    loose = [p for p in surface.world_writable if not p.endswith(" (sticky)")]
    if not budgets.allow_world_writable and loose:
        problems.append(
            f"world-writable paths, which allow_world_writable forbids: {', '.join(loose)}"
        )
    return problems


def check_budgets(recipe: str, budgets: Budgets, image: Image, parent: Image | None) -> Surface:
    """Examine a built image and fail the build when it is over any budget."""
    surface = examine(image, len(parent.layers) if parent else 0)
    problems = budget_violations(surface, budgets)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise BuildError(
            f"{recipe}: over budget ({len(problems)} of the recipe's budgets):\n{lines}\n"
            "Shrink the image (drop paths, take fewer packages) or raise the budget in "
            "the recipe, with a reason."
        )
    return surface


def format_text(name: str, surface: Surface) -> str:
    def listing(items: tuple[str, ...]) -> str:
        return ", ".join(items) if items else "none"

    rows = [
        ("image", name),
        ("digest", surface.digest),
        ("layers", str(surface.layers)),
        ("compressed", f"{surface.compressed_bytes:,} bytes ({_mib(surface.compressed_bytes)})"),
        (
            "  own layers",
            f"{surface.own_compressed_bytes:,} bytes ({_mib(surface.own_compressed_bytes)})",
        ),
        (
            "uncompressed",
            f"{surface.uncompressed_bytes:,} bytes ({_mib(surface.uncompressed_bytes)})",
        ),
        ("packages", f"{len(surface.packages)}: {listing(surface.packages)}"),
        ("files", f"{surface.files:,}"),
        ("setuid", listing(surface.setuid)),
        ("setgid", listing(surface.setgid)),
        ("world-writable", listing(surface.world_writable)),
        ("shells", listing(surface.shells)),
        ("package managers", listing(surface.package_managers)),
    ]
    return "".join(f"{key:<17} {value}\n" for key, value in rows)


def markdown_table(surfaces: dict[str, Surface]) -> str:
    """One row per image: the attack-surface section of the nightly report."""
    lines = [
        "| image | compressed | uncompressed | packages | files | setuid/setgid "
        "| world-writable | shells | package managers |",
        "|---|---:|---:|---:|---:|---|---|---|---|",
    ]
    for name, s in surfaces.items():
        cells = [
            name,
            _mib(s.compressed_bytes),
            _mib(s.uncompressed_bytes),
            str(len(s.packages)),
            f"{s.files:,}",
            ", ".join(s.setuid + s.setgid) or "none",
            ", ".join(s.world_writable) or "none",
            ", ".join(s.shells) or "none",
            ", ".join(s.package_managers) or "none",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _mib(size: int) -> str:
    return f"{size / 2**20:.2f} MiB"


def locate(name_or_layout: str, out_root: Path, platform: str) -> tuple[Image, Image | None]:
    """A built recipe's image (out/NAME) or an OCI layout directory, and its parent's."""
    candidate = Path(name_or_layout)
    if (candidate / "index.json").is_file():
        return read_image(candidate, platform), None
    result_path = out_root / name_or_layout / "build.json"
    if not result_path.is_file():
        raise InputError(
            f"{name_or_layout}: neither an OCI layout directory nor a built recipe "
            f"({result_path} does not exist); run `basekiln build {name_or_layout}` first"
        )
    result = json.loads(result_path.read_text())
    image = read_image(Path(result["oci_layout"]), result.get("platform", platform))
    parent = _parent_image(image, out_root, platform)
    return image, parent


def _parent_image(image: Image, out_root: Path, platform: str) -> Image | None:
    labels = (image.config.get("config") or {}).get("Labels") or {}
    name = labels.get("org.opencontainers.image.base.name")
    if not name:
        return None
    try:
        return read_image(out_root / name / "oci", platform)
    except LayoutError:
        return None


def pulled(reference: str, folder: Path, platform: str) -> tuple[Image, Image | None]:
    """A published image, HOST/REPO@sha256:…, and its parent when the labels name it in
    the same registry namespace (HOST/PREFIX/<parent>, as nightly publishes)."""
    from basekiln.publish import registry_endpoint
    from basekiln.registry import RegistryClient, parse_reference

    ref = parse_reference(reference)
    if ref.digest is None:
        raise InputError(f"{reference}: name a published image by digest (HOST/REPO@sha256:…)")
    with RegistryClient(registry_endpoint(ref)) as client:
        image = client.pull_image(ref, folder / "image", platform)
        labels = (image.config.get("config") or {}).get("Labels") or {}
        base_name = labels.get("org.opencontainers.image.base.name")
        base_digest = labels.get("org.opencontainers.image.base.digest")
        if not (base_name and base_digest):
            return image, None
        sibling = ref.in_repository(ref.repository.rpartition("/")[0] + "/" + base_name)
        try:
            parent = client.pull_image(sibling.by_digest(base_digest), folder / "parent", platform)
        except BasekilnError:
            log.info("%s: parent %s not found beside it; counting every layer", ref, base_name)
            return image, None
    return image, parent


def _is_registry_reference(text: str) -> bool:
    """HOST/REPO@DIGEST or HOST/REPO:TAG, as opposed to a recipe name or a folder."""
    if Path(text).exists() or "/" not in text:
        return False
    return "@" in text or ":" in text.rpartition("/")[2]


@click.command("report")
@click.argument("image")
@click.option("--platform", default="linux/amd64", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def report_command(image: str, platform: str, as_json: bool) -> None:
    """The attack surface of IMAGE: a built recipe's name, an OCI layout directory, or a
    published image by digest (HOST/REPO@sha256:…)."""
    from basekiln.config import load_config

    try:
        config = load_config()
        with tempfile.TemporaryDirectory(prefix="basekiln-report-") as tmp:
            if _is_registry_reference(image):
                found, parent = pulled(image, Path(tmp), platform)
            else:
                found, parent = locate(image, config.root / "out", platform)
            surface = examine(found, len(parent.layers) if parent else 0)
    except BasekilnError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(int(exc.exit_code))
    if as_json:
        click.echo(json.dumps({"image": image, **surface.to_json()}, indent=2))
    else:
        click.echo(format_text(image, surface), nl=False)


def check_build_budgets(inputs: BuildInputs, layout: Path) -> Surface | None:
    """`check_budgets` for a build that just finished; nothing for a recipe without any."""
    budgets = inputs.recipe.budgets
    if budgets is None:
        return None
    image = read_image(layout, inputs.platform)
    parent = read_image(inputs.parent.layout, inputs.platform) if inputs.parent else None
    surface = check_budgets(inputs.recipe.name, budgets, image, parent)
    log.info(
        "%s: within budget (%d bytes compressed, %d packages)",
        inputs.recipe.name,
        surface.compressed_bytes,
        len(surface.packages),
    )
    return surface


def surfaces_of(out_root: Path, recipes: Iterable[str], platform: str) -> dict[str, Surface]:
    """Each built recipe's surface, cached per digest in out/NAME/surface.json.

    For the nightly report: an unchanged image costs a file read, not a layer walk.
    """
    found: dict[str, Surface] = {}
    for recipe in recipes:
        result_path = out_root / recipe / "build.json"
        if not result_path.is_file():
            continue
        digest = json.loads(result_path.read_text()).get("digest")
        cached = out_root / recipe / "surface.json"
        if cached.is_file():
            data: dict[str, Any] = json.loads(cached.read_text())
            if data.get("digest") == digest:
                found[recipe] = _surface_from_json(data)
                continue
        try:
            image, parent = locate(recipe, out_root, platform)
        except BasekilnError:
            continue
        surface = examine(image, len(parent.layers) if parent else 0)
        write_atomic(cached, (json.dumps(surface.to_json(), indent=2) + "\n").encode())
        found[recipe] = surface
    return found


def _surface_from_json(data: dict[str, Any]) -> Surface:
    lists = ("packages", "setuid", "setgid", "world_writable", "shells", "package_managers")
    return Surface(**{**data, **{key: tuple(data[key]) for key in lists}})
