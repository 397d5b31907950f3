#!/usr/bin/env bash
# Builds an Nginx from source --with-compat and the module against it (once, reused:
# scripts/build-for-nginx-source.sh), and runs the integration tests with that pair.
#
#   scripts/test-against-nginx.sh ../shared/nginx-src/nginx-1.30.4.tar.gz
set -euo pipefail
cd "$(dirname "$0")/.."

source_path=${1:?usage: scripts/test-against-nginx.sh NGINX_TARBALL_OR_SOURCE_TREE}
# Release, as packaged: scripts/package.sh reuses this build for the nginx.org package.
built=$(scripts/build-for-nginx-source.sh "$source_path" --release)
nginx=$(sed -n 1p <<<"$built")
module=$(sed -n 2p <<<"$built")

echo "--- integration tests against $("$nginx" -v 2>&1) ($nginx) ---"
# The membership churns (the ignored name churn included) at a fifth of their length, without
# the debug builds' test hooks (this module is a release build).
SHIFT_NGINX=$nginx SHIFT_MODULE=$module SHIFT_TEST_CHURN=${SHIFT_TEST_CHURN:-0.2} \
  cargo test --no-fail-fast --workspace --test runtime_weights --test health_checks --test foundation \
  --test metrics --test lifecycle --test sticky --test membership --test api_many_upstreams \
  --test runtime_peers --test resolve --test slow_start --test eject --test drain_close --test status_page --test history --test api_threads \
  -- --include-ignored --skip unreadable_proc_entries --skip a_worker_without_a_record --skip a_delete_while_a_worker_builds_its_list --skip threads_answer_while_the_workers_event_loop_is_stalled --skip a_worker_killed_while_its_api_thread_holds
