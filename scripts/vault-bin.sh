#!/usr/bin/env bash
# Prints the path of a `vault` binary, version 1.15 or newer.
# Uses the one on PATH if it is new enough; otherwise builds one once from the Go
# module proxy and caches it outside the repository, so later runs reuse it.
# Build log goes to stderr; only the path goes to stdout.
set -euo pipefail

VAULT_BUILD_VERSION="${VAULT_BUILD_VERSION:-v1.21.1}"
cache="${ERMEO_VAULT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vault-plugin-secrets-ermeo}"
cached="$cache/vault-$VAULT_BUILD_VERSION"

new_enough() {
  local v
  v=$("$1" version 2>/dev/null | sed -n 's/^Vault v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p') || return 1
  [ -n "$v" ] || return 1
  set -- $v
  [ "$1" -gt 1 ] || { [ "$1" -eq 1 ] && [ "$2" -ge 15 ]; }
}

if [ -n "${VAULT_BIN:-}" ] && new_enough "$VAULT_BIN"; then
  echo "$VAULT_BIN"; exit 0
fi
if p=$(command -v vault 2>/dev/null) && new_enough "$p"; then
  echo "$p"; exit 0
fi
if [ -x "$cached" ] && new_enough "$cached"; then
  echo "$cached"; exit 0
fi

mkdir -p "$cache"
# One builder at a time: a second caller waits for the first one's result.
exec 9>"$cache/.build.lock"
flock 9
if [ -x "$cached" ] && new_enough "$cached"; then
  echo "$cached"; exit 0
fi

echo "building vault $VAULT_BUILD_VERSION once into $cached (about 10 minutes on two cores)..." >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(
  cd "$tmp"
  export GOFLAGS=-mod=mod
  go mod init tmp >/dev/null 2>&1
  go get "github.com/hashicorp/vault@$VAULT_BUILD_VERSION" >&2
  go build -tags minimal -ldflags "-s -w" -o "$cached.tmp" github.com/hashicorp/vault >&2
)
mv "$cached.tmp" "$cached"
new_enough "$cached" || { echo "built vault at $cached does not report 1.15+" >&2; exit 1; }
echo "$cached"
