#!/usr/bin/env bash
# Makes a Debian bookworm base image without a registry: debootstrap (minbase) into a folder,
# trim what a runtime never reads, `docker import`. Idempotent: an existing image is kept.
#
#   bash docker/base.sh [image]      default image: cema-base:bookworm
#
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

image="${1:-cema-base:bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
say() { printf 'base: %s\n' "$*"; }

if docker image inspect "$image" >/dev/null 2>&1; then
  say "$image present"
  exit 0
fi
if ! command -v debootstrap >/dev/null; then
  say "installing debootstrap (Debian package)"
  if ! apt-get install -y -qq debootstrap >/dev/null 2>&1; then
    apt-get update -qq >/dev/null && apt-get install -y -qq debootstrap >/dev/null
  fi
fi
root="$(mktemp -d /var/tmp/cema-base.XXXXXX)"
trap 'rm -rf "$root"' EXIT
say "debootstrap --variant=minbase bookworm from $mirror"
# libstdc++6 is what ONNX Runtime needs beyond minbase.
debootstrap --variant=minbase --include=libstdc++6 bookworm "$root" "$mirror" >"$root.log" 2>&1 || {
  tail -20 "$root.log" >&2
  exit 1
}
rm -f "$root.log"
# Nothing at run time reads documentation, translations or package lists.
rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
  "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb "$root"/var/log/*
tar -C "$root" -c . | docker import --change 'CMD ["/bin/bash"]' - "$image" >/dev/null
say "$image imported ($(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}'))"
