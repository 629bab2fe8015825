#!/usr/bin/env bash
# Prints the path of a python3 that can `import hvac` (the Python client of
# Vault), for examples/python/app.py and its e2e test.
# Uses $PYTHON if set and it has hvac; else /usr/bin/python3 if it has hvac
# (checked first: a pyenv shim or a virtualenv may put another python3 first on
# PATH, one without Debian's packages); else, as root on Debian, installs
# Debian's python3-hvac (which brings /usr/bin/python3) with apt-get and prints
# /usr/bin/python3. Otherwise it says why on stderr and exits 1.
# Install output goes to stderr; only the path goes to stdout.
set -euo pipefail

has_hvac() {
  [ -x "$1" ] && "$1" -c 'import hvac' >/dev/null 2>&1
}

if [ -n "${PYTHON:-}" ] && has_hvac "$PYTHON"; then
  echo "$PYTHON"; exit 0
fi
if has_hvac /usr/bin/python3; then
  echo /usr/bin/python3; exit 0
fi

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "python-hvac: no python3 with hvac (checked ${PYTHON:+\$PYTHON=$PYTHON and }/usr/bin/python3), and cannot install it here (needs root and apt-get):" >&2
  echo "  apt-get install python3-hvac   (Debian, Ubuntu)  or  pip install hvac, then PYTHON=/path/to/python3" >&2
  exit 1
fi

apt_install() {
  # Wait for another apt-get (another worktree's test, say) instead of failing.
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends python3-hvac >&2
}
echo "python-hvac: installing Debian's python3-hvac with apt-get..." >&2
if ! apt_install; then
  # A fresh machine may have no package lists yet, or stale ones.
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update >&2
  apt_install
fi
if ! has_hvac /usr/bin/python3; then
  echo "python-hvac: installed python3-hvac, but /usr/bin/python3 still cannot import hvac" >&2
  exit 1
fi
echo /usr/bin/python3
