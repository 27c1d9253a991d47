"""Publish benchmark: what evidence and publishing cost next to the build they follow.

For each recipe (default: static) whose `out/<recipe>/build.json` exists, publish the
built image to a throwaway local registry with a throwaway cosign key, and print the
wall time of each stage: SBOM (syft scan and cross-check), provenance (the three
in-toto Statements), signing (three DSSE signatures with `cosign sign-blob` and the
image signature with `cosign sign`), push (image blobs and manifest, the `.att`
manifest), verification (stock `cosign verify` and `verify-attestation` of each type)
and tagging. Each is also given as a share of the whole pipeline: the build's own
seconds from build.json, plus evidence, plus publishing. A second publish of the same
digest shows the cost of a reused (already signed) image.

    .venv/bin/basekiln build static     # if out/static/build.json is missing
    .venv/bin/python bench/publish.py [RECIPE...]

The goal: evidence and publishing together cost less than one build.
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

from basekiln import _cosign
from basekiln._registry_server import RegistryServer
from basekiln.config import load_config
from basekiln.publish import Signing, publish
from basekiln.results import BuildResult

STAGES = ("sbom", "provenance", "signing", "push", "verify", "check", "tag")


def bench(name: str, build_json: Path, host: str, signing: Signing) -> None:
    config = load_config()
    result = BuildResult.read(build_json)
    start = time.monotonic()
    published = publish(config, result, f"{host}/bench/{name}", signing)
    total = time.monotonic() - start
    again_start = time.monotonic()
    again = publish(config, result, f"{host}/bench/{name}", signing)
    again_total = time.monotonic() - again_start
    assert again.reused, "the second publish of one digest must reuse the first"

    pipeline = result.seconds + total
    single = max((b.seconds for b in result.builds), default=result.seconds)
    print(f"{name}: {published.image}")
    print(f"  {'stage':28} {'seconds':>8} {'share':>7}")
    build = result.seconds
    print(f"  {'build (build.json, double)':28} {build:8.2f} {_share(build, pipeline)}")
    for stage in STAGES:
        seconds = published.seconds.get(stage, 0.0)
        print(f"  {stage:28} {seconds:8.2f} {_share(seconds, pipeline)}")
    other = total - sum(published.seconds.values())
    print(f"  {'other (config, image read)':28} {other:8.2f} {_share(other, pipeline)}")
    print(f"  {'evidence + publish':28} {total:8.2f} {_share(total, pipeline)}")
    print(f"  {'whole pipeline':28} {pipeline:8.2f} {_share(pipeline, pipeline)}")
    print(f"  second publish (reused):     {again_total:8.2f}")
    verdict = "met" if total < single else "NOT met"
    print(
        f"  goal evidence+publish < one build: {total:.2f}s vs {single:.2f}s for the slower "
        f"sandbox build ({result.seconds:.2f}s for the double build): {verdict}"
    )


def _share(seconds: float, whole: float) -> str:
    return f"{100 * seconds / whole:6.1f}%" if whole else "     -"


def main(names: list[str]) -> int:
    config = load_config()
    names = names or ["static"]
    missing = [n for n in names if not (config.root / "out" / n / "build.json").is_file()]
    if missing:
        print(f"no build.json for {', '.join(missing)}; run `.venv/bin/basekiln build "
              f"{' '.join(missing)}` first", file=sys.stderr)  # fmt: skip
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-publish-") as tmp:
        os.environ[_cosign.PASSWORD_ENV] = secrets.token_urlsafe(12)
        for variable in ("BASEKILN_REGISTRY_USERNAME", "BASEKILN_REGISTRY_PASSWORD"):
            os.environ.pop(variable, None)
        keys = _cosign.generate_key_pair(Path(tmp) / "keys")
        signing = Signing(signer=str(keys.private_key), verifier=keys.public_key)
        with RegistryServer(Path(tmp) / "registry") as registry:
            for name in names:
                bench(name, config.root / "out" / name / "build.json", registry.host, signing)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
