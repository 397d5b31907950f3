#!/bin/sh
# Starts one more replica of "backend" with the current $BACKEND_IMAGE, keeping the others.
# Works with the Compose plugin (`docker compose`) and with the standalone `docker-compose`.
set -eu
compose() {
    if docker compose version >/dev/null 2>&1; then docker compose "$@"; else docker-compose "$@"; fi
}
running=$(compose ps -q backend | wc -l)
compose up -d --no-deps --no-recreate --scale "backend=$((running + 1))" backend
