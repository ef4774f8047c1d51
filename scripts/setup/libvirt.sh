#!/usr/bin/env bash
# Installs and starts libvirt (Debian's libvirt-daemon-system + QEMU) for the
# tests and builds the offline test guest, idempotently and fast when
# everything is already there:
#   - the packages libvirt-daemon-system, libvirt-clients, qemu-system-x86,
#     qemu-utils (about 420 MiB installed), when missing;
#   - virtlogd and libvirtd, detached (-d; no systemd is needed), when
#     qemu:///system does not answer; the first connection after a start
#     takes ~8.5 s while libvirt probes QEMU, so this waits for it;
#   - a `default` dir storage pool on /var/lib/libvirt/images;
#   - the test guest: the Debian cloud kernel and a ~4 MB initramfs
#     (busybox-static as init, qemu-guest-agent and its libraries, the
#     virtio/ACPI modules, busybox acpid so the ACPI power button powers
#     off, a /sbin/shutdown for the agent's guest-shutdown), built from
#     .debs fetched with `apt-get download` and unpacked with dpkg-deb -x
#     (nothing of them is installed), cached in $state/guest;
#   - the base volume subbus-tiny-base.qcow2 (an empty 64 MiB qcow2) in the
#     default pool: the guest boots from its kernel and initrd, the disk is
#     what its internal snapshots are taken on.
# Exits non-zero when libvirtd cannot be made to answer or the guest cannot
# be built.
set -euo pipefail

state="${SUBBUS_SETUP_DIR:-/var/lib/subbus-test}/libvirt"
uri="${SUBBUS_LIBVIRT_URI:-qemu:///system}"
guest="$state/guest"
guest_version=5
mkdir -p "$state"
log() { echo "[setup libvirt] $*"; }

# 1. Packages.
need=()
for pkg in libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
	[ "$(id -u)" = 0 ] || { log "not root: cannot install ${need[*]}"; exit 1; }
	avail=$(df -Pm /usr | awk 'NR==2{print $4}')
	if [ "${avail:-0}" -lt 1024 ]; then
		log "only ${avail} MiB free on /usr, need ~1 GiB for ${need[*]}"
		exit 1
	fi
	log "installing ${need[*]} (~420 MiB)"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >/dev/null 2>&1 || true
	if ! apt-get install -y -qq --no-install-recommends "${need[@]}" >"$state/apt.log" 2>&1; then
		log "apt-get install failed; see $state/apt.log"
		tail -n 20 "$state/apt.log"
		exit 1
	fi
fi

# 2. The daemons.
answers() { timeout 30 virsh -c "$uri" version >/dev/null 2>&1; }
if ! answers; then
	[ "$(id -u)" = 0 ] || { log "libvirtd does not answer on $uri and only root can start it"; exit 1; }
	if ! pgrep -x virtlogd >/dev/null; then
		log "starting virtlogd"
		virtlogd -d
	fi
	if ! pgrep -x libvirtd >/dev/null; then
		log "starting libvirtd (log: $state/libvirtd.log)"
		LIBVIRT_LOG_OUTPUTS="3:file:$state/libvirtd.log" libvirtd -d
	fi
	ok=0
	for _ in $(seq 1 60); do
		if answers; then ok=1; break; fi
		sleep 1
	done
	if [ $ok != 1 ]; then
		log "libvirtd does not answer on $uri after 60 s"
		tail -n 20 "$state/libvirtd.log" 2>/dev/null || true
		exit 1
	fi
fi
log "libvirtd answers: $(virsh -c "$uri" version 2>/dev/null | tr '\n' ' ' | tr -s ' ')"

# 3. The default pool.
if ! virsh -c "$uri" pool-info default >/dev/null 2>&1; then
	log "defining the dir pool default on /var/lib/libvirt/images"
	mkdir -p /var/lib/libvirt/images
	virsh -c "$uri" pool-define-as default dir --target /var/lib/libvirt/images >/dev/null
	virsh -c "$uri" pool-autostart default >/dev/null || true
