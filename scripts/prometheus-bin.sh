#!/usr/bin/env bash
# Prints the path of a Prometheus tool: `prometheus` (the server, the default)
# or `promtool` (the argument).
#   1. $PROMETHEUS_BIN or $PROMTOOL_BIN, if it runs;
#   2. the one on PATH;
#   3. as root on Debian with apt: Debian's `prometheus` package, which has both
#      (/usr/bin/prometheus and /usr/bin/promtool; its service is not started);
#   4. else both are built once from the Go module proxy and cached outside the
#      repository, so later runs reuse them.
# ERMEO_PROMETHEUS_FROM=build skips 2 and 3 (to check the build path).
# Install and build logs go to stderr; only the path goes to stdout. A tool it
# cannot obtain is an error (exit 1), never a skip: under CI=true as anywhere.
set -euo pipefail

tool="${1:-prometheus}"
case "$tool" in
  prometheus) override="${PROMETHEUS_BIN:-}" ;;
  promtool) override="${PROMTOOL_BIN:-}" ;;
  *) echo "usage: $0 [prometheus|promtool]" >&2; exit 2 ;;
esac

# The Go module's v0.3XX.Y is Prometheus 3.XX.Y.
PROMETHEUS_BUILD_VERSION="${PROMETHEUS_BUILD_VERSION:-v0.316.0}"
cache="${ERMEO_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vault-plugin-secrets-ermeo}"
cached="$cache/$tool-$PROMETHEUS_BUILD_VERSION"
from="${ERMEO_PROMETHEUS_FROM:-auto}"

runs() { [ -n "$1" ] && [ -x "$1" ] && "$1" --version >/dev/null 2>&1; }

if runs "$override"; then
  echo "$override"; exit 0
fi
if [ "$from" != build ]; then
  if p=$(command -v "$tool" 2>/dev/null) && runs "$p"; then
    echo "$p"; exit 0
  fi
fi
if runs "$cached"; then
  echo "$cached"; exit 0
fi

mkdir -p "$cache"
# One installer or builder at a time: a second caller waits for the first one's result.
exec 9>"$cache/.prometheus.lock"
flock 9

if [ "$from" != build ] && [ "$(id -u)" = 0 ] && [ -r /etc/debian_version ] && command -v apt-get >/dev/null; then
  if ! runs "/usr/bin/$tool"; then
    echo "installing Debian's prometheus package (prometheus and promtool)..." >&2
    # The package's postinst would start its service where no policy says
    # otherwise; a test tool must not leave a server running.
    made_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
      chmod 755 /usr/sbin/policy-rc.d
      made_policy=1
    fi
    trap '[ -z "$made_policy" ] || rm -f /usr/sbin/policy-rc.d' EXIT
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends prometheus >&2; then
      # A new machine may have no package lists yet.
      apt-get update >&2
      apt-get install -y --no-install-recommends prometheus >&2
    fi
  fi
  if runs "/usr/bin/$tool"; then
    echo "/usr/bin/$tool"; exit 0
  fi
  echo "Debian's prometheus package gave no working /usr/bin/$tool" >&2
  exit 1
fi

if runs "$cached"; then
  echo "$cached"; exit 0
fi
echo "building prometheus and promtool $PROMETHEUS_BUILD_VERSION once into $cache (several minutes on two cores)..." >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(
  cd "$tmp"
  export GOFLAGS=-mod=mod
  go mod init tmp >/dev/null 2>&1
  go get "github.com/prometheus/prometheus@$PROMETHEUS_BUILD_VERSION" >&2
  # Both in one build: they share most packages. The server has no web UI
  # assets this way (they come from npm), which neither the tests nor the
  # HTTP API need.
  # The version they report: module v0.3XX.Y is 3.XX.Y, v0.XX.Y is 2.XX.Y.
  v="${PROMETHEUS_BUILD_VERSION#v0.}"; n="${v%%.*}"
  if [ "$n" -ge 300 ]; then v="$((n / 100)).$((n % 100)).${v#*.}"; else v="2.$v"; fi
  pv=github.com/prometheus/common/version
  mkdir out
  go build -ldflags "-s -w -X $pv.Version=$v -X $pv.Revision=$PROMETHEUS_BUILD_VERSION -X $pv.Branch=go-module" -o out/ \
    github.com/prometheus/prometheus/cmd/prometheus \
    github.com/prometheus/prometheus/cmd/promtool >&2
)
for t in prometheus promtool; do
  mv "$tmp/out/$t" "$cache/$t-$PROMETHEUS_BUILD_VERSION"
done
runs "$cached" || { echo "the built $tool at $cached does not run" >&2; exit 1; }
echo "$cached"
