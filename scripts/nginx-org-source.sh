#!/usr/bin/env bash
# Prints the Nginx source the nginx.org package (nginx-module-shift) is built from:
# $NGINX_ORG_SOURCE when set (a tarball or a tree of the version your nginx.org nginx has), else
# the newest stable source (an even minor version, e.g. 1.30.4) in ../shared/nginx-src/, else
# nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n ${NGINX_ORG_SOURCE:-} ]]; then
  realpath "$NGINX_ORG_SOURCE"
  exit
fi
stable=
for tarball in ../shared/nginx-src/nginx-1.*.tar.gz; do
  [[ -f $tarball ]] || continue
  minor=$(basename "$tarball" .tar.gz | cut -d. -f2)
  if ((minor % 2 == 0)); then
    stable=$(realpath "$tarball")
  fi
done
[[ -z $stable ]] || echo "$stable"
