package libvirt

import (
	"bytes"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// qemuRunDir is where libvirtd's system QEMU driver keeps each running
// domain's pid file (<name>.pid).
const qemuRunDir = "/run/libvirt/qemu"

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's starttime: 100 on
// every Linux architecture this runs on.
const clockTicks = 100

// qemuProcess returns the PID of a running domain's QEMU process and
// when it started, read from this host's files: only for the local
// qemu:///system URI (0 and the zero time otherwise, or when the pid file
// is missing or names a process that is not this domain's QEMU).
func (d *Driver) qemuProcess(name string) (int, time.Time) {
	u, err := url.Parse(d.opts.URI)
	if err != nil || !d.local() || u.Scheme != "qemu" || u.Path != "/system" {
		return 0, time.Time{}
	}
	return qemuProcessIn(qemuRunDir, "/proc", name)
}

// qemuProcessIn is qemuProcess over the given run and proc directories.
func qemuProcessIn(runDir, proc, name string) (int, time.Time) {
	b, err := os.ReadFile(filepath.Join(runDir, name+".pid"))
	if err != nil {
		return 0, time.Time{}
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, time.Time{}
	}
	// A stale pid file may name another process: QEMU's command line
	// carries "-name guest=<name>,…".
	cmd, err := os.ReadFile(filepath.Join(proc, strconv.Itoa(pid), "cmdline"))
	if err != nil || !hasGuestName(cmd, name) {
		return 0, time.Time{}
	}
	return pid, procStart(proc, pid)
}

// hasGuestName reports whether a NUL-separated command line has the
// argument "guest=<name>" (alone or as the first of -name's options).
func hasGuestName(cmdline []byte, name string) bool {
	for _, arg := range bytes.Split(cmdline, []byte{0}) {
		if a, ok := strings.CutPrefix(string(arg), "guest="); ok {
			if n, _, _ := strings.Cut(a, ","); n == name {
				return true
			}
		}
	}
	return false
}

// procStart is when process pid started: its starttime (ticks since
// boot, field 22 of /proc/<pid>/stat) plus the boot time (btime in
// /proc/stat); the zero time when either cannot be read.
func procStart(proc string, pid int) time.Time {
	st, err := os.ReadFile(filepath.Join(proc, strconv.Itoa(pid), "stat"))
	if err != nil {
		return time.Time{}
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(st, ')')
	if i < 0 {
		return time.Time{}
	}
	f := strings.Fields(string(st[i+1:])) // f[0] is field 3
	if len(f) < 20 {
		return time.Time{}
	}
	ticks, err := strconv.ParseInt(f[19], 10, 64)
	if err != nil {
		return time.Time{}
	}
	sys, err := os.ReadFile(filepath.Join(proc, "stat"))
	if err != nil {
		return time.Time{}
	}
	for _, line := range strings.Split(string(sys), "\n") {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			boot, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return time.Time{}
			}
			start := time.Unix(boot, 0).Add(time.Duration(ticks) * time.Second / clockTicks)
			return start.UTC()
		}
	}
	return time.Time{}
}
