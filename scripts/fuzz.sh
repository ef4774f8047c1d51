#!/usr/bin/env bash
# Runs every fuzz target (func FuzzXxx in a _test.go file) for a short time
# each. FUZZTIME (default 10s) sets the time per target; PKGS (default
# ./internal/...) limits the packages searched.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
FUZZTIME=${FUZZTIME:-10s}
PKGS=${PKGS:-./internal/...}
status=0
for dir in $($GO list -f '{{.Dir}}' $PKGS); do
	targets=$(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u || true)
	for t in $targets; do
		echo "== $t in ${dir#$PWD/} ($FUZZTIME)"
		if ! $GO test "$dir" -run '^$' -fuzz "^$t\$" -fuzztime "$FUZZTIME"; then
			status=1
		fi
	done
done
exit $status
