package libvirt

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/manager/driverstest"
	"github.com/subbus/subbus/internal/testenv"
)

// The test guest and base volume scripts/setup/libvirt.sh makes.
const (
	baseVolume = "subbus-tiny-base.qcow2"
	howToStart = "bash scripts/setup/libvirt.sh (installs libvirt + QEMU, starts virtlogd and libvirtd, builds the test guest)"
	// testPrefix starts every domain, volume and network the tests make.
	testPrefix = "lv"
)

// guestDir is where the setup script caches the guest's kernel and initrd.
func guestDir() string {
	dir := os.Getenv("SUBBUS_SETUP_DIR")
	if dir == "" {
		dir = "/var/lib/subbus-test"
	}
	return filepath.Join(dir, "libvirt", "guest")
}

// testOptions are the driver options of the tests: the tiny guest booted
// directly from its kernel, quiet so kernel messages do not cut the
// guest's console lines.
func testOptions() Options {
	o := DefaultOptions()
	if u := os.Getenv("SUBBUS_LIBVIRT_URI"); u != "" {
		o.URI = u
	}
	o.Kernel = filepath.Join(guestDir(), "vmlinuz")
	o.Initrd = filepath.Join(guestDir(), "initrd.gz")
	o.Cmdline = "console=ttyS0 quiet panic=-1"
	return o
}

// requireLibvirt returns a connected driver, or skips (fails in CI) when
// libvirtd, the test guest or the base volume is missing.
func requireLibvirt(t testing.TB) *Driver {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d := New(testOptions())
	err := d.Connect(ctx)
	if err == nil {
		for _, f := range []string{d.opts.Kernel, d.opts.Initrd} {
			if _, serr := os.Stat(f); serr != nil {
				err = fmt.Errorf("test guest: %w", serr)
			}
		}
	}
	if err == nil {
		l, _ := d.conn()
		var pool golibvirt.StoragePool
		pool, err = l.StoragePoolLookupByName(d.opts.Pool)
		if err == nil {
			_, err = l.StorageVolLookupByName(pool, baseVolume)
		}
	}
	testenv.Require(t, "libvirtd with the test guest", err, howToStart)
	t.Cleanup(func() { _ = d.Close() })
	return d
}

func randName(tag string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return testPrefix + "-" + tag + "-" + hex.EncodeToString(b)
}

// testNet is the isolated network (no <forward>, no addresses) the tests
// attach to; transient, destroyed by TestMain.
var testNet struct {
	once sync.Once
	name string
	err  error
}

func testNetwork(t testing.TB, d *Driver) string {
	t.Helper()
	testNet.once.Do(func() {
		l, err := d.conn()
		if err != nil {
			testNet.err = err
			return
		}
		b := make([]byte, 3)
		_, _ = rand.Read(b)
		name := testPrefix + "-net-" + hex.EncodeToString(b)
		x, err := (&libvirtxml.Network{Name: name,
			Bridge: &libvirtxml.NetworkBridge{Name: "lvbr" + hex.EncodeToString(b), STP: "off"}}).Marshal()
		if err != nil {
			testNet.err = err
			return
		}
		if _, err := l.NetworkCreateXML(x); err != nil {
			testNet.err = fmt.Errorf("creating the isolated network %s: %w", name, err)
			return
		}
		testNet.name = name
	})
	if testNet.err != nil {
		t.Fatal(testNet.err)
	}
	return testNet.name
}

func TestMain(m *testing.M) {
	code := m.Run()
	if testNet.name != "" {
		d := New(testOptions())
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		if d.Connect(ctx) == nil {
			l, _ := d.conn()
			if n, err := l.NetworkLookupByName(testNet.name); err == nil {
				_ = l.NetworkDestroy(n)
			}
			_ = d.Close()
		}
		cancel()
	}
	os.Exit(code)
}

type harness struct{ t *testing.T }

func (h *harness) MakeDriver(ctx context.Context) (drivers.Driver, error) {
	return New(testOptions()), nil
}

// Template: the tiny guest writes the conformance lines when
// SUBBUS_TICK_NAME is in its environment (scripts/setup/libvirt.sh); the
// environment reaches it on the kernel command line.
func (h *harness) Template(name string) drivers.InstanceTemplate {
	return drivers.InstanceTemplate{
		Name:        name,
		BaseImage:   baseVolume,
		Resources:   drivers.ResourceLimits{MemoryMB: 256, CPUCores: 1},
		Environment: map[string]string{"SUBBUS_CONFORMANCE": "1", "SUBBUS_TICK_NAME": name},
		Metadata:    map[string]string{"suite": "conformance"},
	}
}

// StubbornTemplate: with SUBBUS_IGNORE_STOP=1 the guest runs no acpid and
// its /sbin/shutdown does nothing, so only a destroy ends it.
func (h *harness) StubbornTemplate(name string) drivers.InstanceTemplate {
	t := h.Template(name)
	t.Environment["SUBBUS_IGNORE_STOP"] = "1"
	return t
}

// Unreachable is a driver pointed at a socket where nothing listens.
func (h *harness) Unreachable(ctx context.Context) (drivers.Driver, error) {
	o := testOptions()
	o.URI = "qemu:///system?socket=" + filepath.Join(h.t.TempDir(), "none.sock")
	return New(o), nil
}

func (h *harness) Network() string {
	d := New(testOptions())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := d.Connect(ctx); err != nil {
		h.t.Fatal(err)
	}
	defer d.Close()
	return testNetwork(h.t, d)
}

func (h *harness) Close() {}

func TestConformance(t *testing.T) {
	d := requireLibvirt(t)
	testNetwork(t, d)
	all := drivers.Capabilities{Exec: true, Logs: true, Limits: true, Snapshots: true, Clone: true, Networks: true, Events: true,
		LogOrder: true}
	driverstest.RunConformanceTests(t,
		func(ctx context.Context, t *testing.T) (driverstest.Harness, error) { return &harness{t: t}, nil },
		driverstest.WithCapabilities(all),
		driverstest.WithNamePrefix(testPrefix),
		driverstest.WithOperationTimeout(120*time.Second),
		driverstest.WithSettleTimeout(90*time.Second),
		driverstest.WithStopTimeout(60*time.Second),
	)
}
