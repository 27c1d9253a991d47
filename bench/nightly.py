"""Nightly benchmark: the whole catalogue, cold, then again with nothing changed.

A copy of this repository's catalogue (basekiln.toml, recipes/, lockfiles/ and the
programs the recipes' tests mount) goes to a scratch project with an empty cache, an
empty `out/`, a fresh local registry, a fresh cosign key and a fresh Prefect home.
`basekiln nightly` then runs twice as a user runs it, each time in a new process with
no Prefect server configured, so each pays Prefect's own start-up (a temporary local
server):

- cold: re-lock against Debian's archive (network), fetch every .deb, build each image
  twice, test, SBOM, provenance, push, sign, verify;
- warm: nothing changed, so each image is only checked against the registry.

The goal for the warm run is under 30 s for the whole catalogue. The repository's own
lockfiles, cache and out/ are not touched.

    .venv/bin/python bench/nightly.py [--keep] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from basekiln import _cosign
from basekiln._registry_server import RegistryServer

REPO = Path(__file__).resolve().parent.parent
WARM_GOAL_SECONDS = 30.0
# Runs `basekiln` with the orchestration commands registered, whether or not cli.py
# registers them itself yet.
LAUNCHER = """\
import sys
from basekiln import cli, cli_flows
for command in (cli_flows.rebuild, cli_flows.nightly_command, cli_flows.promote, cli_flows.new):
    if command.name not in cli.cli.commands:
        cli.cli.add_command(command)
sys.exit(cli.main())
"""


def scratch_project(root: Path) -> Path:
    project = root / "project"
    project.mkdir()
    shutil.copy2(REPO / "basekiln.toml", project / "basekiln.toml")
    shutil.copytree(REPO / "recipes", project / "recipes")
    shutil.copytree(REPO / "lockfiles", project / "lockfiles")
    # Recipe command tests mount programs from here, relative to recipes/.
    programs = REPO / "tests" / "fixtures" / "programs"
    if programs.is_dir():
        shutil.copytree(programs, project / "tests" / "fixtures" / "programs")
    return project


def run_nightly(project: Path, env: dict[str, str], staging: str, key: Path) -> dict[str, Any]:
    argv = [sys.executable, "-c", LAUNCHER, "nightly", "--registry", staging, "--key", str(key)]
    started = time.monotonic()
    done = subprocess.run(
        [*argv, "--json"], cwd=project, env=env, capture_output=True, text=True, check=False
    )
    seconds = time.monotonic() - started
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-6000:])
        raise SystemExit(f"nightly exited {done.returncode}")
    report: dict[str, Any] = json.loads(done.stdout)
    return {
        "seconds": round(seconds, 1),
        "statuses": {i["recipe"]: i["status"] for i in report["images"]},
        "image_seconds": {i["recipe"]: i["seconds"] for i in report["images"]},
        "flow_seconds": report["run"]["seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="Keep the scratch folder.")
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="basekiln-bench-nightly-"))
    try:
        project = scratch_project(scratch)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PREFECT_", "BASEKILN_")) and k != _cosign.PASSWORD_ENV
        }
        env |= {
            "BASEKILN_CACHE": str(scratch / "cache"),
            "PREFECT_HOME": str(scratch / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            _cosign.PASSWORD_ENV: "",
        }
        keys = _cosign.generate_key_pair(scratch / "keys", env=env)
        with RegistryServer(scratch / "registry") as registry:
            staging = f"{registry.host}/bench"
            cold = run_nightly(project, env, staging, keys.private_key)
            warm = run_nightly(project, env, staging, keys.private_key)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)

    result = {
        "images": len(cold["statuses"]),
        "cold": cold,
        "warm": warm,
        "warm_goal_seconds": WARM_GOAL_SECONDS,
        "warm_within_goal": warm["seconds"] < WARM_GOAL_SECONDS,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"catalogue: {result['images']} images ({', '.join(cold['statuses'])})")
    print(
        f"cold nightly:  {cold['seconds']:7.1f} s wall ({cold['flow_seconds']:.1f} s in the flow)"
    )
    for name, status in cold["statuses"].items():
        print(f"  {name:12} {status:10} {cold['image_seconds'][name]:7.1f} s")
    verdict = "within" if result["warm_within_goal"] else "OVER"
    print(
        f"warm nightly:  {warm['seconds']:7.1f} s wall ({warm['flow_seconds']:.1f} s in the "
        f"flow), {verdict} the {WARM_GOAL_SECONDS:.0f} s goal"
    )
    for name, status in warm["statuses"].items():
        print(f"  {name:12} {status:10} {warm['image_seconds'][name]:7.1f} s")
    if scratch.exists():
        print(f"kept {scratch}")


if __name__ == "__main__":
    main()
