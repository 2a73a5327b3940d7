#!/usr/bin/env bash
# The Docker check: builds a Debian base without a registry, runtime images from binaries
# built on the host, starts the compose fleet (one cloud, three edges) and verifies, for real:
#   1. the images' sizes (printed, over the base);
#   2. gRPC is mutual TLS end to end: the operator API answers a client certificate of the
#      fleet's CA, and refuses a plaintext client; Prometheus scrapes the cloud and every edge
#      (all targets up);
#   3. every edge receives parameter updates;
#   4. an edge cut off the network (docker network disconnect) for a while keeps serving,
#      queues its selections, and after reconnecting drains its outbox: the cloud then holds
#      every sample it selected exactly once;
#   5. docker stop of an edge mid-stream is clean (exit 0, outbox drained);
#   6. docker restart of the cloud keeps versions, replay buffers and acknowledged seqs;
#   7. docker stop of the cloud is clean (exit 0) and loses no acknowledged sample.
# Tears everything down after. Exits non-zero on any failed check.
#
#   bash docker/ci.sh
#
# Environment: CEMA_PROFILE=release|debug (which host build to package; default release,
# built if missing), CEMA_KEEP=1 to leave the fleet running for a look. The edges stream
# 3 corruptions × CEMA_SAMPLES_PER_SEGMENT (default here 320) at CEMA_EDGE_FPS (default 16)
# images/s: long enough for the Prometheus check and the outage, short enough for the cloud
# to catch up.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
started=$(date +%s)
profile="${CEMA_PROFILE:-release}"
project="cemaci$$"
export CEMA_SAMPLES_PER_SEGMENT="${CEMA_SAMPLES_PER_SEGMENT:-320}" CEMA_EDGE_FPS="${CEMA_EDGE_FPS:-16}"
# The cloud's admin port on the host's loopback (compose publishes it): any free one.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
CEMA_ADMIN_PORT="$(free_port)"
# Prometheus's API on the host's loopback.
CEMA_PROMETHEUS_PORT="$(free_port)"
export CEMA_ADMIN_PORT CEMA_PROMETHEUS_PORT
base=cema-base:bookworm
cloud_image=cema-cloud:ci
edge_image=cema-edge:ci
prometheus_image=cema-prometheus:ci

say() { printf 'docker-ci: %s\n' "$*"; }
pass() { printf 'docker-ci: PASS %s\n' "$*"; }
fail() {
  printf 'docker-ci: FAIL %s\n' "$*" >&2
  if [ -n "${compose_up:-}" ]; then
    for s in cloud edge-1 edge-2 edge-3 prometheus; do
      printf -- '--- last log lines of %s ---\n' "$s" >&2
      compose logs --no-color --tail 15 "$s" >&2 || true
    done
  fi
  exit 1
}

images() { CEMA_CLOUD_IMAGE=$cloud_image CEMA_EDGE_IMAGE=$edge_image CEMA_PROMETHEUS_IMAGE=$prometheus_image "$@"; }
if command -v docker-compose >/dev/null; then
  compose() { images docker-compose -f docker/compose.yml -p "$project" "$@"; }
elif docker compose version >/dev/null 2>&1; then
  compose() { images docker compose -f docker/compose.yml -p "$project" "$@"; }
else
  fail "neither docker-compose nor docker compose is installed"
fi
docker info >/dev/null 2>&1 || fail "the Docker engine is not reachable"

teardown() {
  if [ "${CEMA_KEEP:-0}" = 1 ]; then
    say "CEMA_KEEP=1: the fleet is left running (project $project)"
    return
  fi
  compose down -v --remove-orphans >/dev/null 2>&1 || true
}
trap teardown EXIT

# --- images -------------------------------------------------------------------------------
bash docker/base.sh "$base"
for kind in cloud edge; do
  if [ ! -x "target/$profile/cema-$kind" ]; then
    flag=$([ "$profile" = release ] && echo --release || true)
    say "building cema-$kind ($profile) on the host"
    cargo build $flag --locked -p "cema-$kind"
  fi
done
for kind in cloud edge; do
  CEMA_TARGET_DIR="target/$profile" bash docker/stage.sh "$kind" "docker/dist/$kind"
  image=$([ "$kind" = cloud ] && echo $cloud_image || echo $edge_image)
  docker build -q -f "docker/$kind.Dockerfile" --target prebuilt --build-arg RUNTIME_IMAGE=$base -t "$image" . >/dev/null \
    || fail "docker build of $image"
done
# Debian's prometheus package on the same base; the layer cache makes a rebuild a no-op.
docker build -q -f docker/prometheus.Dockerfile --build-arg BASE_IMAGE=$base -t "$prometheus_image" . >/dev/null \
  || fail "docker build of $prometheus_image"
