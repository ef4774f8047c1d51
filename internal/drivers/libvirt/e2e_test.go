package libvirt_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/cli/clitest"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/drivers/libvirt"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/testenv"
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
