#!/usr/bin/env bash
# Builds nginx-shift's Debian packages with cargo-deb into target/packages/ and prints their paths:
#
#   libnginx-mod-http-shift  the module for Debian's own nginx, depending on the exact ABI the
#                            installed nginx-dev declares, enabled through modules-enabled
#   nginx-module-shift       the module for nginx.org's packages (nginx-r<version>) of the stable
#                            Nginx in ../shared/nginx-src/ when that source is there, or of the
#                            source NGINX_ORG_SOURCE names
#   shiftctl                 the command, its man pages and bash/zsh/fish completions
#
# Installs what is missing first (nginx, nginx-dev, cargo-deb). docs/installing.md says how the
# packages are installed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh nginx nginx-dev

cargo_deb_version=3.8.0
if [[ $(cargo deb --version 2>/dev/null) != "cargo-deb $cargo_deb_version"* ]]; then
  echo "nginx-shift: installing cargo-deb $cargo_deb_version" >&2
  cargo install cargo-deb --version "$cargo_deb_version" --locked --quiet
fi

out=$PWD/target/packages
rm -rf "$out"
mkdir -p "$out"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' nginx-module/Cargo.toml | head -1)

# The module's packages: cargo-deb reads a manifest rendered from packaging/module/Cargo.toml.in
# with the values only this machine knows, the built module staged beside it.
package_module() {
  local variant=$1 module=$2 nginx_abi=$3 nginx_version=$4
  shift 4
  local stage=$out/build/$variant
  mkdir -p "$stage"
  # Stripped as Debian ships modules: the debug info is most of the file.
  strip --strip-unneeded -o "$stage/ngx_http_shift_module.so" "$module"
  sed -e "s|@SOURCE@|$PWD|g" -e "s|@VERSION@|$version|g" \
      -e "s|@NGINX_ABI@|$nginx_abi|g" -e "s|@NGINX_VERSION@|$nginx_version|g" \
      packaging/module/Cargo.toml.in >"$stage/Cargo.toml"
  cargo deb --manifest-path "$stage/Cargo.toml" --variant "$variant" --no-build --quiet \
    --output "$out" "$@" >/dev/null
}

# Debian's nginx: its ABI is what dh_nginx reads, from the substvars nginx-dev ships.
abi_file=/usr/share/nginx/src/debian/libnginx-mod.abisubstvars
nginx_abi=$(sed -n 's/^nginx:abi=//p' "$abi_file")
[[ -n $nginx_abi ]] || { echo "package: no nginx:abi in $abi_file; install nginx-dev" >&2; exit 1; }
module=$(scripts/build-for-system-nginx.sh)
package_module debian "$module" "$nginx_abi" ""

# nginx.org's Nginx, from its source (scripts/nginx-org-source.sh says which).
nginx_org_source=$(scripts/nginx-org-source.sh)
if [[ -n $nginx_org_source ]]; then
  built=$(scripts/build-for-nginx-source.sh "$nginx_org_source" --release)
  nginx_version=$("$(sed -n 1p <<<"$built")" -v 2>&1 | sed -n 's|^nginx version: nginx/||p')
  package_module nginx-org "$(sed -n 2p <<<"$built")" "" "$nginx_version" \
    --deb-version "$nginx_version+$version-1"
else
  echo "package: no nginx.org source (../shared/nginx-src/ or NGINX_ORG_SOURCE): nginx-module-shift not built" >&2
fi

# shiftctl: the man pages and completions come from the built binary's clap definitions.
# SHIFTCTL_TARGET_DIR: where scripts/test.sh already builds it.
cli_target=${SHIFTCTL_TARGET_DIR:-$PWD/target}
cargo build --release -p shiftctl --quiet --target-dir "$cli_target"
shiftctl=$cli_target/release/shiftctl
assets=$cli_target/release/shiftctl-assets
rm -rf "$assets"
"$shiftctl" man-pages "$assets/man"
gzip -9n "$assets"/man/*.1
mkdir -p "$assets/completions"
"$shiftctl" completions bash >"$assets/completions/shiftctl.bash"
"$shiftctl" completions zsh >"$assets/completions/_shiftctl"
"$shiftctl" completions fish >"$assets/completions/shiftctl.fish"
CARGO_TARGET_DIR=$cli_target cargo deb -p shiftctl --no-build --quiet --output "$out" >/dev/null

rm -rf "$out/build"
ls "$out"/*.deb
