#!/usr/bin/env bash
# Sets up what is missing, builds Nginx (vendored, once) and the module, and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian's own Nginx and its configured source, to test the module in the Nginx people run;
# wrk and HAProxy for the smoke pass of the load benchmarks; dnsmasq for name re-resolution;
# etcd (server and etcdctl) and openssl (a test CA for etcd's mutual TLS) for the fleet tests;
# Docker and docker-compose for the Compose examples on a real engine.
source scripts/docker-for-tests.sh
# shellcheck disable=SC2046
# chromium: the status page is loaded and checked in a real (headless) browser.
source scripts/setup.sh nginx nginx-dev wrk haproxy dnsmasq-base etcd-server etcd-client openssl chromium \
  iptables $(docker_packages)

# The module's .so is what the integration tests load; build it (and everything else) first.
cargo build --workspace --all-targets --quiet

log=$(mktemp)
trap 'rm -f "$log"; docker_down' EXIT
docker_up
status=0
# --all-targets: unit and integration tests, plus the benchmarks in test mode (criterion runs
# each once; benches/load.rs runs its smoke pass). There are no doc tests.
cargo test --workspace --all-targets 2>&1 | tee "$log" || status=$?

# The name churn (a name's address replaced 200 times, about 2 s each) mostly waits on DNS: its
# test binary runs beside the runs against the other Nginx builds below, and joins the log at
# the end.
churn_log=$(mktemp)
membership=$(cargo test --test membership --no-run 2>&1 |
  sed -n 's/.*Executable tests\/membership.rs (\(.*\))/\1/p')
("$membership" --ignored --exact a_name_rotated_through_hundreds_of_addresses_keeps_exactly_its_one_peer \
  >"$churn_log" 2>&1; echo $? >"$churn_log.status") &
churn=$!

# The Compose examples on a real Docker engine (five rolling deploys, about a minute each,
# mostly waiting on Docker's DNS and health checks): beside the runs below too.
docker_log=$(mktemp)
(cargo test --test compose_docker -- --ignored >"$docker_log" 2>&1; echo $? >"$docker_log.status") &
docker_tests=$!

# The release shiftctl that scripts/package.sh packages takes minutes to compile: build it from
# here on, at low priority and in its own target directory, beside the runs below against other
# Nginx builds, which mostly wait on sockets. Not earlier: the canary tests above judge latency,
# and a compile beside them makes it noisy. package.sh waits for it (cargo's lock).
export SHIFTCTL_TARGET_DIR=$PWD/target/package-cli
(nice -n 10 cargo build --release -p shiftctl --quiet --target-dir "$SHIFTCTL_TARGET_DIR" \
  >target/package-cli.log 2>&1 || true) &

# The same module built for Debian's Nginx (1.22), loaded into /usr/sbin/nginx: the tests of
# weights, the API, health checks, membership and the directives again (the membership churns
# at a fifth of their length, and without the debug builds' test hooks: these are release).
if module=$(scripts/build-for-system-nginx.sh); then
  echo "--- again against $(/usr/sbin/nginx -v 2>&1) with $module ---"
  SHIFT_NGINX=/usr/sbin/nginx SHIFT_MODULE=$module SHIFT_TEST_CHURN=0.2 \
    cargo test --no-fail-fast --workspace --test runtime_weights --test health_checks \
    --test foundation --test metrics --test lifecycle --test sticky --test membership \
    --test api_many_upstreams --test runtime_peers --test resolve --test slow_start --test eject --test drain_close --test status_page --test history --test api_threads \
    -- --include-ignored --skip unreadable_proc_entries --skip a_worker_without_a_record --skip a_delete_while_a_worker_builds_its_list --skip threads_answer_while_the_workers_event_loop_is_stalled --skip a_worker_killed_while_its_api_thread_holds 2>&1 \
    | tee -a "$log" || status=$?
else
  echo "could not build the module for the system Nginx" >&2
  status=1
fi

# nginx.org's stable and mainline sources, where the machine has them (CI does): each built
# once --with-compat, with the module built against it, and the integration tests again.
shopt -s nullglob
for tarball in ../shared/nginx-src/nginx-*.tar.gz; do
  scripts/test-against-nginx.sh "$tarball" 2>&1 | tee -a "$log" || status=$?
done
shopt -u nullglob

# The Debian packages: built by scripts/package.sh, then checked. Installing them touches this
# machine's own Nginx (/etc/nginx, a reload trigger), so that test runs only in CI or on request.
if scripts/package.sh >/dev/null; then
  package_tests=(--ignored)
  if [[ ${CI:-} == true || ${SHIFT_TEST_INSTALL:-} == 1 ]]; then
    echo "--- packages: contents, and installed, used, removed and purged with dpkg ---"
  else
    echo "--- packages: contents only (SHIFT_TEST_INSTALL=1 also installs and purges them) ---"
    package_tests+=(--skip installs_serves_removes_and_purges)
  fi
  nginx_org=
  if nginx_org_source=$(scripts/nginx-org-source.sh) && [[ -n $nginx_org_source ]]; then
    nginx_org=$(scripts/build-for-nginx-source.sh "$nginx_org_source" --release | sed -n 1p)
  else
    echo "--- no nginx.org source in ../shared/nginx-src: no nginx.org package to test ---"
    package_tests+=(--skip nginx_org_module_serves_in_its_nginx)
  fi
  SHIFT_PACKAGES=$PWD/target/packages SHIFT_NGINX_ORG=$nginx_org \
    cargo test --test packages -- "${package_tests[@]}" 2>&1 | tee -a "$log" || status=$?
else
  echo "could not build the packages" >&2
  status=1
fi

wait "$docker_tests" || true
echo "--- the Compose examples on Docker (tests/compose_docker.rs, ignored above) ---"
tee -a "$log" <"$docker_log"
[[ $(cat "$docker_log.status" 2>/dev/null) == 0 ]] || status=1
rm -f "$docker_log" "$docker_log.status"

wait "$churn" || true
echo "--- the name churn (tests/membership.rs, ignored above) ---"
tee -a "$log" <"$churn_log"
[[ $(cat "$churn_log.status" 2>/dev/null) == 0 ]] || status=1
rm -f "$churn_log" "$churn_log.status"

# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "all tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
