package lxc_test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/cli/clitest"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/drivers/lxc"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/testenv"
)

const e2eImage = "subbus-busybox"

// startWorker skips (fails in CI) without LXD and the test image, then
// starts a worker serving the lxc driver and the CLI pointed at it.
func startWorker(t *testing.T) *clitest.Fleet {
	t.Helper()
	// A generous probe: a busy LXD under CI load is slow, not absent.
	probe, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	d := lxc.New(lxc.DefaultOptions())
	err := d.Connect(probe)
	if err == nil {
		err = exec.Command("lxc", "image", "info", e2eImage).Run()
	}
	_ = d.Close()
	testenv.Require(t, "LXD with the "+e2eImage+" image", err, "bash scripts/setup/lxd.sh")

	host := clitest.Unique("e2e")
	return clitest.StartFleet(t, host, 120*time.Second, manager.New(lxc.New(lxc.DefaultOptions()), manager.Options{Host: host, CacheTTL: -1}))
}

// removeAfter force-deletes instances (and a network) with the lxc CLI
// when the test ends, whatever happened.
func removeAfter(t *testing.T, names ...string) {
	t.Cleanup(func() {
		for _, n := range names {
			_ = exec.Command("lxc", "delete", "--force", n).Run()
		}
	})
}

// TestOutOfBandEventsInStream: `lxc stop` and `lxc delete` typed by hand
// reach SUBSTRATE_EVENTS through a running worker.
func TestOutOfBandEventsInStream(t *testing.T) {
	f := startWorker(t)
	name := clitest.Unique("sbe2e-oob")
	removeAfter(t, name)
	f.OK("lxc", "create", name, "--image", e2eImage)
	f.OK("lxc", "start", name)

	events := f.WatchEvents("lxc", name)
	if out, err := exec.Command("lxc", "stop", "--force", name).CombinedOutput(); err != nil {
		t.Fatalf("lxc stop: %v %s", err, out)
	}
	if ev := events.WaitNative(t, drivers.EventStopped, 30*time.Second); ev.Host != f.Host || ev.Driver != "lxc" || ev.State != drivers.StateStopped {
		t.Errorf("stopped event %+v", ev)
	}
	if out, err := exec.Command("lxc", "delete", name).CombinedOutput(); err != nil {
		t.Fatalf("lxc delete: %v %s", err, out)
	}
	events.WaitNative(t, drivers.EventVanished, 30*time.Second)
}

// TestEndToEndExecStdin: exec -i feeds standard input to the command in
// the container; without -i it gets none. (The commands, the same on
// every driver, are the session of internal/e2etest.)
func TestEndToEndExecStdin(t *testing.T) {
	f := startWorker(t)
	name := clitest.Unique("sbe2e-stdin")
	removeAfter(t, name)
	f.OK("lxc", "create", name, "--image", e2eImage)
	f.OK("lxc", "start", name)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	input := "first line\nsecond line\n"
	go func() { _, _ = w.WriteString(input); _ = w.Close() }()
	saved := os.Stdin
	os.Stdin = r // the CLI reads the process's standard input
	t.Cleanup(func() { os.Stdin = saved; _ = r.Close() })
	res := f.Run("lxc", "exec", name, "-i", "--", "sh", "-c", "tr a-z A-Z; echo done >&2")
	if res.Code != 0 || res.Stdout != strings.ToUpper(input) || res.Stderr != "done\n" {
		t.Errorf("exec -i: exit %d stdout %q stderr %q, want 0, %q, \"done\\n\"", res.Code, res.Stdout, res.Stderr, strings.ToUpper(input))
	}
	os.Stdin = saved
	if res := f.Run("lxc", "exec", name, "--", "cat"); res.Code != 0 || res.Stdout != "" {
		t.Errorf("exec without -i: exit %d stdout %q, want 0 and nothing", res.Code, res.Stdout)
	}
}