base_size=$(docker image inspect -f '{{.Size}}' $base)
mb() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1e6 }'; }
cloud_over=$(( $(docker image inspect -f '{{.Size}}' $cloud_image) - base_size ))
edge_over=$(( $(docker image inspect -f '{{.Size}}' $edge_image) - base_size ))
say "image sizes: base $(mb "$base_size") MB; cloud +$(mb $cloud_over) MB, edge +$(mb $edge_over) MB over the base"
[ "$cloud_over" -lt 250000000 ] || fail "the cloud image is $(mb $cloud_over) MB over the base (target < 250)"
[ "$edge_over" -lt 150000000 ] || fail "the edge image is $(mb $edge_over) MB over the base (target < 150)"
pass "image sizes within targets (cloud < 250 MB, edge < 150 MB over the base)"

# --- helpers ------------------------------------------------------------------------------
cid() { compose ps -q "$1"; }
# GET over the container's loopback with bash's /dev/tcp (the images carry no curl); body only.
# GET inside a container; a fourth argument is sent as a header line. `http_status` prints the
# status code instead of the body.
http_raw() {
  local header=${4:+$4\\r\\n}
  docker exec "$(cid "$1")" bash -c \
    "exec 3<>/dev/tcp/127.0.0.1/$2 && printf 'GET $3 HTTP/1.0\r\nHost: localhost\r\n${header}\r\n' >&3 && cat <&3" \
    | tr -d '\r'
}
http_get() { http_raw "$@" | sed '1,/^$/d'; }
http_status() { http_raw "$@" | awk 'NR == 1 { print $2 }'; }
metric() { http_get "$1" 9091 /metrics | awk -v n="$2" '$1 == n { print $2 }'; }
wait_healthy() {
  local deadline=$(( $(date +%s) + $2 ))
  until [ "$(docker inspect -f '{{.State.Health.Status}}' "$(cid "$1")" 2>/dev/null)" = healthy ]; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "$1 not healthy within $2 s"
    sleep 1
  done
}
summary_of() { compose logs --no-color "$1" | grep -o 'cema-edge: device=.*' | tail -1; }
field() { printf '%s\n' "$1" | tr ' ' '\n' | awk -F= -v k="$2" '$1 == k { print $2 }'; }
operator_token() { docker exec "$(cid cloud)" cat /var/lib/cema/operator.token; }
# The operator's CLI inside the cloud's container, over mutual TLS with the operator's certificate.
operator_cli() {
  docker exec "$(cid cloud)" cema-cloud --data-dir /var/lib/cema "$@" --server https://localhost:50051 \
    --ca-cert /tls/ca.pem --client-cert /tls/operator.pem --client-key /tls/operator.key
}
# Prometheus's view of its scrape targets: "job instance health" lines.
prometheus_targets() {
  python3 - "$CEMA_PROMETHEUS_PORT" <<'PY'
import json, sys, urllib.request
with urllib.request.urlopen("http://127.0.0.1:%s/api/v1/targets" % sys.argv[1], timeout=5) as r:
    for t in json.load(r)["data"]["activeTargets"]:
        print(t["labels"]["job"], t["labels"]["instance"], t["health"])
PY
}
scopes() { http_get cloud 9090 /scopes "Authorization: Bearer $(operator_token)"; }

# --- the fleet ----------------------------------------------------------------------------
say "starting the fleet (project $project)"
compose_up=1
compose up -d >/dev/null 2>&1 || { compose up -d; fail "compose up"; }
wait_healthy cloud 120
for e in edge-1 edge-2 edge-3; do wait_healthy "$e" 60; done
pass "cloud and 3 edges healthy"

# Operators: /scopes needs the operator token; devices are managed on the running cloud, over
# mutual TLS; a plaintext client gets no answer.
[ "$(http_status cloud 9090 /scopes)" = 401 ] || fail "/scopes answered without the operator token"
listed=$(operator_cli device list) || fail "device list through the operator API over mutual TLS"
grep -q '^edge-1 ' <<<"$listed" || fail "the operator API did not list edge-1: $listed"
if timeout 30 docker exec "$(cid cloud)" cema-cloud --data-dir /var/lib/cema device --server http://127.0.0.1:50051 --plaintext list \
  >/dev/null 2>&1; then
  fail "the cloud answered a plaintext client"
fi
pass "gRPC is mutual TLS: the operator API lists the devices for the operator's certificate, refuses plaintext; /scopes needs the operator token"

# Prometheus scrapes the cloud and all three edges while they stream.
deadline=$(( $(date +%s) + 60 ))
until targets=$(prometheus_targets 2>/dev/null) && [ "$(grep -c ' up$' <<<"$targets")" = 4 ]; do
  [ "$(date +%s)" -lt "$deadline" ] || fail "Prometheus does not report its 4 targets up within 60 s:
${targets:-no answer from its API}"
  sleep 2
done
pass "Prometheus reports every target up: $(awk '{ printf "%s%s", sep, $2; sep = ", " }' <<<"$targets")"

# Cut edge-3 off for 25 s while it streams; it keeps predicting and queues its selections.
sleep 5
network="${project}_fleet"
docker network disconnect "$network" "$(cid edge-3)"
say "edge-3 disconnected from $network"
sleep 25
queued=$(metric edge-3 cema_edge_outbox_entries)
served_offline=$(metric edge-3 cema_edge_predictions_total)
docker network connect "$network" "$(cid edge-3)"
say "edge-3 reconnected (it had served ${served_offline:-?} predictions and held ${queued:-?} outbox entries)"
[ "${queued:-0}" -gt 0 ] || fail "edge-3 queued nothing while cut off (outbox entries: ${queued:-none})"
pass "edge-3 kept serving while cut off and queued $queued entries"

