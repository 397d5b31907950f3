#!/usr/bin/env bash
# Builds the module for the Nginx installed on this machine from Debian's (or Ubuntu's)
# packages, and prints the path of the .so to `load_module` in /usr/sbin/nginx.
#
# A dynamic module loads only into the same Nginx version it was built against, configured
# --with-compat. Debian's nginx-dev ships that Nginx's source with the exact configure flags in
# /usr/share/nginx/src/conf_flags: configure a copy of it with those flags, then build the module
# against it (NGINX_SOURCE_DIR/NGINX_BUILD_DIR replace the vendored Nginx 1.28).
#
# Needs: apt-get install nginx nginx-dev (scripts/setup.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

source_dir=${NGINX_DEV_SOURCE:-/usr/share/nginx/src}
nginx_binary=${NGINX_BINARY:-/usr/sbin/nginx}
if [[ ! -f $source_dir/conf_flags || ! -x $nginx_binary ]]; then
  echo "build-for-system-nginx: need $nginx_binary and $source_dir/conf_flags;" \
       "install them with: apt-get install nginx nginx-dev" >&2
  exit 1
fi

version=$("$nginx_binary" -v 2>&1 | sed -n 's|^nginx version: nginx/\([0-9.]*\).*|\1|p')
source_version=$(sed -n 's|^#define NGINX_VERSION *"\(.*\)"|\1|p' "$source_dir/src/core/nginx.h")
if [[ $version != "$source_version" ]]; then
  echo "build-for-system-nginx: $nginx_binary is $version but $source_dir holds $source_version;" \
       "install matching nginx and nginx-dev packages" >&2
  exit 1
fi

target_dir=$PWD/target/system-nginx
build_dir=$target_dir/nginx-$version
if [[ ! -f $build_dir/objs/ngx_auto_config.h ]]; then
  rm -rf "$build_dir"
  mkdir -p "$build_dir"
  cp -a "$source_dir/." "$build_dir/"
  # shellcheck disable=SC1091
  source "$source_dir/conf_flags"
  if ! (cd "$build_dir" && ./configure "${NGX_CONF_FLAGS[@]}" >configure.log 2>&1); then
    tail -20 "$build_dir/configure.log" >&2
    exit 1
  fi
fi

NGINX_SOURCE_DIR=$build_dir NGINX_BUILD_DIR=$build_dir/objs \
  cargo build -p nginx-shift-module --release --target-dir "$target_dir" --quiet
echo "$target_dir/release/libngx_http_shift_module.so"
