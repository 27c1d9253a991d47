"""Catalogue benchmark: each image's size, packages, files and build, beside its reference.

For every recipe in recipes/ (parents first), from its last accepted build in out/
(built first when missing; `--build` rebuilds everything, forced): compressed layer
bytes of the image's own layers and of the whole image with its parents, unpacked
bytes, packages in its own lockfile and along its parent chain, regular files, the
double build's time, and whether both sandboxes gave one digest. Beside each default
image, the published image of the same role it is measured against.

    .venv/bin/python bench/catalogue.py [--build] [--markdown] [RECIPE...]
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from basekiln.build import RESULT_NAME, BuildOptions, build_recipes, out_dir
from basekiln.catalogue import load_selection
from basekiln.config import Config, load_config
from basekiln.lockfile import load_lock_chain, lockfile_path, read_lockfile
from basekiln.oci import read_image
from basekiln.results import BuildResult
from basekiln.surface import Surface, examine

MIB = 2**20


@dataclass(frozen=True)
class Reference:
    image: str
    compressed_bytes: int | None  # as published, about
    packages: int


# The best-known published image of each role (Debian 12, amd64), as the issue states.
REFERENCES = {
    "static": Reference("distroless static-debian12", 2 * MIB, 4),
    "base": Reference("distroless base-debian12", 20_000_000, 6),
    "cc": Reference("distroless cc-debian12", None, 10),
    "python3": Reference("distroless python3-debian12", 50_000_000, 34),
    "debian-minimal": Reference("debian:bookworm-slim", int(25.6 * MIB), 88),
}


@dataclass(frozen=True)
class Row:
    name: str
    surface: Surface
    own_packages: int
    chain_packages: int
    seconds: float
    reproducible: bool
    reference: Reference | None


def measure(config: Config, name: str) -> Row:
    result = BuildResult.read(out_dir(config, name) / RESULT_NAME)
    image = read_image(Path(result.oci_layout), result.platform)
    parent_layers = 0
    lock = read_lockfile(lockfile_path(config.lockfiles_dir, name))
    if lock.parent is not None:
        parent = BuildResult.read(out_dir(config, lock.parent.recipe) / RESULT_NAME)
        parent_layers = len(read_image(Path(parent.oci_layout), parent.platform).layers)
    chain = load_lock_chain(config.lockfiles_dir, lock)
    return Row(
        name=name,
        surface=examine(image, parent_layers),
        own_packages=len(lock.packages_for(result.platform)),
        chain_packages=sum(len(lf.packages_for(result.platform)) for lf in chain),
        seconds=result.seconds,
        reproducible=result.reproducible and len({b.digest for b in result.builds}) == 1,
        reference=REFERENCES.get(name),
    )


def _mib(size: int | None) -> str:
    return "—" if size is None else f"{size / MIB:.2f} MiB"


def verdict(row: Row) -> str:
    ref = row.reference
    if ref is None:
        return ""
    misses = []
    if ref.compressed_bytes is not None and row.surface.compressed_bytes > ref.compressed_bytes:
        over = row.surface.compressed_bytes - ref.compressed_bytes
        misses.append(f"size +{over / MIB:.2f} MiB")
    if row.chain_packages > ref.packages:
        misses.append(f"packages +{row.chain_packages - ref.packages}")
    return "met" if not misses else "missed: " + ", ".join(misses)


HEADERS = (
    "image",
    "own layers",
    "compressed",
    "uncompressed",
    "packages (own/chain)",
    "files",
    "build",
    "reproducible",
    "reference",
    "ref. size",
    "ref. pkgs",
    "target",
)


def cells(row: Row) -> tuple[str, ...]:
    s, ref = row.surface, row.reference
    return (
        row.name,
        _mib(s.own_compressed_bytes),
        _mib(s.compressed_bytes),
        _mib(s.uncompressed_bytes),
        f"{row.own_packages}/{row.chain_packages}",
        f"{s.files:,}",
        f"{row.seconds:.1f}s",
        "yes" if row.reproducible else "NO",
        ref.image if ref else "",
        _mib(ref.compressed_bytes) if ref else "",
        str(ref.packages) if ref else "",
        verdict(row),
    )


def print_table(rows: list[Row], markdown: bool) -> None:
    table = [HEADERS, *(cells(r) for r in rows)]
    if markdown:
        print("| " + " | ".join(HEADERS) + " |")
        print("|" + "---|" * len(HEADERS))
        for line in table[1:]:
            print("| " + " | ".join(line) + " |")
        return
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADERS))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))


def main(argv: list[str]) -> int:
    rebuild = "--build" in argv
    markdown = "--markdown" in argv
    names = [a for a in argv if not a.startswith("--")]
    config = load_config()
    selection = [loaded.recipe.name for loaded in load_selection(names, config.recipes_dir)]
    missing = [n for n in selection if not (out_dir(config, n) / RESULT_NAME).is_file()]
    if rebuild or missing:
        build_recipes(config, selection, BuildOptions(force=rebuild, show_progress=False))
    rows = [measure(config, name) for name in selection]
    print_table(rows, markdown)
    return 0 if all(r.reproducible for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
