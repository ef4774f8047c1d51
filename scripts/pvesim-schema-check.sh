#!/usr/bin/env bash
# Checks one PVE API request against PVE's published schema with the
# independent checker pve_schema_check.py (both in ../shared/reference/pve,
# relative to the repository root), e.g.
#   scripts/pvesim-schema-check.sh POST /nodes/pve/qemu/100/status/shutdown timeout=30 forceStop=1
# PVE_SCHEMA=pve8 checks against PVE 8's schema instead of PVE 9's.
# Prints the matched template and the errors PVE would answer; exits 1 on errors.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
ref="$root/../shared/reference/pve"
schema="$ref/apischema-${PVE_SCHEMA:-pve9}.json.gz"
[ -f "$schema" ] || { echo "missing $schema" >&2; exit 2; }
[ $# -ge 2 ] || { echo "usage: $0 METHOD PATH [key=value...]" >&2; exit 2; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# The checker reads pve-docs' apidata.js form.
{ printf 'const apiSchema = '; zcat "$schema"; printf ';\n'; } >"$tmp/apidata.js"
python3 "$ref/pve_schema_check.py" "$tmp/apidata.js" "$@"
