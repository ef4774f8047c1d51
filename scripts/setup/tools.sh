#!/usr/bin/env bash
# Installs the checkers and tools the deployment and schema tests use,
# idempotently: from Debian's packages promtool (package prometheus; the
# Prometheus daemon is not started), docker-compose, systemd-analyze
# (package systemd; systemd need not run), node and npm (packages nodejs,
# npm), zsh and fish (the shells whose completion scripts the cli tests
# syntax-check); with npm, the node packages of scripts/setup/node/package.json
# (@asyncapi/parser, ajv) into $SUBBUS_NODE_DIR (default
# /var/cache/subbus-node), which messages/schemas_node_test.go uses.
# Exits non-zero when one is still missing.
set -euo pipefail

log() { echo "[setup tools] $*"; }

declare -A pkg_of=([promtool]=prometheus [docker-compose]=docker-compose [systemd-analyze]=systemd [node]=nodejs [npm]=npm [zsh]=zsh [fish]=fish)
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
log "promtool, docker-compose, systemd-analyze, node, npm, zsh and fish present"

# The node packages, pinned by scripts/setup/node/package.json; `npm ls`
# fails when one is missing or at another version, and only then is npm
# run (no lock file is written: the pins are exact).
node_dir="${SUBBUS_NODE_DIR:-/var/cache/subbus-node}"
mkdir -p "$node_dir"
cmp -s "$(dirname "$0")/node/package.json" "$node_dir/package.json" ||
	cp "$(dirname "$0")/node/package.json" "$node_dir/package.json"
if ! npm ls --prefix "$node_dir" >/dev/null 2>&1; then
	log "installing the node packages into $node_dir"
	if ! npm install --prefix "$node_dir" --no-package-lock --no-audit --no-fund --loglevel=error >/dev/null; then
		log "npm install into $node_dir failed"
		exit 1
	fi
fi
log "node packages present in $node_dir"
