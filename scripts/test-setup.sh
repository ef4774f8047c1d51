#!/usr/bin/env bash
# Installs (from Debian's packages) and starts the daemons the tests use,
# idempotently: what is installed is not reinstalled, what runs is not
# restarted. Each substrate has its own script in scripts/setup/.
#
# With CI=true a daemon that cannot be set up fails this script; otherwise
# it only warns and that substrate's tests skip, saying how to start it.
set -uo pipefail
cd "$(dirname "$0")/.."
export SUBBUS_SETUP_DIR="${SUBBUS_SETUP_DIR:-/var/lib/subbus-test}"
mkdir -p "$SUBBUS_SETUP_DIR"

log() { echo "[setup] $*"; }

# A package is needed when it is not installed. (Checking for a command
# is not enough: Debian's dynamically linked busybox provides `busybox`
# too, and cannot run inside the test images; busybox-static replaces it.)
need=()
for pkg in docker.io lxd supervisor busybox-static; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
	log "installing ${need[*]}"
	if [ "$(id -u)" = 0 ]; then
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq >/dev/null 2>&1 || true
		apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 || log "apt-get install ${need[*]} failed"
	else
		log "not root: cannot install ${need[*]}"
	fi
fi

failed=()
for s in scripts/setup/*.sh; do
	[ -e "$s" ] || continue
	name=$(basename "$s" .sh)
	log "setting up $name"
	if ! bash "$s"; then
		log "FAILED: $name"
		failed+=("$name")
	fi
done

if [ ${#failed[@]} -gt 0 ]; then
	log "could not set up: ${failed[*]}"
	if [ "${CI:-}" = "true" ]; then
		exit 1
	fi
fi
exit 0
