package libvirt

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"libvirt.org/go/libvirtxml"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/messages"
)

// libvirtdPID returns the pid of the running libvirtd, or 0.
func libvirtdPID(t *testing.T) int {
	t.Helper()
	out, err := exec.Command("pgrep", "-x", "libvirtd").Output()
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.Fields(string(out))[0])
	return pid
}

// TestLibvirtdRestart kills libvirtd under a manager and starts it again:
// calls answer unavailable and open the breaker, EnsureConnected
// reconnects once libvirtd is back, and the event feed resumes on the new
// connection with a resync (a domain defined right after the restart is
// seen, and so is its undefine).
func TestLibvirtdRestart(t *testing.T) {
	d := requireLibvirt(t)
	if os.Getuid() != 0 || !d.local() {
		t.Skip("restarting libvirtd needs root and a local URI")
	}
	pid := libvirtdPID(t)
	if pid == 0 {
		t.Skip("no libvirtd process to restart (is it socket-activated?)")
	}
	_ = d.Close()

	m := manager.New(New(testOptions()), manager.Options{RetryAttempts: 1, BreakerFailures: 1,
		BreakerOpenTimeout: 500 * time.Millisecond, CacheTTL: -1})
	defer m.Close()
	var mu sync.Mutex
	var seen []messages.Event
	defer m.Subscribe(func(e messages.Event) { mu.Lock(); seen = append(seen, e); mu.Unlock() })()
	has := func(name string, typ drivers.EventType) error {
		mu.Lock()
		defer mu.Unlock()
		for _, e := range seen {
			if e.Instance == name && e.Type == typ {
				return nil
			}
		}
		var all []string
		for _, e := range seen {
			all = append(all, string(e.Type)+":"+e.Instance)
		}
		return fmt.Errorf("no %s event for %q among %v", typ, name, all)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := m.Connect(ctx); err != nil {
		t.Fatal(err)
	}

	// Kill libvirtd (the test's domains survive in their QEMU processes).
	t.Logf("%s killing libvirtd", time.Now().Format("04:05.000"))
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	restarted := false
	defer func() {
		if !restarted { // never leave the machine without libvirtd
			_ = exec.Command("libvirtd", "-d").Run()
		}
	}()
	testenv.Eventually(t, 30*time.Second, func() error {
		if err := syscall.Kill(pid, 0); err == nil {
			return fmt.Errorf("libvirtd %d still runs", pid)
		}
		return nil
	})
	_, err := m.List(ctx)
	if drivers.CodeOf(err) != drivers.Unavailable {
		t.Fatalf("List while libvirtd is down: %v (code %s), want unavailable", err, drivers.CodeOf(err))
	}
	if err := has("", drivers.EventDisconnected); err != nil {
		t.Error(err)
	}
	// The breaker (BreakerFailures 1) is open now: the next call fails fast.
	if _, err := m.Get(ctx, "anything"); drivers.CodeOf(err) != drivers.Unavailable || !strings.Contains(err.Error(), "breaker") {
		t.Errorf("Get with the breaker open: %v, want unavailable from the breaker", err)
	}
	if err := m.EnsureConnected(ctx); drivers.CodeOf(err) != drivers.Unavailable {
		t.Fatalf("EnsureConnected while libvirtd is down: %v, want unavailable", err)
	}

	// Start it again, as scripts/setup/libvirt.sh does.
	if out, err := exec.Command("libvirtd", "-d").CombinedOutput(); err != nil {
		t.Fatalf("libvirtd -d: %v: %s", err, out)
	}
	restarted = true
	testenv.Eventually(t, 90*time.Second, func() error { return m.EnsureConnected(ctx) })
	if _, err := m.List(ctx); err != nil {
		t.Fatalf("List after reconnecting: %v", err)
	}
	t.Logf("%s reconnected", time.Now().Format("04:05.000"))
	testenv.Eventually(t, 30*time.Second, func() error { return has("", drivers.EventConnected) })

	// A domain defined (outside subbus) after the restart shows up in the
	// resumed feed, and so does its removal.
	name := randName("restart")
	x, err := (&libvirtxml.Domain{Type: "qemu", Name: name, Memory: &libvirtxml.DomainMemory{Value: 64, Unit: "MiB"},
		OS: &libvirtxml.DomainOS{Type: &libvirtxml.DomainOSType{Arch: "x86_64", Type: "hvm"}}}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "d.xml")
	if err := os.WriteFile(f, []byte(x), 0o644); err != nil {
		t.Fatal(err)
	}
	virsh(t, "define", f)
	defer exec.Command("virsh", "-c", testOptions().URI, "undefine", name).Run()
	t.Logf("%s defined %s", time.Now().Format("04:05.000"), name)
	testenv.Eventually(t, 90*time.Second, func() error { return has(name, drivers.EventAppeared) })
	virsh(t, "undefine", name)
	testenv.Eventually(t, 60*time.Second, func() error { return has(name, drivers.EventVanished) })
}
