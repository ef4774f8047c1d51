#!/usr/bin/env bash
# Installs the checkers and tools the deployment tests use, from Debian's
# packages, idempotently: promtool (package prometheus; the Prometheus
# daemon is not started), docker-compose, and systemd-analyze (package
# systemd; systemd need not run). Exits non-zero when one is still missing.
set -euo pipefail

log() { echo "[setup tools] $*"; }

declare -A pkg_of=([promtool]=prometheus [docker-compose]=docker-compose [systemd-analyze]=systemd)
need=()
for cmd in "${!pkg_of[@]}"; do
	command -v "$cmd" >/dev/null 2>&1 || need+=("${pkg_of[$cmd]}")
done
if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" != 0 ]; then
		log "not root: cannot install ${need[*]}"
		exit 1
	fi
	log "installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	# Wait for another apt/dpkg run instead of failing on its lock.
	apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null 2>&1 || true
	# No recommends: prometheus would otherwise bring node-exporter.
	apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 ||
		log "apt-get install ${need[*]} failed"
fi
missing=()
for cmd in "${!pkg_of[@]}"; do
	command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd (${pkg_of[$cmd]})")
done
if [ ${#missing[@]} -gt 0 ]; then
	log "still missing: ${missing[*]}"
	exit 1
fi
log "promtool, docker-compose and systemd-analyze present"
