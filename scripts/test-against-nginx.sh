#!/usr/bin/env bash
# Builds an Nginx from source (a tarball or a source tree) --with-compat, builds the module
# against it, and runs the integration tests with that pair. Both builds are kept under
# target/nginx-VERSION/ and reused on the next run.
#
#   scripts/test-against-nginx.sh ../shared/nginx-src/nginx-1.30.4.tar.gz
#
# nginx.org's repository trees (as in ../shared/nginx-src) configure with auto/configure; release
# tarballs with ./configure. Either works.
set -euo pipefail
cd "$(dirname "$0")/.."

source_path=${1:?usage: scripts/test-against-nginx.sh NGINX_TARBALL_OR_SOURCE_TREE}
[[ -e $source_path ]] || { echo "test-against-nginx: no such file or directory: $source_path" >&2; exit 2; }
source_path=$(realpath "$source_path")

work=$PWD/target/nginx-from-source
mkdir -p "$work"
if [[ -d $source_path ]]; then
  tree=$source_path
else
  name=$(basename "$source_path" .tar.gz)
  tree=$work/$name
  if [[ ! -f $tree/src/core/nginx.h ]]; then
    rm -rf "$tree"
    mkdir -p "$tree"
    tar xzf "$source_path" -C "$tree" --strip-components=1
  fi
fi
version=$(sed -n 's|^#define NGINX_VERSION *"\(.*\)"|\1|p' "$tree/src/core/nginx.h")
[[ -n $version ]] || { echo "test-against-nginx: $tree is not an Nginx source tree" >&2; exit 2; }

build=$work/build-$version
if [[ ! -x $build/objs/nginx ]]; then
  echo "--- building Nginx $version (once; kept in $build) ---"
  rm -rf "$build"
  cp -a "$tree" "$build"
  configure=./configure
  [[ -x $build/configure ]] || configure=auto/configure
  if ! (cd "$build" && $configure --with-compat --with-http_ssl_module --with-threads >configure.log 2>&1 \
        && make -j"$(nproc)" >make.log 2>&1); then
    tail -30 "$build/configure.log" "$build/make.log" 2>/dev/null >&2
    exit 1
  fi
fi

target=$work/cargo-$version
NGINX_SOURCE_DIR=$build NGINX_BUILD_DIR=$build/objs \
  cargo build -p nginx-shift-module --target-dir "$target" --quiet
module=$target/debug/libngx_http_shift_module.so

echo "--- integration tests against Nginx $version ($build/objs/nginx) ---"
SHIFT_NGINX=$build/objs/nginx SHIFT_MODULE=$module \
  cargo test --no-fail-fast --workspace --test runtime_weights --test health_checks --test foundation \
  --test metrics --test lifecycle --test sticky
