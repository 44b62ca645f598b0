#!/usr/bin/env bash
# Offline install of one SGLang release's Python sources (parallel-state use) into a target dir.
# Test scaffolding for `memprobe ... --engine sglang` on machines without SGLang (see NOTES.md).
# usage: bash tools/sglang_offline/install.sh [PYTHON] [TARGET] [RELEASE]
#   PYTHON   default: python3         TARGET default: /tmp/sgl-site
#   RELEASE  default: 0.5.23; one of the folders $DATA/<RELEASE>/ (0.5.10.post1, 0.5.11, 0.5.23)
# Data folder: $SGLANG_OFFLINE_DATA, default .sglang/ at the repo root (git-ignored):
#   $DATA/wheels-cp312/                  wheels every release needs
#   $DATA/wheels-0.5.1x-cp312/           extra wheels for 0.5.10.post1 / 0.5.11 (their longer import chain)
#   $DATA/<RELEASE>/sglang-src.tar.xz    that release's Python sources
#   $DATA/<RELEASE>/wheels-cp312/        extra wheels for that release (optional)
#   $DATA/sgl_kernel-0.4.2-sm90.tar.xz   the real sgl_kernel (sglang-kernel 0.4.2, Hopper ops only)
# sgl_kernel: the REAL one for 0.5.10.post1 / 0.5.11 (their v1 custom all-reduce needs its ops; a stand-in
# makes them silently skip custom all-reduce), the stand-in (tools/sglang_offline/sgl_kernel) for 0.5.23
# (its v2 all-reduce is JIT). Override with SGLANG_OFFLINE_KERNEL=real|standin.
# Wheel folders: SGLANG_OFFLINE_WHEEL_TAG (default cp312) picks wheels-<tag>/; SGLANG_OFFLINE_WHEELS (a
# colon-separated list of folders) replaces both wheel folders (e.g. cp311 wheels for a local test).
# The target gets the sources, the wheels, sgl_kernel, the shim and a sitecustomize.py that installs the
# shim's stand-ins at interpreter start-up; put the target on PYTHONPATH. One target per release.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"; DATA="${SGLANG_OFFLINE_DATA:-$HERE/../../.sglang}"
PY="${1:-python3}"
T="${2:-/tmp/sgl-site}"
REL="${3:-0.5.23}"
TAG="${SGLANG_OFFLINE_WHEEL_TAG:-cp312}"
[ -f "$DATA/$REL/sglang-src.tar.xz" ] || { echo "install.sh: no $DATA/$REL/sglang-src.tar.xz (releases: $(cd "$DATA" && ls -d 0.* 2>/dev/null | tr '\n' ' '))" >&2; exit 2; }
case "$REL" in 0.5.10*|0.5.11*|0.5.12*) OLD=1 ;; *) OLD=0 ;; esac   # pre-runtime_context releases
case "${SGLANG_OFFLINE_KERNEL:-}" in
  real|standin) KERNEL="$SGLANG_OFFLINE_KERNEL" ;;
  "") if [ "$OLD" = 1 ]; then KERNEL=real; else KERNEL=standin; fi ;;
  *) echo "install.sh: SGLANG_OFFLINE_KERNEL must be real or standin" >&2; exit 2 ;;
esac
if [ -n "${SGLANG_OFFLINE_WHEELS:-}" ]; then IFS=: read -r -a WDIRS <<< "$SGLANG_OFFLINE_WHEELS"
else
  WDIRS=("$DATA/wheels-$TAG")
  [ "$OLD" = 1 ] && WDIRS+=("$DATA/wheels-0.5.1x-$TAG")   # openai, distro, partial-json-parser, dill, sentencepiece
  [ -d "$DATA/$REL/wheels-$TAG" ] && WDIRS+=("$DATA/$REL/wheels-$TAG")
fi
WHEELS=(); for d in "${WDIRS[@]}"; do for w in "$d"/*.whl; do [ -f "$w" ] && WHEELS+=("$w"); done; done
if [ -f "$T/SGLANG_OFFLINE_RELEASE" ] && [ "$(cut -d' ' -f1 "$T/SGLANG_OFFLINE_RELEASE")" != "$REL" ]; then
  echo "install.sh: $T holds $(cat "$T/SGLANG_OFFLINE_RELEASE"); use one target per release" >&2; exit 2; fi
rm -rf "$T/sglang" "$T/sgl_kernel"   # re-install of the same release: no stale files
mkdir -p "$T"
"$PY" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check \
  --target "$T" --upgrade "${WHEELS[@]}"
tar -xJf "$DATA/$REL/sglang-src.tar.xz" -C "$T"
if [ "$KERNEL" = real ]; then tar -xJf "$DATA/sgl_kernel-0.4.2-sm90.tar.xz" -C "$T"
else cp -r "$HERE/sgl_kernel" "$T/"; fi
cp "$HERE/sglang_parallel_shim.py" "$HERE/sitecustomize.py" "$T/"
echo "$REL sgl_kernel=$KERNEL" > "$T/SGLANG_OFFLINE_RELEASE"
echo "export PYTHONPATH=$T\${PYTHONPATH:+:\$PYTHONPATH}"
