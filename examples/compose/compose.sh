#!/bin/sh
# Compose as this machine has it: the plugin (`docker compose`) where it works, else the
# standalone `docker-compose` (Debian's package). The plan's hooks run it.
if docker compose version >/dev/null 2>&1; then
    exec docker compose "$@"
else
    exec docker-compose "$@"
fi
