package libvirt_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/cli"
	"github.com/subbus/subbus/internal/cli/clitest"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/drivers/libvirt"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/messages"
)

const e2eBase = "subbus-tiny-base.qcow2"

// e2eOptions boot the test guest of scripts/setup/libvirt.sh directly
// from its kernel, as the package's own tests do.
func e2eOptions() libvirt.Options {
	dir := os.Getenv("SUBBUS_SETUP_DIR")
	if dir == "" {
		dir = "/var/lib/subbus-test"
	}
	o := libvirt.DefaultOptions()
	o.Kernel = filepath.Join(dir, "libvirt", "guest", "vmlinuz")
	o.Initrd = filepath.Join(dir, "libvirt", "guest", "initrd.gz")
	o.Cmdline = "console=ttyS0 quiet panic=-1"
	return o
}

// startFleet skips (fails in CI) without libvirtd and the test guest, then
// starts a worker serving the libvirt driver and the CLI pointed at it.
func startFleet(t testing.TB) *clitest.Fleet {
	t.Helper()
	probe, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d := libvirt.New(e2eOptions())
	err := d.Connect(probe)
	if err == nil {
		_, err = os.Stat(e2eOptions().Kernel)
	}
	_ = d.Close()
	testenv.Require(t, "libvirtd with the test guest", err, "bash scripts/setup/libvirt.sh")
	host := clitest.Unique("e2e")
	return clitest.StartFleet(t, host, 180*time.Second,
		manager.New(libvirt.New(e2eOptions()), manager.Options{Host: host, CacheTTL: -1}))
}

// removeAfter force-deletes domains with virsh-free means (the driver) when
// the test ends, whatever happened.
func removeAfter(t *testing.T, names ...string) {
	t.Cleanup(func() {
		d := libvirt.New(e2eOptions())
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if d.Connect(ctx) != nil {
			return
		}
		defer d.Close()
		for _, n := range names {
			_, _ = d.Delete(ctx, n, drivers.DeleteOptions{Force: true})
		}
	})
}

// TestEndToEndCLI drives libvirt through a worker with the subbus libvirt
// commands, as a user would type them. One guest boots (twice: the
// restart); the clone is only defined.
func TestEndToEndCLI(t *testing.T) {
	f := startFleet(t)
	name, clone := clitest.Unique("lv-e2e"), clitest.Unique("lv-e2e-clone")
	removeAfter(t, name, clone)

	f.OK("libvirt", "create", name, "--image", e2eBase, "--memory", "256", "--env", "SUBBUS_TICK_NAME="+name,
		"--env", "GREETING=hi", "--label", "team=e2e")
	var inst messages.Instance
	if err := json.Unmarshal([]byte(f.OK("libvirt", "get", name, "--json")), &inst); err != nil {
		t.Fatalf("get --json: %v", err)
	}
	if inst.State != drivers.StateStopped || !inst.Managed || inst.Limits.MemoryMB != 256 || inst.Metadata["team"] != "e2e" || inst.Image != e2eBase {
		t.Errorf("created instance %+v", inst)
	}
	f.Expect(cli.ExitAlreadyExists, "libvirt", "create", name, "--image", e2eBase)
	if r := f.Run("libvirt", "create", clitest.Unique("lv-e2e-noimg"), "--image", "lv-nope.qcow2"); r.Code != cli.ExitNotFound || !strings.Contains(r.Stderr, "lv-nope.qcow2") {
		t.Errorf("create with a missing image exited %d (%s), want not_found naming the image", r.Code, r.Stderr)
	}
	// Snapshot and clone while shut off (a clone needs a shut-off source).
	f.OK("libvirt", "snapshot", "create", name, "s1")
	if out := f.OK("libvirt", "snapshot", "list", name); !strings.Contains(out, "s1") {
		t.Errorf("snapshot list: %q", out)
	}
	f.OK("libvirt", "clone", name, clone)
	if out := f.OK("libvirt", "list"); !strings.Contains(out, name) || !strings.Contains(out, clone) {
		t.Errorf("list lacks %s or %s: %q", name, clone, out)
	}
	f.OK("libvirt", "limits", "set", name, "--cpu", "2", "--memory", "384")
	var lim messages.ResourceLimits
	if err := json.Unmarshal([]byte(f.OK("libvirt", "limits", "get", name, "--json")), &lim); err != nil || lim.CPUCores != 2 || lim.MemoryMB != 384 {
		t.Errorf("limits get: %+v (%v), want 2 cores and 384 MB", lim, err)
	}

	f.OK("libvirt", "start", name)
	if r := f.Run("libvirt", "exec", name, "--", "sh", "-c", `echo "$GREETING"; echo oops >&2; exit 3`); r.Code != 3 || r.Stdout != "hi\n" || r.Stderr != "oops\n" {
		t.Errorf("exec: exit %d stdout %q stderr %q, want 3, \"hi\\n\", \"oops\\n\"", r.Code, r.Stdout, r.Stderr)
	}
	testenv.Eventually(t, 60*time.Second, func() error {
		if out := f.OK("libvirt", "logs", name, "--lines", "50"); !strings.Contains(out, "subbus-conformance "+name) {
			return fmt.Errorf("logs: %q", out)
		}
		return nil
	})
	var u messages.ResourceUsage
	if err := json.Unmarshal([]byte(f.OK("libvirt", "metrics", name, "--json")), &u); err != nil {
		t.Fatalf("metrics --json: %v", err)
	}
	if u.MemoryMB <= 0 || !u.Measured.Has(drivers.MeasureCPU|drivers.MeasureMemory) {
		t.Errorf("metrics %+v", u)
	}
	if out := f.OK("libvirt", "network", "list"); out == "" {
		t.Errorf("network list printed nothing")
	}
	f.OK("libvirt", "restart", name, "--timeout", "60s")
	f.OK("libvirt", "stop", name, "--timeout", "60s")
	if err := json.Unmarshal([]byte(f.OK("libvirt", "get", name, "--json")), &inst); err != nil || inst.State != drivers.StateStopped {
		t.Errorf("after stop: %+v (%v)", inst, err)
	}
	f.OK("libvirt", "snapshot", "restore", name, "s1")
	f.OK("libvirt", "snapshot", "delete", name, "s1")
	f.OK("libvirt", "delete", name)
	f.Expect(cli.ExitNotFound, "libvirt", "get", name)
	f.OK("libvirt", "delete", clone, "--force")
	if out := f.OK("libvirt", "health"); !strings.Contains(out, "9.") && !strings.Contains(out, "domain_type") {
		t.Errorf("health output: %s", out)
	}
}

// TestOutOfBandEventsInStream: `virsh define` and `virsh undefine` typed
// by hand reach the event stream through a running worker.
func TestOutOfBandEventsInStream(t *testing.T) {
	f := startFleet(t)
	name := clitest.Unique("lv-e2e-oob")
	removeAfter(t, name)
	events := f.WatchEvents("libvirt", name)
	f.OK("libvirt", "create", name, "--image", e2eBase)
	// A second definition by hand (same XML) is a definition update; an
	// undefine by hand is a vanished event.
	if out, err := exec.Command("virsh", "undefine", name).CombinedOutput(); err != nil {
		t.Fatalf("virsh undefine: %v %s", err, out)
	}
	events.WaitNative(t, drivers.EventVanished, 60*time.Second)
	if out, err := exec.Command("virsh", "vol-delete", "--pool", "default", name+".qcow2").CombinedOutput(); err != nil {
		t.Errorf("removing the overlay left by the undefine by hand: %v %s", err, out)
	}
}