fi
if ! virsh -c "$uri" pool-info default 2>/dev/null | grep '^State:' | grep -q running; then
	virsh -c "$uri" pool-start default >/dev/null
fi

# 4. The test guest (kernel + initramfs), cached by recipe version.
if [ "$(cat "$guest/version" 2>/dev/null)" != "$guest_version" ] || [ ! -s "$guest/vmlinuz" ] || [ ! -s "$guest/initrd.gz" ]; then
	avail=$(df -Pm "$state" | awk 'NR==2{print $4}')
	if [ "${avail:-0}" -lt 300 ]; then
		log "only ${avail} MiB free in $state, need ~300 MiB to build the guest"
		exit 1
	fi
	log "building the test guest in $guest (offline, from Debian packages)"
	debs="$state/debs"
	x="$state/extract"
	rm -rf "$debs" "$x"
	mkdir -p "$debs" "$x" "$guest"
	# The cloud kernel's real package name (linux-image-cloud-amd64 is a metapackage).
	kpkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
	if [ -z "$kpkg" ]; then
		apt-get update -qq >/dev/null 2>&1 || true
		kpkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
	fi
	[ -n "$kpkg" ] || { log "cannot resolve linux-image-cloud-amd64 (apt-get update?)"; exit 1; }
	if ! (cd "$debs" && apt-get download -qq "$kpkg" busybox-static qemu-guest-agent liburing2 >"$state/download.log" 2>&1); then
		apt-get update -qq >/dev/null 2>&1 || true
		(cd "$debs" && apt-get download -qq "$kpkg" busybox-static qemu-guest-agent liburing2 >"$state/download.log" 2>&1) ||
			{ log "apt-get download failed; see $state/download.log"; exit 1; }
	fi
	for d in "$debs"/*.deb; do dpkg-deb -x "$d" "$x"; done
	kver=$(ls "$x/lib/modules" | head -1)
	r="$guest/rootfs"
	rm -rf "$r"
	mkdir -p "$r"/{bin,sbin,usr/sbin,proc,sys,dev,run,tmp,etc,var/log,lib/modules,lib64}
	cp "$x/bin/busybox" "$r/bin/busybox"
	for a in $("$r/bin/busybox" --list); do [ "$a" = busybox ] || ln -sf busybox "$r/bin/$a"; done
	ln -s /run "$r/var/run"
	cp "$x/usr/sbin/qemu-ga" "$r/usr/sbin/qemu-ga"
	# qemu-ga's shared libraries: liburing from the unpacked .deb, the rest
	# from this (Debian 12) host, each at the path the loader looks for.
	LD_LIBRARY_PATH="$x/usr/lib/x86_64-linux-gnu" ldd "$r/usr/sbin/qemu-ga" |
		awk '/=>/{print $3} /ld-linux/{print $1}' | while read -r lib; do
		[ -f "$lib" ] || continue
		dst=${lib#"$x"}
		mkdir -p "$r$(dirname "$dst")"
		cp -L "$lib" "$r$dst"
	done
	cp -L /lib64/ld-linux-x86-64.so.2 "$r/lib64/"
	mods="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_console virtio_balloon button evdev"
	for m in $mods; do
		f=$(find "$x/lib/modules/$kver" -name "$m.ko" | head -1)
		[ -n "$f" ] || { log "module $m.ko missing from $kpkg"; exit 1; }
		cp "$f" "$r/lib/modules/"
	done
	cat >"$r/etc/inittab" <<'EOF'
::sysinit:/etc/rcS
::respawn:/usr/sbin/qemu-ga -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0 -t /run
::respawn:/etc/subbus-acpid
::once:/etc/subbus-ticker
::shutdown:/bin/sync
EOF
	# The conformance tests' log lines: with SUBBUS_TICK_NAME in init's
	# environment (the driver passes a template's environment on the
	# kernel command line, and the kernel hands it to init), the guest
	# writes "subbus-conformance <name>", then "subbus-conformance tick N"
	# every second, to its serial console.
	cat >"$r/etc/subbus-ticker" <<'EOF'
#!/bin/sh
[ -n "$SUBBUS_TICK_NAME" ] || exit 0
sleep 1
echo "subbus-conformance $SUBBUS_TICK_NAME" >/dev/ttyS0
i=0
while :; do
	i=$((i+1))
	echo "subbus-conformance tick $i" >/dev/ttyS0
	sleep 1
done
EOF
	chmod 755 "$r/etc/subbus-ticker"
	cat >"$r/etc/rcS" <<EOF
#!/bin/sh
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev; mount -t tmpfs run /run
# No modules.dep in the image: load in dependency order, twice.
for pass in 1 2; do
	for m in $mods; do
		grep -q "^\$m " /proc/modules || insmod /lib/modules/\$m.ko 2>/dev/null
	done
done
# No udev: name the virtio serial ports like udev would.
mkdir -p /dev/virtio-ports
for i in 1 2 3 4 5 6 7 8 9 10; do
	ls /sys/class/virtio-ports/*/name >/dev/null 2>&1 && break
	sleep 0.2
