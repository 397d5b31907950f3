#!/usr/bin/env bash
# Installs what building nginx-shift needs on Debian 12, and nothing when it is all there.
# Sourced by demo.sh and test.sh, which may name more packages as arguments; safe to run again.
set -euo pipefail

# protobuf-compiler and libprotobuf-dev: shiftctl's etcd client is generated from etcd's .proto
# files when it is built.
packages=(clang libclang-dev libssl-dev libpcre2-dev zlib1g-dev make pkg-config curl
          protobuf-compiler libprotobuf-dev "$@")

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done

if ((${#missing[@]})); then
  echo "nginx-shift: installing ${missing[*]}" >&2
  sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "nginx-shift: need root or sudo to install ${missing[*]}" >&2; exit 1; }
    sudo=(sudo)
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [[ -f "$HOME/.cargo/env" ]]; then
  # shellcheck disable=SC1091
  source "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null; then
  echo "nginx-shift: no Rust toolchain found. Install Rust 1.85 or newer with rustup" \
       "(Debian 12's own cargo is too old), then run this again." >&2
  exit 1
fi
