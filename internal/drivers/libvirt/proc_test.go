package libvirt

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestQemuProcessIn: the pid file's process counts only when its command
// line names the guest; its start time is boot time + starttime ticks.
func TestQemuProcessIn(t *testing.T) {
	dir := t.TempDir()
	run, proc := filepath.Join(dir, "run"), filepath.Join(dir, "proc")
	write := func(path, body string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(proc, "stat"), "cpu  1 2 3\nbtime 1700000000\nprocesses 9\n")
	// starttime (field 22) 12345 ticks = 123.45 s after boot; the name has
	// a space and a parenthesis.
	stat := "4242 (qemu-system (x) 86) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 3 0 12345 1000 100\n"
	write(filepath.Join(proc, "4242", "stat"), stat)
	write(filepath.Join(proc, "4242", "cmdline"), "/usr/bin/qemu-system-x86_64\x00-name\x00guest=fd-web,debug-threads=on\x00")
	write(filepath.Join(proc, "4343", "stat"), stat)
	write(filepath.Join(proc, "4343", "cmdline"), "/usr/bin/qemu-system-x86_64\x00-name\x00guest=fd-webx\x00")
	write(filepath.Join(run, "fd-web.pid"), "4242\n")
	write(filepath.Join(run, "fd-stale.pid"), "4343")
	write(filepath.Join(run, "fd-gone.pid"), "4444")
	write(filepath.Join(run, "fd-junk.pid"), "x")
	want := time.Unix(1700000000, 0).Add(123450 * time.Millisecond)
	for _, tc := range []struct {
		name  string
		pid   int
		start time.Time
	}{
		{"fd-web", 4242, want},
		{"fd-stale", 0, time.Time{}}, // the process is another guest's
		{"fd-webx", 0, time.Time{}},  // no pid file
		{"fd-gone", 0, time.Time{}},  // no such process
		{"fd-junk", 0, time.Time{}},  // not a number
	} {
		pid, start := qemuProcessIn(run, proc, tc.name)
		if pid != tc.pid || !start.Equal(tc.start) {
			t.Errorf("%s: %d, %v; want %d, %v", tc.name, pid, start, tc.pid, tc.start)
		}
	}
	// This test's own process started within the last hour, before now.
	if s := procStart("/proc", os.Getpid()); s.After(time.Now()) || time.Since(s) > time.Hour {
		t.Errorf("start of this process read as %v", s)
	}
}
