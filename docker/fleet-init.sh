#!/bin/bash
# One-shot preparation of a compose fleet (the `init` service, cloud image, as root): shares
# the built-in models read-only through the `models` volume, registers each edge device with
# the cloud's state and writes its token to the `tokens` volume. Idempotent: registered
# devices with a token are left alone.
#
#   fleet-init DEVICE...
set -euo pipefail
models=/models
tokens=/tokens
data="${CEMA_CLOUD_DATA_DIR:-/var/lib/cema}"
say() { printf 'fleet-init: %s\n' "$*"; }

[ "$#" -gt 0 ] || { say "name the devices to register"; exit 2; }
cp -u /opt/cema/models/*.onnx /opt/cema/models/*.toml "$models/"
say "built-in models in $models: $(cd "$models" && ls | tr '\n' ' ')"
for device in "$@"; do
  if [ -s "$tokens/$device" ]; then
    say "$device: registered"
    continue
  fi
  cema-cloud --data-dir "$data" device add "$device" >"$tokens/$device.new"
  mv "$tokens/$device.new" "$tokens/$device"
  say "$device: registered, token in $tokens/$device"
done
# The services run as the unprivileged user cema (uid 10001); tokens are readable by it only.
chown -R 10001:10001 "$data" "$tokens"
chmod 0400 "$tokens"/*
