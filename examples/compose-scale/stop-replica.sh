#!/bin/sh
# Removes the replica of "backend" whose address is $SHIFT_SERVER (IP:PORT). Works with the
# Compose plugin (`docker compose`) and with the standalone `docker-compose`.
set -eu
compose() {
    if docker compose version >/dev/null 2>&1; then docker compose "$@"; else docker-compose "$@"; fi
}
ip=${SHIFT_SERVER%:*}
for id in $(compose ps -q backend); do
    if [ "$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$id")" = "$ip" ]; then
        docker rm -f "$id"
    fi
done
