#!/usr/bin/env bash
# Sets up what is missing, builds Nginx (vendored, once) and the module, and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

# The module's .so is what the integration tests load; build it (and everything else) first.
cargo build --workspace --all-targets --quiet

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# --all-targets: unit, integration and bench-smoke tests (there are no doc tests).
cargo test --workspace --all-targets 2>&1 | tee "$log" || status=$?

# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "all tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
