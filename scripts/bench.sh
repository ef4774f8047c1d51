#!/usr/bin/env bash
# make bench: the project's Go benchmarks, printed as tables, then
# `subbus <driver> list` timed against the substrate's native CLI.
#
# Bounded in time: each benchmark runs for BENCHTIME (default 1s), each
# package within BENCH_TIMEOUT (default 10m), and the CLI comparison does
# RUNS runs (default 20) per command. Not a timed test: numbers depend on
# the machine (recorded at the top of the output).
#
#   BENCHTIME=2s RUNS=50 bash scripts/bench.sh
#   BENCH_PKGS="./client" bash scripts/bench.sh   # only these packages
#   SKIP_CLI=1 bash scripts/bench.sh                       # only the Go benchmarks
#   SKIP_GO=1 bash scripts/bench.sh                        # only the soak and the CLI comparison
#   SKIP_SOAK=1 bash scripts/bench.sh                      # no soak benchmark
#   SKIP_FLEET=1 bash scripts/bench.sh                     # no fan-out / bus-efficiency benchmark
#   FANOUT=300 bash scripts/bench.sh                       # workers of the fan-out benchmark (default 1000)
#   BUSBENCH_ROUNDS=9 BUSBENCH_ROUND=2s …                  # rounds of the bus-efficiency benchmark
#   SOAK_DURATION=2m bash scripts/bench.sh                 # soak length (default 60s, ~1.5x that in all)
#   BENCH_OUT=/tmp/bench.txt bash scripts/bench.sh         # also write the output there
set -euo pipefail

cd "$(dirname "$0")/.."
GO=${GO:-go}
BENCHTIME=${BENCHTIME:-1s}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-10m}
RUNS=${RUNS:-20}

hr() { printf '\n== %s ==\n' "$*"; }

# BENCH_OUT=file also writes everything printed to that file (e.g. to
# paste into docs/benchmarks.md).
if [[ -n ${BENCH_OUT:-} ]]; then
	exec > >(tee "$BENCH_OUT") 2>&1
fi

hr "machine"
echo "date:   $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "kernel: $(uname -srm)"
echo "cpu:    $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//') ($(nproc) cores)"
echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo 2>/dev/null)"
echo "go:     $($GO env GOVERSION)"
echo "load:   $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"

# ---- Go benchmarks ----

if [[ -n ${BENCH_PKGS:-} ]]; then
	read -r -a pkgs <<<"$BENCH_PKGS"
else
	mapfile -t pkgs < <(grep -rl --include='*_test.go' '^func Benchmark' internal cmd 2>/dev/null |
		xargs -r -n1 dirname | sort -u | sed 's#^#./#')
fi

# table: turn `go test -bench` output into an aligned table with the
# custom metrics (p50-µs, events/s, …) as their own columns.
table() {
	awk '
	/^Benchmark/ {
		name = $1; sub(/-[0-9]+$/, "", name)
		row[++n] = name; cols[n] = ""
		for (i = 3; i + 1 <= NF; i += 2) {
			unit = $(i + 1); val = $i
			if (!(unit in seen)) { seen[unit] = 1; units[++nu] = unit }
			v[n, unit] = val
		}
	}
	END {
		if (n == 0) exit
		w = 9; for (r = 1; r <= n; r++) if (length(row[r]) > w) w = length(row[r])
		printf "%-" w "s", "benchmark"; for (u = 1; u <= nu; u++) printf "  %14s", units[u]; printf "\n"
		for (r = 1; r <= n; r++) {
			printf "%-" w "s", row[r]
			for (u = 1; u <= nu; u++) { x = v[r, units[u]]; printf "  %14s", (x == "" ? "-" : x) }
			printf "\n"
		}
	}'
}

