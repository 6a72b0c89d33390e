#!/usr/bin/env bash
# Test-only system packages (idempotent): podman builds the OCI images the tests boot
# (tests/integration/test_oci.py, bench/oci.py).  mvm itself never runs podman.
set -euo pipefail
need=()
command -v podman >/dev/null || need+=(podman)
[ ${#need[@]} -eq 0 ] && exit 0
command -v apt-get >/dev/null || { echo "setup-test: needs a Debian-based host (apt-get)" >&2; exit 1; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "setup-test: installing ${need[*]}"
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
