#!/bin/sh
# Starts one more replica of "backend" with the current $BACKEND_IMAGE, keeping the others.
set -eu
running=$(docker compose ps -q backend | wc -l)
docker compose up -d --no-deps --no-recreate --scale "backend=$((running + 1))" backend
