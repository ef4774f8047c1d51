#!/usr/bin/env bash
# Starts a supervisord for the tests with its own configuration under
# $SUBBUS_SETUP_DIR/supervisor (default /var/lib/subbus-test/supervisor):
#   supervisor.sock       unix socket (what the tests use by default)
#   127.0.0.1:29001/RPC2  HTTP transport with basic auth subbus:subbus-test
#   programs/*.conf       include directory the driver writes programs into
#   log/                  supervisord's and the programs' logs
# and one program defined in the main configuration (subbus-native), which
# the driver did not create: the tests use it to check that delete refuses it.
# Debian's own /etc/supervisor setup is not touched.
#
# Idempotent: a supervisord that already answers on the socket is left alone.
# Exits non-zero when supervisord cannot be made to answer within ~60 s.
set -euo pipefail

BASE="${SUBBUS_SETUP_DIR:-/var/lib/subbus-test}"
DIR="$BASE/supervisor"
CONF="$DIR/supervisord.conf"
SOCK="$DIR/supervisor.sock"
HTTP_PORT="${SUBBUS_SUPERVISOR_HTTP_PORT:-29001}"

log() { echo "[setup:supervisor] $*"; }

if ! command -v supervisord >/dev/null 2>&1; then
	log "supervisord is not installed (Debian package: supervisor)"
	exit 1
fi

mkdir -p "$DIR/programs" "$DIR/log"
chmod 0755 "$DIR" "$DIR/programs"

want=$(cat <<EOF
; supervisord for subbus tests (written by scripts/setup/supervisor.sh)
[unix_http_server]
file=$SOCK
chmod=0700

[inet_http_server]
port=127.0.0.1:$HTTP_PORT
username=subbus
password=subbus-test

[supervisord]
logfile=$DIR/log/supervisord.log
pidfile=$DIR/supervisord.pid
childlogdir=$DIR/log
identifier=subbus-test

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://$SOCK

; Defined here, not by the driver: the driver lists, starts and stops it but
; refuses to delete it.
[program:subbus-native]
command=/bin/sh -c 'echo subbus-native; while :; do sleep 1; done'
autostart=true
autorestart=true
stdout_logfile=$DIR/log/subbus-native.out
stderr_logfile=$DIR/log/subbus-native.err

[include]
files = $DIR/programs/*.conf
EOF
)
changed=0
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$want" ]; then
	printf '%s\n' "$want" >"$CONF.tmp"
	mv "$CONF.tmp" "$CONF"
	log "wrote $CONF"
	changed=1
fi

answers() {
	# supervisorctl prints the daemon's pid when it answers.
	local out
	out=$(timeout 10 supervisorctl -c "$CONF" pid 2>/dev/null) || return 1
	[[ "$out" =~ ^[0-9]+$ ]]
}

if answers; then
	if [ "$changed" = 0 ]; then
		log "supervisord answers on $SOCK"
		exit 0
	fi
	# Running with an older configuration: restart it with the new one.
	log "configuration changed: restarting supervisord"
	timeout 30 supervisorctl -c "$CONF" shutdown >/dev/null 2>&1 || true
	for _ in $(seq 1 60); do
		answers || break
		sleep 0.5
	done
	if answers; then
		log "supervisord did not shut down"
		exit 1
	fi
fi

# A stale socket or pidfile from a dead daemon would stop it from starting.
rm -f "$SOCK" "$DIR/supervisord.pid"
log "starting supervisord -c $CONF"
setsid nohup supervisord -n -c "$CONF" >"$DIR/log/supervisord.out" 2>&1 </dev/null &

for _ in $(seq 1 120); do
	if answers; then
		log "supervisord answers on $SOCK (http://127.0.0.1:$HTTP_PORT/RPC2)"
		exit 0
	fi
	sleep 0.5
done
log "supervisord did not answer within 60 s; see $DIR/log/supervisord.out"
tail -n 20 "$DIR/log/supervisord.out" >&2 || true
exit 1
