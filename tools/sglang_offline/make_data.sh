#!/usr/bin/env bash
# Rebuild the offline data folder (.sglang/, git-ignored) on a machine with PyPI access.
# usage: bash tools/sglang_offline/make_data.sh [DATA] [PYVER]     DATA default .sglang/, PYVER default 3.12
# Layout written (see NOTES.md):
#   DATA/<release>/sglang-src.tar.xz      for 0.5.10.post1 0.5.11 0.5.23 (Python sources only)
#   DATA/wheels-cp312/                    the wheels every release needs (pinned, 30)
#   DATA/wheels-0.5.1x-cp312/             extra wheels for 0.5.10.post1 / 0.5.11 (5)
#   DATA/sgl_kernel-0.4.2-sm90.tar.xz     real sgl_kernel from sglang-kernel==0.4.2, Hopper ops only
#   DATA/SHA256SUMS
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DATA="${1:-$HERE/../../.sglang}"; PYV="${2:-3.12}"; TAG="cp${PYV/./}"
W="$(mktemp -d)"; trap 'rm -rf "$W"' EXIT
PIP=(python3 -m pip download -q --no-deps --only-binary=:all: --disable-pip-version-check)
PLAT=(--python-version "$PYV" --implementation cp)
for p in manylinux_2_28 manylinux_2_17 manylinux2014 manylinux_2_34 manylinux_2_27 manylinux_2_26 manylinux_2_24 \
         manylinux_2_5 manylinux1 manylinux_2_12 manylinux2010; do PLAT+=(--platform "${p}_x86_64"); done
mkdir -p "$DATA"
for rel in 0.5.10.post1 0.5.11 0.5.23; do
  "${PIP[@]}" --python-version 3.11 -d "$W/sgl-$rel" "sglang==$rel"     # 0.5.11/0.5.23 ship cp311 wheels only
  mkdir -p "$W/x-$rel" "$DATA/$rel"; (cd "$W/x-$rel" && python3 -m zipfile -e "$W"/sgl-"$rel"/*.whl .)
  (cd "$W/x-$rel" && rm -rf sglang/multimodal_gen sglang/test sglang/benchmark && find sglang -name '*.so' -delete \
     && find sglang -name __pycache__ -prune -exec rm -rf {} + && tar -cf - sglang | xz -9e -T0 > "$DATA/$rel/sglang-src.tar.xz")
done
cat > "$W/common.txt" <<'EOF'
aiohappyeyeballs==2.7.1
aiohttp==3.14.5
aiosignal==1.4.0
annotated-types==0.8.0
anyio==4.16.0
apache-tvm-ffi==0.1.11
attrs==26.1.0
certifi==2026.10.19.post1
charset-normalizer==3.5.3
frozenlist==1.8.0
idna==3.20
ipython==9.18.1
msgspec==0.22.0
multidict==7.2.1
orjson==3.13.0
packaging==26.4
propcache==0.5.4
psutil==7.2.2
pybase64==1.5.1
pydantic==2.14.4
pydantic-core==2.50.5
pyzmq==27.3.0
requests==2.34.2
sniffio==1.3.1
starlette==1.10.0
tqdm==4.70.1
traitlets==5.16.1
typing-inspection==0.4.5
urllib3==2.8.0
yarl==1.25.1
EOF
printf 'openai==2.6.1\ndistro==1.9.0\npartial-json-parser==0.2.1.1.post7\ndill==0.4.1\nsentencepiece==0.2.3\n' > "$W/old.txt"
rm -rf "$DATA/wheels-$TAG" "$DATA/wheels-0.5.1x-$TAG"
"${PIP[@]}" "${PLAT[@]}" -d "$DATA/wheels-$TAG" -r "$W/common.txt"
"${PIP[@]}" "${PLAT[@]}" -d "$DATA/wheels-0.5.1x-$TAG" -r "$W/old.txt"
# real sgl_kernel (326 MB wheel) minus flash_ops.abi3.so (1 GB unpacked), flashmla_ops.abi3.so and sm100/:
# the sm90 common_ops (custom all-reduce v1 ops) stay -> Hopper (cc 9.0) only.
"${PIP[@]}" --python-version 3.12 --platform manylinux2014_x86_64 -d "$W/kern" sglang-kernel==0.4.2
mkdir -p "$W/k" && (cd "$W/k" && python3 -m zipfile -e "$W"/kern/*.whl . && rm -rf sgl_kernel/flash_ops.abi3.so \
   sgl_kernel/flashmla_ops.abi3.so sgl_kernel/sm100 && find . -name __pycache__ -prune -exec rm -rf {} + \
   && chmod -R u+rwX,go+rX sgl_kernel && tar -cf - sgl_kernel sglang_kernel-0.4.2.dist-info | xz -9e -T0 > "$DATA/sgl_kernel-0.4.2-sm90.tar.xz")
(cd "$DATA" && find . -type f ! -name SHA256SUMS | sort | xargs sha256sum > SHA256SUMS)
du -sh "$DATA"
