#!/usr/bin/env bash
# Installs what CEMA needs at run time, from package registries only. Idempotent: a second run
# checks and returns in a second.
#
#   ONNX Runtime  libonnxruntime.so from the PyPI wheel onnxruntime==$ORT_VERSION -> .ort/lib
#                 (ort loads it at run time; .cargo/config.toml points ORT_DYLIB_PATH at it)
#   Fashion-MNIST Debian package dataset-fashion-mnist -> /usr/share/datasets/fashion-mnist
#
# Environment: ORT_VERSION (default 1.31.1), CEMA_SKIP_DATASET=1 to skip the dataset.
set -euo pipefail

ORT_VERSION="${ORT_VERSION:-1.31.1}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ort_dir="$root/.ort/lib"
ort_lib="$ort_dir/libonnxruntime.so.$ORT_VERSION"
dataset_dir=/usr/share/datasets/fashion-mnist

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

install_ort() {
  if [ -f "$ort_lib" ] && [ -L "$ort_dir/libonnxruntime.so" ]; then
    say "ONNX Runtime $ORT_VERSION present in .ort/lib"
    return
  fi
  command -v python3 >/dev/null || die "python3 (with pip) is needed to fetch the onnxruntime wheel from PyPI"
  local arch tmp wheel
  arch="$(uname -m)"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' RETURN
  say "downloading onnxruntime==$ORT_VERSION wheel ($arch) from PyPI"
  # The shared library is the same for every Python version; pin one so the host's Python
  # version does not matter.
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.11 --implementation cp --platform "manylinux_2_28_$arch" \
    "onnxruntime==$ORT_VERSION" -d "$tmp" \
    || die "pip could not download onnxruntime==$ORT_VERSION for $arch"
  wheel="$(ls "$tmp"/onnxruntime-*.whl)"
  mkdir -p "$ort_dir"
  python3 - "$wheel" "$ort_dir" <<'PY'
import sys, zipfile, pathlib
wheel, out = sys.argv[1], pathlib.Path(sys.argv[2])
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith("onnxruntime/capi/libonnxruntime.so.")]
    if not names:
        sys.exit("no libonnxruntime.so.* in " + wheel)
    for n in names:
        (out / pathlib.Path(n).name).write_bytes(z.read(n))
PY
  ln -sf "libonnxruntime.so.$ORT_VERSION" "$ort_dir/libonnxruntime.so"
  [ -f "$ort_lib" ] || die "the wheel did not contain libonnxruntime.so.$ORT_VERSION"
  say "ONNX Runtime $ORT_VERSION installed in .ort/lib"
}

install_dataset() {
  if [ "${CEMA_SKIP_DATASET:-0}" = 1 ]; then
    say "skipping Fashion-MNIST (CEMA_SKIP_DATASET=1)"
    return
  fi
  if [ -f "$dataset_dir/t10k-images-idx3-ubyte.gz" ] && [ -f "$dataset_dir/train-images-idx3-ubyte.gz" ]; then
    say "Fashion-MNIST present in $dataset_dir"
    return
  fi
  if ! command -v apt-get >/dev/null; then
    die "Fashion-MNIST is missing and apt-get is unavailable: install Debian's dataset-fashion-mnist, or copy its IDX files into a folder and set CEMA_FASHION_MNIST_DIR"
  fi
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  say "installing Debian package dataset-fashion-mnist"
  $sudo apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null \
    || die "apt-get install dataset-fashion-mnist failed"
  say "Fashion-MNIST installed in $dataset_dir"
}

install_ort
install_dataset
