#!/usr/bin/env bash
# Offline install of SGLang 0.5.23's Python sources (parallel-state use) into a target dir.
# Test scaffolding for `memprobe ... --engine sglang` on machines without SGLang (see NOTES.md).
# usage: bash tools/sglang_offline/install.sh [PYTHON] [TARGET] [WHEEL_DIR]
#   PYTHON    default: python3            TARGET default: /tmp/sgl-site
#   WHEEL_DIR default: $SGLANG_OFFLINE_DATA/wheels-cp312, the data folder defaulting to .sglang/ (git-ignored)
# The target gets SGLang's sources, the wheels, the sgl_kernel stand-in, the shim and a sitecustomize.py
# that installs the shim's stand-ins at interpreter start-up; put the target on PYTHONPATH.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"; DATA="${SGLANG_OFFLINE_DATA:-$HERE/../../.sglang}"
PY="${1:-python3}"
T="${2:-/tmp/sgl-site}"
W="${3:-$DATA/wheels-cp312}"
mkdir -p "$T"
"$PY" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check \
  --target "$T" --upgrade "$W"/*.whl
tar -xJf "$DATA/sglang-src.tar.xz" -C "$T"
cp -r "$HERE/sgl_kernel" "$T/"
cp "$HERE/sglang_parallel_shim.py" "$HERE/sitecustomize.py" "$T/"
echo "export PYTHONPATH=$T\${PYTHONPATH:+:\$PYTHONPATH}"
