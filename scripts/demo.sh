#!/usr/bin/env bash
# Sets up what is missing, builds, and runs the demo: Nginx with the module in front of two demo
# backends, blue and green. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

# Same flags as scripts/test.sh, so both share one build of the vendored Nginx.
cargo build --workspace --all-targets --quiet
# Run the binary itself: `cargo run --bin demo` alone would unify features differently and
# build the vendored Nginx a second time.
exec target/debug/demo "$@"
