#!/bin/bash
# One-shot preparation of a compose fleet (the `init` service, cloud image, as root): shares
# the built-in models read-only through the `models` volume, registers each edge device with
# the cloud's state and writes its token to the `tokens` volume, and makes the fleet's TLS
# material in the `tls` volume (`cema-cloud tls init`: a private CA, the cloud's certificate
# for `cloud` and `localhost`, a client certificate per edge and one for the operator).
# Idempotent: registered devices with a token, and existing TLS material, are left alone.
#
#   fleet-init DEVICE...
set -euo pipefail
models=/models
tokens=/tokens
tls=/tls
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
if [ -s "$tls/ca.pem" ]; then
  say "TLS material in $tls: present"
else
  clients=()
  for device in "$@" operator; do clients+=(--client "$device"); done
  cema-cloud tls init --out "$tls" --server-name cloud --server-name localhost "${clients[@]}" >/dev/null
  say "TLS material in $tls: private CA, server certificate, client certificates for $* operator"
fi
# The services run as the unprivileged user cema (uid 10001); tokens and keys are readable by
# it only. The CA's key is not needed by any service: it stays with root.
chown -R 10001:10001 "$data" "$tokens" "$tls"
chown 0:0 "$tls/ca.key"
chmod 0400 "$tokens"/* "$tls"/*.key
