#!/usr/bin/env bash
# Prints the path of the newest nginx.org stable source (an even minor version, e.g. 1.30.4) in
# ../shared/nginx-src/, or nothing when there is none: what the nginx.org package is built for.
set -euo pipefail
cd "$(dirname "$0")/.."

stable=
for tarball in ../shared/nginx-src/nginx-1.*.tar.gz; do
  [[ -f $tarball ]] || continue
  minor=$(basename "$tarball" .tar.gz | cut -d. -f2)
  if ((minor % 2 == 0)); then
    stable=$(realpath "$tarball")
  fi
done
[[ -z $stable ]] || echo "$stable"
