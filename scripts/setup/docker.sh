#!/usr/bin/env bash
# Starts dockerd if it does not answer, and builds the offline test image
# subbus-test/busybox:latest from Debian's busybox-static (no registry is
# ever contacted). Idempotent and fast when everything is already up.
#
# State (dockerd log, temporary rootfs) lives under $SUBBUS_SETUP_DIR.
# Exits non-zero when the daemon cannot be made to answer or the image
# cannot be built.
set -euo pipefail

SETUP_DIR="${SUBBUS_SETUP_DIR:-/var/lib/subbus-test}"
IMAGE="${SUBBUS_DOCKER_TEST_IMAGE:-subbus-test/busybox:latest}"
mkdir -p "$SETUP_DIR"

log() { echo "[setup docker] $*"; }

if ! command -v docker >/dev/null 2>&1 || ! command -v dockerd >/dev/null 2>&1; then
	log "docker/dockerd not installed (Debian package docker.io)"
	exit 1
fi

if ! docker info >/dev/null 2>&1; then
	if [ -n "${DOCKER_HOST:-}" ] && [[ "$DOCKER_HOST" != unix://* ]]; then
		log "DOCKER_HOST=$DOCKER_HOST does not answer and is not local; not starting a daemon"
		exit 1
	fi
	if [ "$(id -u)" != 0 ]; then
		log "dockerd is not running and only root can start it"
		exit 1
	fi
	log "starting dockerd (log: $SETUP_DIR/dockerd.log)"
	setsid nohup dockerd >"$SETUP_DIR/dockerd.log" 2>&1 </dev/null &
	for _ in $(seq 1 120); do
		docker info >/dev/null 2>&1 && break
		sleep 0.5
	done
	if ! docker info >/dev/null 2>&1; then
		log "dockerd did not answer within 60s; last log lines:"
		tail -n 20 "$SETUP_DIR/dockerd.log" || true
		exit 1
	fi
fi
log "dockerd answers: $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})')"

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
	log "image $IMAGE present"
	exit 0
fi

BUSYBOX=$(command -v busybox || true)
if [ -z "$BUSYBOX" ]; then
	log "busybox not installed (Debian package busybox-static)"
	exit 1
fi
if ldd "$BUSYBOX" >/dev/null 2>&1; then
	log "$BUSYBOX is dynamically linked and cannot run in the image: install busybox-static"
	exit 1
fi

work=$(mktemp -d "$SETUP_DIR/rootfs.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/root/bin" "$work/root/tmp" "$work/root/etc" "$work/root/root" \
	"$work/root/proc" "$work/root/sys" "$work/root/dev" "$work/root/var"
chmod 1777 "$work/root/tmp"
cp "$BUSYBOX" "$work/root/bin/busybox"
# Every applet as a symlink to /bin/busybox (sh, sleep, cat, dd, …).
for applet in $("$BUSYBOX" --list); do
	[ "$applet" = busybox ] || ln -sf busybox "$work/root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$work/root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$work/root/etc/group"
tar -C "$work/root" -cf "$work/rootfs.tar" .
docker import --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/bin' \
	-m "subbus offline test image (busybox-static)" "$work/rootfs.tar" "$IMAGE" >/dev/null
log "built $IMAGE"
