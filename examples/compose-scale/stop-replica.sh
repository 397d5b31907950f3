#!/bin/sh
# Removes the replica of "backend" whose address is $SHIFT_SERVER (IP:PORT).
set -eu
ip=${SHIFT_SERVER%:*}
for id in $(docker compose ps -q backend); do
    if [ "$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$id")" = "$ip" ]; then
        docker rm -f "$id"
    fi
done
