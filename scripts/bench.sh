#!/usr/bin/env bash
# Runs every benchmark in release mode and writes the report to target/bench-report.md:
# criterion's selection benchmark, then the load benchmarks (data path, switch latency,
# zero downtime). Takes about five minutes; not part of the test command (which runs a smoke
# pass of the load benchmarks instead).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh wrk haproxy dnsmasq-base etcd-server etcd-client

cargo build --workspace --release --quiet
report=target/bench-report.md
{
  cargo bench --workspace --bench load -- --bench
  echo "## Peer selection (criterion)"
  echo
  echo '```'
  cargo bench --workspace --bench selection 2>/dev/null | grep -E "^(per_request|copy_after_change)/[0-9]+ +time:"
  echo '```'
} | tee "$report"
echo "report written to $report"