# Stop edge-1 mid-stream: it finishes its batch, drains and exits 0.
docker stop -t 60 "$(cid edge-1)" >/dev/null
code=$(docker inspect -f '{{.State.ExitCode}}' "$(cid edge-1)")
[ "$code" = 0 ] || fail "edge-1 exited with $code after docker stop"
pass "docker stop of edge-1 mid-stream: exit 0"

for e in edge-2 edge-3; do
  code=$(docker wait "$(cid "$e")")
  [ "$code" = 0 ] || fail "$e exited with $code"
done
say "edge-2 and edge-3 finished their streams"

# Every edge: updates received; outbox empty; the cloud holds each selected sample once.
state=$(scopes)
declare -A summaries
for e in edge-1 edge-2 edge-3; do
  line=$(summary_of "$e")
  summaries[$e]=$line
  [ -n "$line" ] || fail "$e printed no summary"
  say "$line"
  uploaded=$(field "$line" uploaded)
  batches=$(field "$line" batches)
  [ "$(field "$line" updates_applied)" -gt 0 ] || fail "$e applied no parameter update"
  [ "$(field "$line" outbox_left)" = 0 ] || fail "$e left $(field "$line" outbox_left) entries in its outbox"
  read -r replay acked <<<"$(printf '%s' "$state" | python3 -c '
import json, sys
scope = {s["scope"]: s for s in json.load(sys.stdin)}.get("device:" + sys.argv[1])
print(scope["replay"], scope["devices"][sys.argv[1]]["acked_seq"]) if scope else print("0 0")' "$e")"
  [ "$replay" = "$uploaded" ] || fail "$e selected $uploaded samples; the cloud holds $replay"
  [ "$acked" = $(( uploaded + batches )) ] || fail "$e: acknowledged seq $acked, expected $uploaded samples + $batches batch ends"
  pass "$e: $(field "$line" updates_applied) updates applied (version $(field "$line" params_version)); cloud holds its $uploaded selected samples exactly once, seq $acked acknowledged"
done

# Restart: versions, replay buffers and acknowledged seqs survive. First let the cloud finish:
# every edge's last batch end processed (a remainder under one cloud batch stays queued by
# design, cema-spec) and nothing changing between two reads.
expected_batches="$(for e in edge-1 edge-2 edge-3; do printf '%s=%s ' "$e" "$(field "${summaries[$e]}" batches)"; done)"
settled() {
  printf '%s' "$1" | python3 -c '
import json, sys
want = dict(pair.split("=") for pair in sys.argv[1].split())
scopes = {s["scope"]: s for s in json.load(sys.stdin)}
done = all(scopes.get("device:" + d, {}).get("devices", {}).get(d, {}).get("through_batch") == int(n) for d, n in want.items())
sys.exit(0 if done else 1)' "$expected_batches"
}
deadline=$(( $(date +%s) + 900 ))
before=$(scopes)
until settled "$before" && sleep 5 && [ "$(scopes)" = "$before" ]; do
  [ "$(date +%s)" -lt "$deadline" ] || fail "the cloud did not process every batch within 900 s"
  say "waiting for the cloud to process every batch ($(printf '%s' "$before" | python3 -c '
import json, sys
print(", ".join("%s through batch %d" % (s["scope"], max([d["through_batch"] for d in s["devices"].values()] or [0])) for s in json.load(sys.stdin)))'))"
  sleep 10
  before=$(scopes)
done
docker restart -t 60 "$(cid cloud)" >/dev/null
wait_healthy cloud 120
after=$(scopes)
[ "$before" = "$after" ] || fail "state changed across docker restart:
before: $before
after:  $after"
pass "docker restart of the cloud: versions, replay buffers and acknowledged seqs unchanged ($(printf '%s' "$after" | python3 -c '
import json, sys
print(", ".join("%s v%d replay %d" % (s["scope"], s["version"], s["replay"]) for s in json.load(sys.stdin)))'))"

# Clean stop: exit 0, and the stored state (read offline) equals what was acknowledged.
docker stop -t 60 "$(cid cloud)" >/dev/null
code=$(docker inspect -f '{{.State.ExitCode}}' "$(cid cloud)")
[ "$code" = 0 ] || fail "the cloud exited with $code after docker stop"
offline=$(docker run --rm -v "${project}_cloud-data:/var/lib/cema" $cloud_image params list --json)
[ "$(printf '%s' "$offline" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin), sort_keys=True))')" = \
  "$(printf '%s' "$after" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin), sort_keys=True))')" ] \
  || fail "the state read after docker stop differs from the served one"
pass "docker stop of the cloud: exit 0; the state on disk holds every acknowledged sample"

say "all checks passed in $(( $(date +%s) - started )) s"
