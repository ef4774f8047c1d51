#!/usr/bin/env bash
# make demo: a narrated tour of subbus with the process driver.
#
# Starts bin/worker with its embedded NATS server (JetStream in a temporary
# directory; port 4222, or a free port if 4222 is taken), then drives it
# with bin/subbus: create, start, list, exec, logs, metrics, events, stop,
# delete. Shuts the worker down with SIGTERM and waits for it. Exits
# non-zero as soon as any step fails. Needs bin/worker and bin/subbus
# (make build) and bash; nothing else.
set -euo pipefail

cd "$(dirname "$0")/.."
WORKER=${WORKER:-bin/worker}
SUBBUS=${SUBBUS:-bin/subbus}
for b in "$WORKER" "$SUBBUS"; do
	[[ -x $b ]] || { echo "demo: $b is missing; run 'make build' first" >&2; exit 1; }
done

if [[ -t 1 ]]; then B=$'\e[1m' D=$'\e[2m' G=$'\e[32m' R=$'\e[31m' N=$'\e[0m'; else B= D= G= R= N=; fi
say() { printf '\n%s==> %s%s\n' "$B" "$*" "$N"; }
show() { # show ARGS...: print the command line, quoting where needed
	local out="\$ subbus" a
	for a in "$@"; do
		if [[ $a =~ [^A-Za-z0-9_./=:@,-] ]]; then out+=" '${a//\'/\'\\\'\'}'"; else out+=" $a"; fi
	done
	printf '%s%s%s\n' "$D" "$out" "$N"
}
fail() { printf '%sdemo failed: %s%s\n' "$R" "$*" "$N" >&2; exit 1; }

# port_busy PORT: something accepts connections on 127.0.0.1:PORT.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

PORT=4222
if port_busy "$PORT"; then
	for _ in $(seq 1 50); do
		PORT=$((20000 + RANDOM % 40000))
		port_busy "$PORT" || break
	done
	port_busy "$PORT" && fail "no free port found"
	echo "port 4222 is taken; the demo worker listens on $PORT"
fi
export NATS_URL="nats://127.0.0.1:$PORT"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/subbus-demo.XXXXXX")
# The user's nats contexts must not redirect the demo: point the nats
# configuration directory at an empty one.
export XDG_CONFIG_HOME="$TMP/config"
unset NATS_CONTEXT NATS_CREDS NATS_NKEY NATS_USER NATS_PASSWORD NATS_TOKEN NATS_CERT NATS_KEY NATS_CA
WORKER_PID=
cleanup() {
	local rc=$?
	if [[ -n $WORKER_PID ]] && kill -0 "$WORKER_PID" 2>/dev/null; then
		kill -TERM "$WORKER_PID" 2>/dev/null || true
		wait "$WORKER_PID" 2>/dev/null || true
	fi
	if [[ $rc -ne 0 && -s $TMP/worker.log ]]; then
		echo "--- last worker log lines ---" >&2
		tail -n 20 "$TMP/worker.log" >&2
	fi
	rm -rf "$TMP"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cat >"$TMP/substrate_config.yaml" <<EOF
worker:
  host: demo
  drivers: [process]
  grace_period: 10s
nats:
  listen: 127.0.0.1:$PORT
  data_dir: $TMP/nats
process:
  state_dir: $TMP/process
global:
  enable_metrics: true
  metrics_interval: 2s
EOF

say "Starting a worker: embedded NATS on 127.0.0.1:$PORT, process driver, state in $TMP"
# The worker must not connect elsewhere: no NATS_URL for it (it embeds).
env -u NATS_URL "$WORKER" --config "$TMP/substrate_config.yaml" --log-format json >"$TMP/worker.log" 2>&1 &
WORKER_PID=$!

# Wait until the worker answers discovery.
for i in $(seq 1 100); do
	if "$SUBBUS" workers >/dev/null 2>&1; then break; fi
	kill -0 "$WORKER_PID" 2>/dev/null || fail "the worker exited during startup"
	[[ $i -eq 100 ]] && fail "the worker did not come up within 20s"
	sleep 0.2
done

step() { # step DESCRIPTION -- ARGS...: narrate, run subbus, stop on failure
	local desc=$1
	shift
	say "$desc"
	show "$@"
	"$SUBBUS" "$@" || fail "subbus $* (exit $?)"
}

NAME="demo-web-$$"
step "Which workers are on the bus?" workers
step "What can the process driver do?" process capabilities
step "Create an instance: for the process driver, --image is the executable" \
	process create "$NAME" --image /bin/sh --env GREETING=hello --label demo=true \
	-- -c 'echo "$GREETING from $$"; i=0; while true; do i=$((i+1)); echo "tick $i"; sleep 1; done'
step "Start it" process start "$NAME"
step "List the instances" process list
step "Show one instance" process get "$NAME"

say "Run a command inside it; subbus exits with the command's status"
show process exec "$NAME" -- /bin/sh -c 'echo in the instance: $PWD; exit 3'
set +e
"$SUBBUS" process exec "$NAME" -- /bin/sh -c 'echo in the instance: $PWD; exit 3'
rc=$?
set -e
[[ $rc -eq 3 ]] || fail "exec exited $rc, want 3"
echo "${G}exit status: $rc (propagated)$N"

sleep 2 # let it tick a little
step "Its output" process logs "$NAME" --lines 5
step "Its resource usage" process metrics "$NAME"
step "Stop it (gracefully, within 5s)" process stop "$NAME" --timeout 5s
step "Delete it" process delete "$NAME"

say "Errors have codes and exit statuses"
show process get "$NAME"
set +e
"$SUBBUS" process get "$NAME"
rc=$?
set -e
[[ $rc -eq 4 ]] || fail "get of a deleted instance exited $rc, want 4 (not_found)"
show docker list --host nowhere
set +e
"$SUBBUS" docker list --host nowhere
rc=$?
set -e
[[ $rc -eq 11 ]] || fail "a driver nobody serves exited $rc, want 11 (no_worker)"

# Events reach the stream asynchronously: wait for the delete.
for i in $(seq 1 50); do
	if "$SUBBUS" events --instance "$NAME" --type deleted --json 2>/dev/null | grep -q deleted; then break; fi
	[[ $i -eq 50 ]] && fail "the deleted event did not reach SUBSTRATE_EVENTS"
	sleep 0.2
done
step "The instance's life, from the SUBSTRATE_EVENTS stream" events --instance "$NAME"

say "Shutting the worker down (SIGTERM)"
kill -TERM "$WORKER_PID"
if wait "$WORKER_PID"; then
	WORKER_PID=
	echo "${G}worker stopped cleanly$N"
else
	rc=$?
	WORKER_PID=
	fail "the worker exited with status $rc on SIGTERM"
fi
say "${G}Demo complete.$N"
