#!/usr/bin/env bash
# Starts LXD (Debian's lxd package) for the tests and prepares its offline
# fixtures, idempotently and fast when everything is already there:
#   - the daemon, detached (`lxd --group root`), if its socket does not answer;
#   - `lxd init --preseed` (a `dir` pool named default, a default profile with
#     a root disk and no NIC) if no storage pool exists yet;
#   - the image alias subbus-busybox, built offline from busybox-static.
# No systemd is needed; nothing is downloaded. Exits non-zero when LXD cannot
# be made to answer.
set -euo pipefail

state="${SUBBUS_SETUP_DIR:-/var/lib/subbus-test}/lxd"
alias_name="${SUBBUS_LXD_IMAGE:-subbus-busybox}"
mkdir -p "$state"
log() { echo "[setup lxd] $*"; }

command -v lxd >/dev/null || { log "lxd is not installed (apt-get install lxd)"; exit 1; }
command -v busybox >/dev/null || { log "busybox is not installed (apt-get install busybox-static)"; exit 1; }
# openssl (in Debian's base system) makes the HTTPS client certificate.
command -v openssl >/dev/null || { log "openssl is not installed (apt-get install openssl)"; exit 1; }
if ldd "$(readlink -f "$(command -v busybox)")" >/dev/null 2>&1; then
	log "$(command -v busybox) is dynamically linked and cannot run in the image: install busybox-static"
	exit 1
fi

# 1. The daemon.
if ! timeout 5 lxc query /1.0 >/dev/null 2>&1; then
	log "starting lxd (log: $state/lxd.log)"
	setsid nohup lxd --group root --logfile "$state/lxd.log" >"$state/lxd.out" 2>&1 < /dev/null &
	if ! timeout 70 lxd waitready --timeout=60; then
		log "lxd did not answer within 60s; see $state/lxd.log"
		tail -n 20 "$state/lxd.log" "$state/lxd.out" 2>/dev/null || true
		exit 1
	fi
fi

# 2. Storage and the default profile (only on a fresh daemon).
if [ "$(lxc query /1.0/storage-pools 2>/dev/null | tr -d ' \n')" = "[]" ]; then
	log "initialising: dir pool 'default', default profile without NIC"
	lxd init --preseed <<'YAML'
config: {}
storage_pools:
- name: default
  driver: dir
profiles:
- name: default
  devices:
    root:
      path: /
      pool: default
      type: disk
YAML
fi

# 3. HTTPS on the loopback only (for the remote-transport tests), with a
#    client certificate the server trusts, in $state/client.{crt,key}.
https_addr="${SUBBUS_LXD_HTTPS:-127.0.0.1:8443}"
if [ -z "$(lxc config get core.https_address 2>/dev/null)" ]; then
	lxc config set core.https_address "$https_addr"
fi
if [ ! -s "$state/client.crt" ] || [ ! -s "$state/client.key" ]; then
	log "making the HTTPS client certificate $state/client.crt"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:secp384r1 -nodes -days 3650 \
		-subj "/CN=subbus-test" -keyout "$state/client.key" -out "$state/client.crt" >/dev/null 2>&1
fi
fp=$(openssl x509 -in "$state/client.crt" -noout -fingerprint -sha256 | cut -d= -f2 | tr -d : | tr 'A-F' 'a-f')
if ! lxc query "/1.0/certificates/$fp" >/dev/null 2>&1; then
	lxc config trust add "$state/client.crt" >/dev/null
fi

# 4. The test image: a busybox rootfs whose init is a shell script that
#    writes "subbus-conformance <hostname>" to the console, then a line
#    "subbus-conformance tick N" every second; it exits on SIGPWR (LXD's
#    halt signal) or SIGTERM unless SUBBUS_IGNORE_STOP=1. The image carries
#    the version of this recipe; an older one is replaced.
image_version=2
if lxc image info "$alias_name" 2>/dev/null | grep -q "subbus_version: $image_version\$"; then
	exit 0
fi
if lxc image info "$alias_name" >/dev/null 2>&1; then
	log "replacing an older $alias_name"
	lxc image delete "$alias_name"
fi
log "building image $alias_name offline from $(command -v busybox)"
build="$state/image"
rm -rf "$build"
mkdir -p "$build/rootfs"/{bin,sbin,usr/bin,usr/sbin,etc,dev,proc,sys,tmp,root,run,var/log}
chmod 1777 "$build/rootfs/tmp"
cp "$(readlink -f "$(command -v busybox)")" "$build/rootfs/bin/busybox"
for applet in $("$build/rootfs/bin/busybox" --list-full); do
	[ "$applet" = bin/busybox ] && continue
	[ -e "$build/rootfs/$applet" ] || ln -s /bin/busybox "$build/rootfs/$applet"
done
rm -f "$build/rootfs/sbin/init"
cat >"$build/rootfs/sbin/init" <<'INIT'
#!/bin/sh
# subbus test image init: PID 1 in an LXD container.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
if [ "$SUBBUS_IGNORE_STOP" = 1 ]; then
	trap '' PWR TERM INT
else
	trap 'echo "subbus-init: stopping" >/dev/console; exit 0' PWR TERM INT
fi
mount -t tmpfs tmpfs /run 2>/dev/null
echo "subbus-conformance $(hostname)" >/dev/console
i=0
while :; do
	i=$((i+1))
	echo "subbus-conformance tick $i" >/dev/console
	sleep 1 &
	wait $!
done
INIT
chmod 755 "$build/rootfs/sbin/init"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$build/rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$build/rootfs/etc/group"
printf 'root::0:0:99999:7:::\n' >"$build/rootfs/etc/shadow"
echo subbus >"$build/rootfs/etc/hostname"
: >"$build/rootfs/etc/hosts"
cat >"$build/metadata.yaml" <<META
architecture: x86_64
creation_date: $(date +%s)
properties:
  description: subbus test image (busybox-static)
  os: busybox
  release: test
  subbus_version: "$image_version"
META
tar -C "$build" -czf "$build/meta.tar.gz" metadata.yaml
tar -C "$build/rootfs" --numeric-owner -czf "$build/rootfs.tar.gz" .
lxc image import "$build/meta.tar.gz" "$build/rootfs.tar.gz" --alias "$alias_name" >/dev/null
log "imported $alias_name"
