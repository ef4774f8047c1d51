#!/usr/bin/env bash
# Installs what the PVE simulator's tests need besides Go: Debian's
# python3-proxmoxer, an independent PVE API client that
# internal/pvesim's TestProxmoxerClient drives bin/pvesim with.
# (The simulator itself needs nothing: it is a Go program.)
#
# Idempotent: an installed package is not reinstalled. Debian packages only.
# Exits non-zero when the package cannot be installed.
set -euo pipefail

log() { echo "[setup:pvesim] $*"; }

if dpkg-query -W -f='${Status}' python3-proxmoxer 2>/dev/null | grep -q "install ok installed"; then
	log "python3-proxmoxer is installed"
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	log "not root: cannot install python3-proxmoxer"
	exit 1
fi
log "installing python3-proxmoxer"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq python3-proxmoxer >/dev/null 2>&1; then
	apt-get update -qq >/dev/null 2>&1 || true
	apt-get install -y -qq python3-proxmoxer >/dev/null 2>&1 || { log "apt-get install python3-proxmoxer failed"; exit 1; }
fi
log "python3-proxmoxer installed"