done
for p in /sys/class/virtio-ports/*; do
	[ -e "\$p/name" ] && ln -sf /dev/\$(basename \$p) /dev/virtio-ports/\$(cat \$p/name)
done
hostname subbus-guest
echo "subbus-guest ready: \$(ls /dev/virtio-ports)" >/dev/ttyS0
EOF
	chmod 755 "$r/etc/rcS"
	# SUBBUS_IGNORE_STOP=1 (in the template's environment) makes a guest
	# that ignores ACPI and agent shutdowns: only a destroy ends it.
	printf '#!/bin/sh\n[ "$SUBBUS_IGNORE_STOP" = 1 ] && exec sleep 2147483647\nexec /bin/acpid -f -c /etc/acpi\n' >"$r/etc/subbus-acpid"
	chmod 755 "$r/etc/subbus-acpid"
	# busybox acpid chdir()s to its -c directory and runs PWRF/00000080 for KEY_POWER.
	mkdir -p "$r/etc/acpi/PWRF"
	printf '#!/bin/sh\nexec /bin/poweroff\n' >"$r/etc/acpi/PWRF/00000080"
	chmod 755 "$r/etc/acpi/PWRF/00000080"
	# qemu-ga's guest-shutdown runs /sbin/shutdown -h|-r ... +0 "...".
	printf '#!/bin/sh\n[ "$SUBBUS_IGNORE_STOP" = 1 ] && exit 0\ncase " $* " in *" -r "*) exec /bin/reboot ;; *) exec /bin/poweroff ;; esac\n' >"$r/sbin/shutdown"
	chmod 755 "$r/sbin/shutdown"
	ln -sf /bin/busybox "$r/init"
	(cd "$r" && find . | "$r/bin/busybox" cpio -o -H newc 2>/dev/null) | gzip -9 >"$guest/initrd.gz.tmp"
	mv "$guest/initrd.gz.tmp" "$guest/initrd.gz"
	cp "$x/boot/vmlinuz-$kver" "$guest/vmlinuz"
	chmod 644 "$guest/vmlinuz" "$guest/initrd.gz"
	rm -rf "$r" "$x" "$debs"
	echo "$guest_version" >"$guest/version"
	log "guest built: $(du -h "$guest/vmlinuz" "$guest/initrd.gz" | tr '\n' ' ')"
fi
chmod 755 "$state" "$guest" 2>/dev/null || true

# 5. The base volume the tests' overlays sit on.
if ! virsh -c "$uri" vol-info --pool default subbus-tiny-base.qcow2 >/dev/null 2>&1; then
	log "creating the base volume subbus-tiny-base.qcow2 in pool default"
	virsh -c "$uri" vol-create-as default subbus-tiny-base.qcow2 64M --format qcow2 >/dev/null
fi
log "ready: kernel $guest/vmlinuz, initrd $guest/initrd.gz, base volume default/subbus-tiny-base.qcow2"
