#!/usr/bin/env bash
# The main job, end to end: a real Vault dev server with the plugin registered
# by sha256, the fake Ermeo, an account, and `vault read ermeo/creds/app`; then
# the fake's GET /api/v1/profile called with that token. Everything listens on
# 127.0.0.1 only, and every process this script starts is stopped by its pid.
# Run it through `make demo`, which builds bin/ first.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
VERSION=${VERSION:-v0.1.0}
PLUGIN=vault-plugin-secrets-ermeo
[ -x "bin/$PLUGIN" ] && [ -x bin/fake-ermeo ] || { echo "run 'make demo' (it builds bin/ first)" >&2; exit 1; }

vault_bin=$(scripts/vault-bin.sh)
work=$(mktemp -d "${TMPDIR:-/tmp}/ermeo-demo.XXXXXX")
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

# Bold step titles on a terminal; no escape codes in a pipe or a log file.
if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
step() { printf '\n%s==> %s%s\n' "$bold" "$*" "$plain"; }
show() { printf '$ %s\n' "$*"; "$@"; }

free_port() {
  local p
  for _ in $(seq 1 50); do
    p=$(( 20000 + RANDOM % 20000 ))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
  done
  echo "no free port found" >&2; return 1
}

step "Starting the fake Ermeo on 127.0.0.1"
bin/fake-ermeo -addr 127.0.0.1:0 -addr-file "$work/fake.url" 2>"$work/fake.log" &
pids+=($!)
for _ in $(seq 1 100); do [ -s "$work/fake.url" ] && break; sleep 0.1; done
[ -s "$work/fake.url" ] || { cat "$work/fake.log" >&2; exit 1; }
ermeo_url=$(cat "$work/fake.url")
echo "fake Ermeo at $ermeo_url (pid ${pids[0]})"

step "Starting a real Vault dev server on 127.0.0.1 with a plugin directory"
mkdir -p "$work/plugins"
cp "bin/$PLUGIN" "$work/plugins/$PLUGIN"
printf 'plugin_directory = "%s"\ndisable_mlock = true\n' "$work/plugins" > "$work/vault.hcl"
port=$(free_port)
export VAULT_ADDR="http://127.0.0.1:$port" VAULT_TOKEN="demo-root-$RANDOM$RANDOM"
unset VAULT_NAMESPACE VAULT_CACERT VAULT_CAPATH VAULT_CLIENT_CERT VAULT_CLIENT_KEY
HOME="$work" "$vault_bin" server -dev -dev-root-token-id="$VAULT_TOKEN" \
  -dev-listen-address="127.0.0.1:$port" -dev-no-store-token -config="$work/vault.hcl" \
  >"$work/vault.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 300); do "$vault_bin" status >/dev/null 2>&1 && break; sleep 0.1; done
"$vault_bin" status >/dev/null 2>&1 || { tail -30 "$work/vault.log" >&2; exit 1; }
vault() { "$vault_bin" "$@"; }
vault version
echo "Vault at $VAULT_ADDR (pid ${pids[1]})"

step "Registering the plugin by sha256 and enabling it at ermeo/"
sha=$(sha256sum "$work/plugins/$PLUGIN" | cut -d' ' -f1)
show vault plugin register -sha256="$sha" -version="$VERSION" secret "$PLUGIN"
show vault secrets enable -path=ermeo -plugin-version="$VERSION" "$PLUGIN"

step "Configuring the Ermeo client and creating the account 'app'"
show vault write ermeo/config api_url="$ermeo_url" \
  client_id=5_2och3ahuji2owccg8004cwkk8woc8gcggsk0c0scc0s8og4swk \
  client_secret=4ok2x70rlfokc8g0wws8c8kwcokw80k44sg48goc0ok4w0so0k
show vault write ermeo/accounts/app username=jane@example.com password=correct-horse

step "Reading an access token"
show vault read ermeo/creds/app

step "Calling Ermeo's GET /api/v1/profile with that token"
token=$(vault read -field=access_token ermeo/creds/app)
printf '$ curl -H "Authorization: Bearer $(vault read -field=access_token ermeo/creds/app)" %s/api/v1/profile\n' "$ermeo_url"
curl -sS --fail-with-body -H "Authorization: Bearer $token" "$ermeo_url/api/v1/profile"
echo

step "Done: stopping the processes this demo started (pids ${pids[*]})"
