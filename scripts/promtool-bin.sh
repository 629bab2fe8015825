#!/usr/bin/env bash
# Prints the path of promtool: $PROMTOOL_BIN, the one on PATH, Debian's
# prometheus package (as root with apt), or one built once from the Go module
# proxy and cached outside the repository. See prometheus-bin.sh.
exec "$(dirname "$0")/prometheus-bin.sh" promtool
