#!/usr/bin/env bash
# Install the system packages mvm needs (idempotent: does nothing when all are present).
set -euo pipefail
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx switch_root || need+=(busybox-static)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v debugfs >/dev/null || need+=(e2fsprogs)
command -v cpio >/dev/null || need+=(cpio)
command -v modinfo >/dev/null || need+=(kmod)
command -v lz4 >/dev/null || need+=(lz4)
# OCI images (image = "oci-archive:…" in mvm.toml, --image): format conversion and rootless unpacking
command -v skopeo >/dev/null || need+=(skopeo)
command -v umoci >/dev/null || need+=(umoci)
# the mvm guest kernel (kernel = "mvm") is built from Debian's own source package
[ -f /usr/src/linux-source-6.1.tar.xz ] || need+=(linux-source-6.1)
command -v gcc >/dev/null && command -v make >/dev/null || need+=(build-essential)
command -v flex >/dev/null || need+=(flex)
command -v bison >/dev/null || need+=(bison)
command -v bc >/dev/null || need+=(bc)
command -v patch >/dev/null || need+=(patch)
[ -f /usr/include/libelf.h ] || need+=(libelf-dev)
[ -f /usr/include/openssl/ssl.h ] || need+=(libssl-dev)
command -v apt-get >/dev/null || { echo "setup: mvm needs a Debian-based host (apt-get)" >&2; exit 1; }
# apt's package lists are needed to resolve the guest kernel and packages
lists=$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' 2>/dev/null | head -1)
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if [ ${#need[@]} -eq 0 ] && [ -n "$lists" ]; then exit 0; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
