#!/usr/bin/env bash
# Builds llama.cpp's llama-bench and llama-quantize from the source that the llama-cpp-python
# package on PyPI vendors, for `pixlm bench --vs-llama-cpp`.
#
#   scripts/build_llama_cpp.sh [DIR]     (default: ~/.cache/pixlm/llama.cpp)
#
# DIR gets: venv/ (cmake and ninja from PyPI, so no system cmake is needed), the sdist, its
# unpacked source, and bin/ with the two tools. Native CPU flags (GGML_NATIVE), as pixlm's own
# build uses target-cpu=native. Set LLAMA_CPP_PYTHON_VERSION to pin another release, and
# LLAMA_CPP_MARCH (e.g. znver3) to build for that CPU instead of this one (to compare with a
# pixlm built with RUSTFLAGS="-C target-cpu=znver3"; use its own DIR).
set -euo pipefail
DIR="${1:-${PIXLM_LLAMA_CPP_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pixlm/llama.cpp}}"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
mkdir -p "$DIR"
cd "$DIR"
if [ ! -x venv/bin/cmake ] || [ ! -x venv/bin/ninja ]; then
  python3 -m venv venv
  venv/bin/pip install --quiet --only-binary :all: cmake ninja
fi
SDIST="llama_cpp_python-$VERSION.tar.gz"
if [ ! -f "sdist/$SDIST" ]; then
  mkdir -p sdist
  # The sdist's address from PyPI's JSON API (pip download would build its build-time
  # dependencies from source first). The project document, not the per-version one: some
  # mirrors serve only the former.
  URL=$(python3 - "$VERSION" <<'PY'
import json, sys, urllib.parse, urllib.request
api = "https://pypi.org/pypi/llama-cpp-python/json"
meta = json.load(urllib.request.urlopen(api))
for f in meta["releases"].get(sys.argv[1], []):
    if f["packagetype"] == "sdist":
        print(urllib.parse.urljoin(api, f["url"]))
        break
else:
    sys.exit("no sdist for llama-cpp-python " + sys.argv[1])
PY
)
  echo "downloading $URL"
  curl -fL --retry 3 -o "sdist/$SDIST.part" "$URL"
  mv "sdist/$SDIST.part" "sdist/$SDIST"
fi
SRC="llama_cpp_python-$VERSION/vendor/llama.cpp"
[ -d "$SRC" ] || tar xzf "sdist/$SDIST"
export PATH="$DIR/venv/bin:$PATH"
CPU_FLAGS=(-DGGML_NATIVE=ON)
if [ -n "${LLAMA_CPP_MARCH:-}" ]; then
  CPU_FLAGS=(-DGGML_NATIVE=OFF "-DCMAKE_C_FLAGS=-march=$LLAMA_CPP_MARCH"
    "-DCMAKE_CXX_FLAGS=-march=$LLAMA_CPP_MARCH")
fi
cmake -S "$SRC" -B "$SRC/build" -G Ninja -DCMAKE_BUILD_TYPE=Release "${CPU_FLAGS[@]}" \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=OFF >/dev/null
ninja -C "$SRC/build" llama-bench llama-quantize
mkdir -p bin
# The tools and the shared libraries beside them (they find each other through $ORIGIN).
cp -a "$SRC"/build/bin/* bin/
echo "llama.cpp $VERSION built: $DIR/bin/llama-bench, $DIR/bin/llama-quantize"
