#!/usr/bin/env bash
# A persistent local registry for `make registry`: plain HTTP on 127.0.0.1:5000 (or
# $BASEKILN_REGISTRY_PORT), storage under .cache/registry. Idempotent: when a registry
# already answers on the port, it says so and leaves it running.
#   scripts/registry.sh [start|stop|status]
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
python="$root/.venv/bin/python"
[ -x "$python" ] || { echo "registry.sh: run \`make setup\` first" >&2; exit 2; }

exec "$python" -m basekiln._registry_server "${1:-start}" \
  --port "${BASEKILN_REGISTRY_PORT:-5000}" --state-dir "$root/.cache/registry"
