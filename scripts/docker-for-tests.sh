# Docker for the Compose tests (tests/compose_docker.rs), sourced by test.sh: the engine and
# docker-compose where they are missing, a daemon started when none runs (and stopped at the
# end), loopback left untracked by the kernel's connection tracking while the tests run, and the
# test images removed at the end. Without root and without a running daemon the tests print why
# they skip; in CI they must run.

# The packages to install: Debian's engine only where no dockerd is installed (Docker's own
# docker-ce conflicts with it), docker-compose only where no Compose command works.
docker_packages() {
  command -v dockerd >/dev/null || echo docker.io
  if ! command -v docker-compose >/dev/null && ! docker compose version >/dev/null 2>&1; then
    echo docker-compose
  fi
}

docker_started=
loopback_untracked=

docker_up() {
  if ! docker info >/dev/null 2>&1 && [[ $(id -u) == 0 ]] && command -v dockerd >/dev/null; then
    echo "--- starting dockerd for the Compose tests (stopped at the end) ---"
    dockerd >target/dockerd.log 2>&1 &
    docker_started=$!
    for _ in $(seq 100); do
      docker info >/dev/null 2>&1 && break
      sleep 0.2
    done
  fi
  # Docker's firewall rules make the kernel track every connection, loopback too, for two
  # minutes after it closes. The tests open tens of thousands a minute on 127.0.0.1; a full
  # table drops packets ("nf_conntrack: table full") and tests fail for nothing the module did.
  # Loopback is left untracked while the tests run (Docker needs no tracking on it).
  if [[ -e /proc/sys/net/netfilter/nf_conntrack_max && $(id -u) == 0 ]] &&
     command -v iptables >/dev/null && ! iptables -t raw -C OUTPUT -o lo -j NOTRACK 2>/dev/null; then
    iptables -t raw -I OUTPUT -o lo -j NOTRACK &&
      iptables -t raw -I PREROUTING -i lo -j NOTRACK &&
      loopback_untracked=1
  fi
}

docker_down() {
  if docker info >/dev/null 2>&1; then
    images=$(docker image ls -q --filter label=nginx-shift-test)
    [[ -z $images ]] || docker rmi -f $images >/dev/null 2>&1 || true
  fi
  if [[ -n $docker_started ]]; then
    kill "$docker_started" 2>/dev/null || true
    wait "$docker_started" 2>/dev/null || true
  fi
  if [[ -n $loopback_untracked ]]; then
    iptables -t raw -D OUTPUT -o lo -j NOTRACK 2>/dev/null || true
    iptables -t raw -D PREROUTING -i lo -j NOTRACK 2>/dev/null || true
  fi
}
