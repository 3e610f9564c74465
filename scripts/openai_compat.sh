#!/usr/bin/env bash
# `pixlm serve` against the official `openai` Python package: creates a venv (reused from
# $PIXLM_VENV or target/openai-venv), installs openai, starts the server on a free port with
# the neo-tiny fixture model and runs scripts/openai_compat.py. .ci/run calls it after the tests.
# Usage: scripts/openai_compat.sh [path/to/pixlm]   (default: target/release/pixlm)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/pixlm}
fixtures=${PIXLM_FIXTURES:-../shared/fixtures}
model=$fixtures/neo-tiny/model
venv=${PIXLM_VENV:-target/openai-venv}
[ -x "$bin" ] || { echo "no $bin: run cargo build --release first" >&2; exit 1; }
[ -f "$model/config.json" ] || { echo "no fixture model at $model" >&2; exit 1; }
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "openai>=1.40"
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export PIXLM_API_KEY=openai-compat-key
log=$(mktemp)
"$bin" serve --model "$model" --port "$port" --served-model-name neo-tiny >"$log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 100); do
  grep -q listening "$log" && break
  kill -0 $pid 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.1
done
PIXLM_URL="http://127.0.0.1:$port/v1" PIXLM_PNG="$fixtures/neo-tiny/cases/single_image/image_1.png" \
  "$venv/bin/python" scripts/openai_compat.py
