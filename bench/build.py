"""Build benchmark: one build, the double build, and mmdebstrap on the same packages.

For each recipe in recipes/ (parents first): the wall time of a single build in one
fresh sandbox; of the double build (context, both sandboxes, comparison; forced, so
nothing is reused), which the goal is about; of the same with the image tests and
budget checks that follow it; and of `mmdebstrap --variant=extract` unpacking the same
packages (its .debs copied in from basekiln's cache, so neither side downloads
packages; mmdebstrap still fetches the suite's indexes). mmdebstrap works in the same
directory as basekiln's sandboxes (memory or disk alike). Also the image's size and
layer count.

    .venv/bin/python bench/build.py [--compression zstd] [RECIPE...]

`--compression zstd` measures the same catalogue with every recipe set to zstd: a copy
of the project in a temporary directory whose recipes say so, with lockfiles pinning
the same packages (only their recipe and parent checksums follow the edit).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from basekiln.build import BuildOptions, build_one, build_recipes, build_single
from basekiln.cache import Cache
from basekiln.catalogue import load_selection
from basekiln.config import Config, load_config
from basekiln.lockfile import file_sha256, lockfile_path, read_lockfile, write_lockfile
from basekiln.oci import read_image
from basekiln.sandbox import sandbox_root


def mmdebstrap_seconds(cache: Cache, packages: list[tuple[str, str, str, str]]) -> float | None:
    if shutil.which("mmdebstrap") is None:
        return None
    with tempfile.TemporaryDirectory(prefix="bench-mmdebstrap-", dir=sandbox_root()) as tmp:
        debs = Path(tmp) / "debs"
        debs.mkdir()
        for name, version, arch, sha in packages:
            file = f"{name}_{version.replace(':', '%3a')}_{arch}.deb"
            shutil.copyfile(cache.path(sha), debs / file)
        include = ",".join(name for name, *_ in packages)
        argv = [
            "mmdebstrap",
            "--quiet",
            "--variant=extract",
            f"--include={include}",
            "--skip=check/empty",
            "--skip=download/empty",
            f'--setup-hook=mkdir -p "$1"/var/cache/apt/archives && '
            f'cp {debs}/*.deb "$1"/var/cache/apt/archives/',
            "bookworm",
            str(Path(tmp) / "root.tar"),
            "deb http://deb.debian.org/debian bookworm main",
            "deb http://deb.debian.org/debian bookworm-updates main",
            "deb http://deb.debian.org/debian-security bookworm-security main",
        ]
        start = time.monotonic()
        env = {**os.environ, "TMPDIR": tmp}
        done = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
        seconds = time.monotonic() - start
        if done.returncode != 0:
            print(f"  mmdebstrap failed: {done.stderr.strip()[-400:]}", file=sys.stderr)
            return None
        return seconds


def with_compression(config: Config, compression: str, dest: Path) -> Config:
    """A copy of the project at `dest` whose recipes all use `compression`."""
    for shared in ("builders", "tests"):
        (dest / shared).symlink_to(config.root / shared)
    (dest / "recipes").mkdir()
    (dest / "lockfiles").mkdir()
    copy = Config(root=dest, file=config.file)
    for loaded in load_selection([], config.recipes_dir):
        text = loaded.path.read_text()
        (copy.recipes_dir / loaded.path.name).write_text(
            text.rstrip("\n") + f"\ncompression: {compression}\n"
        )
    # Parents first (load_selection's order), so a child can pin its parent's new lock.
    for loaded in load_selection([], copy.recipes_dir):
        lock = read_lockfile(lockfile_path(config.lockfiles_dir, loaded.recipe.name))
        update: dict[str, Any] = {
            "recipe": lock.recipe.model_copy(update={"sha256": loaded.sha256})
        }
        if lock.parent is not None:
            parent_lock = lockfile_path(copy.lockfiles_dir, lock.parent.recipe)
            update["parent"] = lock.parent.model_copy(
                update={"lockfile_sha256": file_sha256(parent_lock)}
            )
        write_lockfile(
            lockfile_path(copy.lockfiles_dir, loaded.recipe.name), lock.model_copy(update=update)
        )
    return copy


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compression", choices=["zstd", "gzip"])
    parser.add_argument("recipes", nargs="*")
    args = parser.parse_args(argv)
    config = load_config()
    cache = Cache(config.cache_dir)
    with contextlib.ExitStack() as stack:
        if args.compression:
            os.environ["BASEKILN_CACHE"] = str(config.cache_dir)
            project = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
            config = with_compression(config, args.compression, project)
            print(f"every recipe with compression: {args.compression}, in {project}")
        return run(config, cache, args.recipes)


def run(config: Config, cache: Cache, names: list[str]) -> int:
    selection = load_selection(names, config.recipes_dir)
    print(
        f"{'recipe':21} {'single':>7} {'double':>7} {'+tests':>7} {'mmdebstrap':>10} "
        f"{'ratio':>6} {'layers':>6} {'compressed':>12}"
    )
    print(f"sandboxes and mmdebstrap in {sandbox_root()}")
    for loaded in selection:
        name = loaded.recipe.name
        # Parents are built (or reused) first, so that only this image is timed.
        built = {
            r.recipe: r for r in build_recipes(config, [name], BuildOptions(show_progress=False))
        }
        parent = built.get(loaded.recipe.parent) if loaded.recipe.parent else None
        start = time.monotonic()
        options = BuildOptions(force=True, show_progress=False)
        result = build_one(config, loaded, selection, parent, options)
        with_tests = time.monotonic() - start
        single = build_single(config, name)
        lock = read_lockfile(lockfile_path(config.lockfiles_dir, name))
        packages = [(p.name, p.version, p.architecture, p.sha256) for p in lock.packages]
        reference = mmdebstrap_seconds(cache, packages)
        image = read_image(Path(result.oci_layout), result.platform)
        size = sum(layer.size for layer in image.layers)
        ratio = f"{result.seconds / reference:.2f}" if reference else "-"
        ref_text = f"{reference:.1f}s" if reference else "n/a"
        print(
            f"{name:21} {single.seconds:6.1f}s {result.seconds:6.1f}s {with_tests:6.1f}s "
            f"{ref_text:>10} {ratio:>6} {len(image.layers):>6} {size:>12,}"
        )
    print("ratio = double build / mmdebstrap; the goal is <= 1.00")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
