#!/usr/bin/env bash
# Runs every test of the project: Rust unit, integration and doc tests, then
# the browser end-to-end tests in headless Chromium. README.md and .ci/run
# both call exactly this script.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --all-targets
cargo nextest run --workspace --no-fail-fast
cargo test --workspace --doc
# Benchmarks are run by scripts/bench.sh; here they only have to keep compiling.
cargo bench --workspace --no-run

if [ -d tests/browser ]; then
  if [ ! -d node_modules/playwright-core ]; then
    npm ci --no-audit --no-fund
  fi
  node --test --test-concurrency=1 tests/browser/
fi
