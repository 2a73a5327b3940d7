#!/usr/bin/env bash
# Lays out what a runtime image holds, from a built checkout, into OUT:
#   bin/cema-<kind>, lib/libonnxruntime.so (ONNX Runtime), and
#   cloud: models/ (the built-in student and foundation, ONNX + manifest)
#   edge:  data/fashion-mnist/ (the test set, for the built-in shift scenarios)
# Used by the Dockerfiles' builder stage and by docker/ci.sh (binaries built on the host).
#
#   bash docker/stage.sh cloud|edge OUT
set -euo pipefail
kind="${1:?usage: stage.sh cloud|edge OUT}"
out="${2:?usage: stage.sh cloud|edge OUT}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
case "$kind" in cloud | edge) ;; *) echo "stage: kind must be cloud or edge, not $kind" >&2; exit 2 ;; esac

binary="$root/${CEMA_TARGET_DIR:-target/release}/cema-$kind"
[ -x "$binary" ] || { echo "stage: $binary is missing: cargo build --release --locked -p cema-$kind" >&2; exit 1; }
ort="$(ls "$root"/.ort/lib/libonnxruntime.so.* 2>/dev/null | head -1)"
[ -n "$ort" ] || { echo "stage: no ONNX Runtime in .ort/lib: bash scripts/setup.sh" >&2; exit 1; }

# Empty the folder but keep it (and its .gitkeep): the Dockerfiles' prebuilt stage copies it.
mkdir -p "$out" && find "$out" -mindepth 1 ! -name .gitkeep -delete
mkdir -p "$out/bin" "$out/lib"
cp "$binary" "$out/bin/"
strip --strip-debug "$out/bin/cema-$kind" 2>/dev/null || true
cp "$ort" "$out/lib/"
ln -s "$(basename "$ort")" "$out/lib/libonnxruntime.so"
if [ "$kind" = cloud ]; then
  mkdir -p "$out/models"
  cp "$root"/models/student.onnx "$root"/models/student.toml "$root"/models/foundation.onnx "$root"/models/foundation.toml "$out/models/"
else
  dataset="${CEMA_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}"
  mkdir -p "$out/data/fashion-mnist"
  for f in t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
    [ -f "$dataset/$f" ] || { echo "stage: $dataset/$f is missing: bash scripts/setup.sh" >&2; exit 1; }
    cp "$dataset/$f" "$out/data/fashion-mnist/"
  done
fi
echo "stage: $kind staged in $out ($(du -sh "$out" | cut -f1))"
