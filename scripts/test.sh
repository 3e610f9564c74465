#!/usr/bin/env bash
# The test command of the README quick start: unit tests, fixture parity, end-to-end CLI tests,
# the training smoke test and the shipped model's accuracy floor — all in the release profile.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PIXLM_FIXTURES:-}" ] && [ ! -d ../shared/fixtures ]; then
  echo "warning: ../shared/fixtures not found (set PIXLM_FIXTURES); parity tests will be skipped" >&2
fi
cargo test --release --workspace --no-fail-fast -- --test-threads 2
