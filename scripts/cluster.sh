#!/usr/bin/env bash
# A 3-node Vault cluster with integrated storage (Raft) on 127.0.0.1 for a
# person to try the plugin in: the plugin built and copied into each node's own
# plugin directory, a fake Ermeo, the cluster initialised (one Shamir key share)
# and unsealed, the plugin registered by sha256 and enabled at ermeo/, config
# and an account "app" written. It prints each node's VAULT_ADDR and the root
# token, and runs until Ctrl-C (or `kill <pid>` of the program, as printed),
# then stops every process it started, by pid. The e2e tests use the same code
# (internal/e2e/cluster.go). Extra arguments go to the program, e.g.
#   scripts/cluster.sh -access-token-ttl 2m -min-ttl 1m   # watch refreshes
#   scripts/cluster.sh -keep                              # keep logs and Raft data
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
VAULT_BIN=$(scripts/vault-bin.sh)
export VAULT_BIN
exec go run ./internal/e2e/cmd/cluster "$@"