status=0
if [[ ${#pkgs[@]} -eq 0 && -z ${SKIP_GO:-} ]]; then
	echo "no package has benchmarks"
fi
[[ -n ${SKIP_GO:-} ]] && pkgs=()
for p in "${pkgs[@]}"; do
	hr "go benchmarks: $p"
	out=$(mktemp)
	if $GO test -run '^$' -bench . -benchmem -benchtime "$BENCHTIME" -timeout "$BENCH_TIMEOUT" "$p" >"$out" 2>&1; then
		table <"$out"
		grep -E '^(SKIP|---)' "$out" || true
	else
		echo "FAILED:"
		tail -n 30 "$out"
		status=1
	fi
	rm -f "$out"
done

# ---- fleet scale and bus efficiency (issue 11) ----

if [[ -z ${SKIP_FLEET:-} ]]; then
	hr "bus efficiency (internal/worker TestBusEfficiency): worker get vs a bare micro responder, same server, alternating rounds"
	out=$(mktemp)
	if SUBBUS_BUSBENCH=1 $GO test -count=1 -run '^TestBusEfficiency$' -v -timeout "$BENCH_TIMEOUT" ./internal/worker >"$out" 2>&1; then
		sed -n '/bus efficiency:/,/^ *load average/p' "$out" | sed 's/^ *//'
	else
		echo "FAILED:"; tail -n 30 "$out"; status=1
	fi
	rm -f "$out"

	hr "fan-out (internal/cli TestFanout): ${FANOUT:-1000} workers in-process on one nats-server"
	out=$(mktemp)
	if SUBBUS_FANOUT=${FANOUT:-1000} $GO test -count=1 -run '^TestFanout$' -v -timeout "$BENCH_TIMEOUT" ./internal/cli >"$out" 2>&1; then
		sed -n '/fan-out:/,/^ *per worker/p' "$out" | sed 's/^ *//'
	else
		echo "FAILED:"; tail -n 30 "$out"; status=1
	fi
	rm -f "$out"
fi

# ---- soak: mixed load with crashes injected ----

if [[ -z ${SKIP_SOAK:-} ]]; then
	hr "soak (internal/worker TestSoak, ${SOAK_DURATION:-60s}): mixed load, worker kill -9 x3, NATS restart x1"
	out=$(mktemp)
	if SUBBUS_SOAK=1 SOAK_DURATION=${SOAK_DURATION:-60s} $GO test -count=1 -run '^TestSoak$' -v -timeout "$BENCH_TIMEOUT" ./internal/worker >"$out" 2>&1; then
		sed -n '/soak_test.go/,/^--- /p' "$out" | grep -v '^--- ' | sed 's/^ *//' | grep -v '^soak_test.go:[0-9]*: *$'
	else
		echo "FAILED:"
		grep -v ' INF \| DBG ' "$out" | tail -n 30
		status=1
	fi
	rm -f "$out"
fi

# ---- subbus list vs the native CLI ----

[[ -n ${SKIP_CLI:-} ]] && exit "$status"

hr "subbus <driver> list vs the native CLI ($RUNS runs each)"
$GO build -o bin/worker ./cmd/worker
$GO build -o bin/subbus ./cmd/subbus

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
PORT=$((20000 + RANDOM % 40000))
for _ in $(seq 1 50); do port_busy "$PORT" || break; PORT=$((20000 + RANDOM % 40000)); done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/subbus-bench.XXXXXX")
WORKER_PID=
cleanup() {
	if [[ -n $WORKER_PID ]]; then kill -TERM "$WORKER_PID" 2>/dev/null || true; wait "$WORKER_PID" 2>/dev/null || true; fi
	rm -rf "$TMP"
}
trap cleanup EXIT

# Serve the process driver and every substrate whose native CLI is here
# and answers; the worker logs which it found.
drivers=(process)
declare -A native=([process]="ps -e -o pid,stat,comm")
if command -v docker >/dev/null && timeout 5 docker info >/dev/null 2>&1; then
	drivers+=(docker); native[docker]="docker ps -a"
fi
if command -v supervisorctl >/dev/null && timeout 5 supervisorctl status >/dev/null 2>&1; then
	drivers+=(supervisor); native[supervisor]="supervisorctl status"
fi
if command -v lxc >/dev/null && timeout 5 lxc list --format csv >/dev/null 2>&1; then
	drivers+=(lxc); native[lxc]="lxc list --format csv"
fi
if command -v virsh >/dev/null && timeout 30 virsh -c qemu:///system list --all >/dev/null 2>&1; then
	drivers+=(libvirt); native[libvirt]="virsh -c qemu:///system list --all"
fi

cat >"$TMP/config.yaml" <<EOF
worker:
  host: bench
nats:
  listen: 127.0.0.1:$PORT
  data_dir: $TMP/nats
process:
  state_dir: $TMP/process
global:
  enable_metrics: false
EOF
export XDG_CONFIG_HOME="$TMP/config" NATS_URL="nats://127.0.0.1:$PORT"
env -u NATS_URL bin/worker --config "$TMP/config.yaml" --drivers "$(IFS=,; echo "${drivers[*]}")" \
	--log-format json >"$TMP/worker.log" 2>&1 &
WORKER_PID=$!
for i in $(seq 1 100); do
	bin/subbus workers >/dev/null 2>&1 && break
	if ! kill -0 "$WORKER_PID" 2>/dev/null || [[ $i -eq 100 ]]; then
		echo "the worker did not start:"; tail -n 20 "$TMP/worker.log"; exit 1
	fi
	sleep 0.2
done
for i in 1 2 3; do
	bin/subbus process create "bench-$i" --image /bin/sleep -- 600 >/dev/null
	bin/subbus process start "bench-$i" >/dev/null
done

if command -v hyperfine >/dev/null; then
	for d in "${drivers[@]}"; do
		hyperfine --style basic --warmup 3 --runs "$RUNS" -N \
			--command-name "subbus $d list" "bin/subbus $d list" \
			--command-name "${native[$d]}" "${native[$d]}" 2>&1 | grep -v '^ *$' || status=1
	done
else
	echo "(hyperfine not installed: timing a loop; apt-get install -y hyperfine for statistics)"
	# mean_ms CMD...: mean wall time of RUNS runs, in milliseconds.
	mean_ms() {
		local start end
		start=$(date +%s%N)
		for _ in $(seq 1 "$RUNS"); do "$@" >/dev/null 2>&1 || return 1; done
		end=$(date +%s%N)
		echo $(((end - start) / RUNS / 1000))
	}
	printf '%-12s  %18s  %18s  %s\n' driver "subbus list (µs)" "native (µs)" "native command"
	for d in "${drivers[@]}"; do
		s=$(mean_ms bin/subbus "$d" list) || s=failed
		# shellcheck disable=SC2086
		n=$(mean_ms ${native[$d]}) || n=failed
		printf '%-12s  %18s  %18s  %s\n' "$d" "$s" "$n" "${native[$d]}"
	done
fi
for i in 1 2 3; do bin/subbus process delete "bench-$i" --force >/dev/null || true; done
exit "$status"
