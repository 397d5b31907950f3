#!/usr/bin/env bash
# Builds an Nginx from source (a tarball or a source tree) --with-compat, builds the module
# against it, and prints two lines: the Nginx binary and the module's .so. Both builds are kept
# under target/nginx-from-source/ and reused on the next run.
#
#   scripts/build-for-nginx-source.sh ../shared/nginx-src/nginx-1.30.4.tar.gz [--release]
#
# nginx.org's repository trees (as in ../shared/nginx-src) configure with auto/configure; release
# tarballs with ./configure. Either works. The flags match nginx.org's packages where a module's
# compatibility is concerned (--with-compat), so the module also loads into those.
set -euo pipefail
cd "$(dirname "$0")/.."

source_path=${1:?usage: scripts/build-for-nginx-source.sh NGINX_TARBALL_OR_SOURCE_TREE [--release]}
profile=debug
[[ ${2:-} == --release ]] && profile=release
[[ -e $source_path ]] || { echo "build-for-nginx-source: no such file or directory: $source_path" >&2; exit 2; }
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
[[ -n $version ]] || { echo "build-for-nginx-source: $tree is not an Nginx source tree" >&2; exit 2; }

build=$work/build-$version
if [[ ! -x $build/objs/nginx ]]; then
  echo "--- building Nginx $version (once; kept in $build) ---" >&2
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
cargo_profile=()
[[ $profile == release ]] && cargo_profile=(--release)
NGINX_SOURCE_DIR=$build NGINX_BUILD_DIR=$build/objs \
  cargo build -p nginx-shift-module "${cargo_profile[@]}" --target-dir "$target" --quiet
echo "$build/objs/nginx"
echo "$target/$profile/libngx_http_shift_module.so"
