#!/usr/bin/env bash
# Owns running the browser end-to-end suite: checks Chromium, installs the pinned node deps,
# builds natter (unless NATTER_BIN is set) and runs every *.test.mjs serially with node:test.
set -euo pipefail
cd "$(dirname "$0")"

CHROMIUM_BIN="${CHROMIUM_BIN:-/usr/bin/chromium}"
if [[ ! -x "$CHROMIUM_BIN" ]]; then
  echo "run.sh: $CHROMIUM_BIN is missing: apt-get install chromium" >&2
  exit 1
fi
command -v node >/dev/null || { echo "run.sh: node (20+) is required" >&2; exit 1; }

if [[ ! -d node_modules || package-lock.json -nt node_modules ]]; then
  npm ci --no-audit --no-fund
  touch node_modules
fi

if [[ -z "${NATTER_BIN:-}" ]]; then
  (cd ../.. && cargo build --bin natter)
fi

files=("$@")
if [[ ${#files[@]} -eq 0 ]]; then
  files=(*.test.mjs)
fi
# A backstop per test; each test also bounds its own waits.
exec node --test --test-concurrency=1 --test-timeout=300000 "${files[@]}"
