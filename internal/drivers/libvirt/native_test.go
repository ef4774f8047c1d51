package libvirt

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/testenv"
)

// virsh runs virsh against the tests' URI.
func virsh(t testing.TB, args ...string) string {
	t.Helper()
	uri := testOptions().URI
	out, err := exec.Command("virsh", append([]string{"-c", uri}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("virsh %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// events collects what a Watch emits.
type events struct {
	mu   sync.Mutex
	list []drivers.Event
}

func (e *events) emit(ev drivers.Event) {
	e.mu.Lock()
	e.list = append(e.list, ev)
	e.mu.Unlock()
}

func (e *events) find(name string, typ drivers.EventType, detail string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, ev := range e.list {
		if ev.Instance == name && ev.Type == typ && (detail == "" || ev.Details["libvirt_detail"] == detail) {
			return nil
		}
	}
	return fmt.Errorf("no %s event (detail %q) for %s among %d events", typ, detail, name, len(e.list))
}

// watch runs d.Watch in the background until the test ends.
func watch(t *testing.T, d *Driver) *events {
	t.Helper()
	var got events
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Watch(ctx, got.emit) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch: %v", err)
		}
	})
	return &got
}

// created creates a domain from the harness template, force-deleted at
// the end of the test.
func created(t *testing.T, d *Driver, tag string) string {
	t.Helper()
	name := randName(tag)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if _, err := d.Delete(ctx, name, drivers.DeleteOptions{Force: true}); err != nil {
			t.Errorf("cleanup: delete %s: %v", name, err)
		}
	})
	if _, err := d.Create(ctx, (&harness{}).Template(name)); err != nil {
		t.Fatalf("Create(%s): %v", name, err)
	}
	return name
}

func waitState(t *testing.T, d *Driver, name string, want drivers.State) {
	t.Helper()
	testenv.Eventually(t, 90*time.Second, func() error {
		in, err := d.Get(context.Background(), name)
		if err != nil {
			return err
		}
		if in.State != want {
			return fmt.Errorf("%s is %s, want %s", name, in.State, want)
		}
		return nil
	})
}

// TestOutsideChanges boots one guest and changes it with virsh: each
// change becomes an event of the driver's feed. A graceful stop under a
// short caller deadline answers Timeout and leaves the domain running.
func TestOutsideChanges(t *testing.T) {
	d := requireLibvirt(t)
	got := watch(t, d)
	name := created(t, d, "native")
	testenv.Eventually(t, 30*time.Second, func() error { return got.find(name, drivers.EventAppeared, "") })

	// Stopped: the disks, and neither PID nor start time.
	in, err := d.Get(context.Background(), name)
	if err != nil || in.PID != 0 || !in.StartedAt.IsZero() || len(in.Volumes) == 0 ||
		in.Volumes[0].Target != "vda" || !strings.HasSuffix(in.Volumes[0].Source, ".qcow2") {
		t.Fatalf("stopped: PID %d, StartedAt %v, Volumes %+v, %v; want none, none, vda from a .qcow2", in.PID, in.StartedAt, in.Volumes, err)
	}

	startedBefore := time.Now().Add(-time.Second) // /proc's start time has 10 ms ticks and whole-second boot time
	virsh(t, "start", name)
	startedAfter := time.Now().Add(time.Second)
	testenv.Eventually(t, 30*time.Second, func() error { return got.find(name, drivers.EventStarted, "") })

	// Running: the QEMU process (its command line names the guest) and
	// when it started.
	in, err = d.Get(context.Background(), name)
	if err != nil || in.PID == 0 {
		t.Fatalf("running: PID %d, %v; want QEMU's", in.PID, err)
	}
	if cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", in.PID)); err != nil || !strings.Contains(string(cmd), "guest="+name) {
		t.Errorf("PID %d is not the guest's QEMU: %q, %v", in.PID, cmd, err)
	}
	if in.StartedAt.Before(startedBefore) || in.StartedAt.After(startedAfter) {
		t.Errorf("StartedAt %v, want between %v and %v", in.StartedAt, startedBefore, startedAfter)
	}

	// Before the guest can react (it is still booting), a graceful stop
	// whose caller deadline passes answers Timeout and does not destroy.
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	began := time.Now()
	_, err = d.Stop(ctx, name, drivers.StopOptions{Timeout: time.Minute})
	cancel()
	if classify(err) != drivers.Timeout {
		t.Fatalf("Stop past the caller's deadline: %v (code %s), want timeout", err, classify(err))
	}
	if took := time.Since(began); took > 3*time.Second {
		t.Errorf("Stop returned %v after a 500ms deadline", took)
	}
	if in, err := d.Get(context.Background(), name); err != nil || in.State != drivers.StateRunning {
		t.Fatalf("after the timed-out stop: %+v, %v; want running", in, err)
	}

	// Exec works once the agent is up; then an ACPI shutdown by hand.
	ctx, cancel = context.WithTimeout(context.Background(), 90*time.Second)
	var out strings.Builder
	code, err := d.Exec(ctx, name, drivers.ExecRequest{Command: []string{"sh", "-c", "uname -s; exit 5"}}, &out, &strings.Builder{})
	cancel()
	if err != nil || code != 5 || out.String() != "Linux\n" {
		t.Fatalf("Exec: code %d, out %q, err %v; want 5, Linux", code, out.String(), err)
	}

	// An internal snapshot of the running guest (with its memory); restoring
	// it leaves the domain running. (Before the vcpu hot-plug below: QEMU
	// cannot load a memory state saved with hot-plugged vcpus.)
	ctx, cancel = context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if _, err := d.CreateSnapshot(ctx, name, "live"); err != nil {
		t.Fatalf("CreateSnapshot of a running domain: %v", err)
	}
	if err := d.RestoreSnapshot(ctx, name, "live"); err != nil {
		t.Fatalf("RestoreSnapshot: %v", err)
	}
	if in, err := d.Get(ctx, name); err != nil || in.State != drivers.StateRunning {
		t.Errorf("after restoring a snapshot taken running: %+v, %v; want running", in, err)
	}
	if err := d.DeleteSnapshot(ctx, name, "live"); err != nil {
		t.Errorf("DeleteSnapshot: %v", err)
	}

	// Live limits, up to the maxima set at create (2 vcpus, 512 MiB).
	lim, err := d.SetLimits(ctx, name, drivers.ResourceLimits{MemoryMB: 384, CPUCores: 2})
	if err != nil || lim.MemoryMB != 384 || lim.CPUCores != 2 {
		t.Errorf("live SetLimits(384 MB, 2 cores) = %+v, %v", lim, err)
	}
	if n := virsh(t, "vcpucount", name, "--live", "--current"); strings.TrimSpace(n) != "2" {
		t.Errorf("virsh vcpucount --live: %q, want 2", n)
	}
	if _, err := d.SetLimits(ctx, name, drivers.ResourceLimits{MemoryMB: 4096}); classify(err) != drivers.Conflict {
		t.Errorf("live SetLimits beyond the maximum: %v, want conflict", err)
	}

	virsh(t, "shutdown", name)
	testenv.Eventually(t, 60*time.Second, func() error {
		return got.find(name, drivers.EventStopped, fmt.Sprint(int(golibvirt.DomainEventStoppedShutdown)))
	})

	// virsh start, then destroy.
	virsh(t, "start", name)
	waitState(t, d, name, drivers.StateRunning)
	virsh(t, "destroy", name)
	testenv.Eventually(t, 30*time.Second, func() error {
		return got.find(name, drivers.EventStopped, fmt.Sprint(int(golibvirt.DomainEventStoppedDestroyed)))
	})

	// An undefine by hand is a vanished event (the cleanup's Delete then
	// finds nothing, which a force delete accepts).
	l, _ := d.conn()
	x, err := d.load(context.Background(), l, mustLookup(t, d, name), 0)
	if err != nil {
		t.Fatal(err)
	}
	virsh(t, "undefine", name)
	testenv.Eventually(t, 30*time.Second, func() error { return got.find(name, drivers.EventVanished, "") })
	for _, p := range x.owner.Volumes {
		virsh(t, "vol-delete", p)
	}
	_ = os.Remove(d.consoleLog(name))
}

func mustLookup(t *testing.T, d *Driver, name string) golibvirt.Domain {
	t.Helper()
	l, err := d.conn()
	if err != nil {
		t.Fatal(err)
	}
	dom, err := l.DomainLookupByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return dom
}

// leftovers lists the domains and pool volumes whose names start with name.
func leftovers(t *testing.T, d *Driver, name string) []string {
	t.Helper()
	l, err := d.conn()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	if _, err := l.DomainLookupByName(name); err == nil {
		out = append(out, "domain "+name)
	}
	pool, err := l.StoragePoolLookupByName(d.opts.Pool)
	if err != nil {
		t.Fatal(err)
	}
	_ = l.StoragePoolRefresh(pool, 0)
	vols, _, err := l.StoragePoolListAllVolumes(pool, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vols {
		if strings.HasPrefix(v.Name, name) {
			out = append(out, "volume "+v.Name)
		}
	}
	return out
}

// TestCreateDeadline ends the caller's ctx at each step of Create (and
// before it): Create answers Timeout and leaves neither a domain nor a
// volume behind.
func TestCreateDeadline(t *testing.T) {
	d := requireLibvirt(t)
	for _, step := range []string{"before", "volume", "domain"} {
		t.Run(step, func(t *testing.T) {
			name := randName("deadline")
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if step == "before" {
				cancel()
			}
			d.afterStep = func(s string) {
				if s == step {
					cancel()
				}
			}
			defer func() { d.afterStep = nil }()
			_, err := d.Create(ctx, (&harness{}).Template(name))
			if classify(err) != drivers.Timeout {
				_, _ = d.Delete(context.Background(), name, drivers.DeleteOptions{Force: true})
				t.Fatalf("Create with ctx ended after %q: %v (code %s), want timeout", step, err, classify(err))
			}
			if left := leftovers(t, d, name); len(left) > 0 {
				t.Errorf("Create ended after %q left %v behind", step, left)
			}
		})
	}
}

// TestDeleteKeepsForeignVolumes: Delete removes the overlay it created,
// never a volume it did not create (one attached by hand to a managed
// domain, or the disk of a domain defined outside subbus).
func TestDeleteKeepsForeignVolumes(t *testing.T) {
	d := requireLibvirt(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l, _ := d.conn()
	pool, err := l.StoragePoolLookupByName(d.opts.Pool)
	if err != nil {
		t.Fatal(err)
	}
	foreignVol := func(name string) string {
		x, err := (&libvirtxml.StorageVolume{Name: name, Capacity: &libvirtxml.StorageVolumeSize{Unit: "MiB", Value: 8},
			Target: &libvirtxml.StorageVolumeTarget{Format: &libvirtxml.StorageVolumeTargetFormat{Type: "qcow2"}}}).Marshal()
		if err != nil {
			t.Fatal(err)
		}
		v, err := l.StorageVolCreateXML(pool, x, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = l.StorageVolDelete(v, 0) })
		p, err := l.StorageVolGetPath(v)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	exists := func(path string) bool { _, err := l.StorageVolLookupByPath(path); return err == nil }
	disk := func(path, dev string) libvirtxml.DomainDisk {
		return libvirtxml.DomainDisk{Device: "disk", Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: "qcow2"},
			Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: path}},
			Target: &libvirtxml.DomainDiskTarget{Dev: dev, Bus: "virtio"}}
	}

	t.Run("managed", func(t *testing.T) {
		name := randName("own")
		if _, err := d.Create(ctx, (&harness{}).Template(name)); err != nil {
			t.Fatal(err)
		}
		dom := mustLookup(t, d, name)
		x, err := d.load(ctx, l, dom, 0)
		if err != nil {
			t.Fatal(err)
		}
		owned := x.owner.Volumes
		foreign := foreignVol(name + "-foreign.qcow2")
		dx, _ := (&libvirtxml.DomainDisk{Device: "disk", Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: "qcow2"},
			Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: foreign}},
			Target: &libvirtxml.DomainDiskTarget{Dev: "vdb", Bus: "virtio"}}).Marshal()
		if err := l.DomainAttachDeviceFlags(dom, dx, uint32(golibvirt.DomainDeviceModifyConfig)); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Delete(ctx, name, drivers.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if len(owned) != 1 || exists(owned[0]) {
			t.Errorf("the overlay %v this driver created is still there", owned)
		}
		if !exists(foreign) {
			t.Errorf("Delete removed %s, a volume it did not create", foreign)
		}
	})
	t.Run("unmanaged", func(t *testing.T) {
		name := randName("foreign")
		vol := foreignVol(name + ".qcow2")
		x, err := (&libvirtxml.Domain{Type: "qemu", Name: name,
			Memory:  &libvirtxml.DomainMemory{Value: 128, Unit: "MiB"},
			OS:      &libvirtxml.DomainOS{Type: &libvirtxml.DomainOSType{Arch: "x86_64", Type: "hvm"}},
			Devices: &libvirtxml.DomainDeviceList{Disks: []libvirtxml.DomainDisk{disk(vol, "vda")}}}).Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := l.DomainDefineXMLFlags(x, 0); err != nil {
			t.Fatal(err)
		}
		in, err := d.Get(ctx, name)
		if err != nil || in.Managed {
			t.Fatalf("Get(%s) = %+v, %v; want an unmanaged domain", name, in, err)
		}
		if _, err := d.Delete(ctx, name, drivers.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Get(ctx, name); classify(err) != drivers.NotFound {
			t.Errorf("Get after Delete: %v, want not_found", err)
		}
		if !exists(vol) {
			t.Errorf("Delete of an unmanaged domain removed its volume %s", vol)
		}
	})
}

// TestTemplateErrors: what a VM cannot be answers unsupported or
// invalid_argument naming the field, and creates nothing.
func TestTemplateErrors(t *testing.T) {
	d := requireLibvirt(t)
	base := func(name string) drivers.InstanceTemplate { return (&harness{}).Template(name) }
	cases := []struct {
		desc  string
		edit  func(*drivers.InstanceTemplate)
		code  drivers.Code
		field string
	}{
		{"command", func(t *drivers.InstanceTemplate) { t.Command = []string{"sh"} }, drivers.Unsupported, "command"},
		{"user", func(t *drivers.InstanceTemplate) { t.User = "root" }, drivers.Unsupported, "user"},
		{"volumes", func(t *drivers.InstanceTemplate) { t.Volumes = []drivers.Volume{{Source: "/x", Target: "/y"}} }, drivers.Unsupported, "volumes"},
		{"env with a space", func(t *drivers.InstanceTemplate) { t.Environment["A"] = "x y" }, drivers.InvalidArgument, "environment.A"},
		{"env bad name", func(t *drivers.InstanceTemplate) { t.Environment["a.b"] = "1" }, drivers.InvalidArgument, "environment"},
		{"env without a kernel", func(t *drivers.InstanceTemplate) { t.Metadata[MetaKernel], t.Metadata[MetaInitrd] = "", "" }, drivers.Unsupported, "environment"},
		{"relative kernel", func(t *drivers.InstanceTemplate) { t.Metadata[MetaKernel] = "vmlinuz" }, drivers.InvalidArgument, MetaKernel},
		{"static ip", func(t *drivers.InstanceTemplate) {
			t.Networks = []drivers.NetworkConfig{{NetworkName: "x", IPAddress: "10.0.0.2"}}
		}, drivers.Unsupported, "networks[0]"},
		{"no base image", func(t *drivers.InstanceTemplate) { t.BaseImage = "" }, drivers.InvalidArgument, "base_image"},
		{"missing base image", func(t *drivers.InstanceTemplate) { t.BaseImage = "lv-no-such-volume.qcow2" }, drivers.NotFound, "base_image"},
		{"missing network", func(t *drivers.InstanceTemplate) {
			t.Networks = []drivers.NetworkConfig{{NetworkName: "lv-no-such-net"}}
		}, drivers.NotFound, "lv-no-such-net"},
	}
	for _, c := range cases {
		t.Run(c.desc, func(t *testing.T) {
			name := randName("tmpl")
			tm := base(name)
			c.edit(&tm)
			_, err := d.Create(context.Background(), tm)
			if classify(err) != c.code || err == nil || !strings.Contains(err.Error(), c.field) {
				t.Errorf("Create: %v (code %s), want %s naming %q", err, classify(err), c.code, c.field)
			}
			if left := leftovers(t, d, name); len(left) > 0 {
				t.Errorf("a refused Create left %v", left)
			}
		})
	}
}

// TestErrorCode classifies libvirt's errors.
func TestErrorCode(t *testing.T) {
	cases := []struct {
		err  error
		want drivers.Code
	}{
		{golibvirt.Error{Code: uint32(golibvirt.ErrNoDomain), Message: "Domain not found"}, drivers.NotFound},
		{fmt.Errorf("x: %w", golibvirt.Error{Code: uint32(golibvirt.ErrNoStorageVol)}), drivers.NotFound},
		{golibvirt.Error{Code: uint32(golibvirt.ErrOperationInvalid), Message: "domain is not running"}, drivers.Conflict},
		{golibvirt.Error{Code: uint32(golibvirt.ErrOperationInvalid), Message: "cgroup CPU controller is not mounted"}, drivers.Unsupported},
		{golibvirt.Error{Code: uint32(golibvirt.ErrOperationFailed), Message: "domain 'x' already exists with uuid"}, drivers.AlreadyExists},
		{golibvirt.Error{Code: uint32(golibvirt.ErrAgentUnresponsive), Message: "QEMU guest agent is not connected"}, drivers.Conflict},
		{golibvirt.Error{Code: uint32(golibvirt.ErrOperationUnsupported)}, drivers.Unsupported},
		{golibvirt.Error{Code: uint32(golibvirt.ErrAccessDenied)}, drivers.PermissionDenied},
		{golibvirt.Error{Code: uint32(golibvirt.ErrXMLError)}, drivers.InvalidArgument},
		{golibvirt.ErrUnsupported, drivers.Unsupported},
		{&connError{uri: "qemu:///system", err: errConnectionLost}, drivers.Unavailable},
		{fmt.Errorf("x: %w", golibvirt.ErrInterrupted), drivers.Unavailable},
		{context.DeadlineExceeded, drivers.Timeout},
		{drivers.Errorf(drivers.Conflict, "x"), drivers.Conflict},
		{errors.New("boom"), drivers.Internal},
	}
	for _, c := range cases {
		if got := classify(c.err); got != c.want {
			t.Errorf("classify(%v) = %s, want %s", c.err, got, c.want)
		}
	}
}

// TestStatsFallback: libvirt's test driver reports no cpu.time in
// ConnectGetAllDomainStats, so metrics fall back to DomainGetInfo and
// DomainMemoryStats, and the mask says what came back. No guest boots.
func TestStatsFallback(t *testing.T) {
	requireLibvirt(t)
	o := testOptions()
	o.URI = "test:///default"
	d := New(o)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := d.Connect(ctx); err != nil {
		t.Fatalf("Connect(test:///default): %v", err)
	}
	defer d.Close()
	in, err := d.Get(ctx, "test")
	if err != nil || in.State != drivers.StateRunning || in.Managed {
		t.Fatalf("Get(test) = %+v, %v; want the test driver's running, unmanaged domain", in, err)
	}
	u, err := d.Metrics(ctx, "test")
	if err != nil {
		t.Fatal(err)
	}
	if !u.Measured.Has(drivers.MeasureCPU|drivers.MeasureMemory) || u.Counters.CPUTimeNs == 0 || u.MemoryMB <= 0 {
		t.Errorf("Metrics(test) = %+v, want cpu and memory from the fallbacks", u)
	}
	if u.Measured.Has(drivers.MeasureNetwork) || u.Measured.Has(drivers.MeasureDiskIO) {
		t.Errorf("Metrics(test) claims network or disk I/O the test driver does not report: %v", u.Measured.Names())
	}
}

// TestHealth: versions, host, pools and the accelerator with its reason.
// Without /dev/kvm the probe settles on TCG without booting anything.
func TestHealth(t *testing.T) {
	d := requireLibvirt(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	h, err := d.Health(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !h.Healthy || h.Version == "" || h.Details["hypervisor_version"] == "" || h.Details["host_cpus"] == "" ||
		!strings.HasPrefix(h.Details["pool."+d.opts.Pool], "running=true") {
		t.Errorf("Health = %+v", h)
	}
	want := map[string]string{"kvm": "kvm", "qemu": "tcg"}[h.Details["domain_type"]]
	if want == "" || h.Details["accelerator"] != want || h.Details["domain_type_reason"] == "" {
		t.Errorf("domain type %q, accelerator %q, reason %q", h.Details["domain_type"], h.Details["accelerator"], h.Details["domain_type_reason"])
	}
	if _, err := os.Stat("/dev/kvm"); err != nil && h.Details["domain_type"] != "qemu" {
		t.Errorf("no /dev/kvm here, yet domain_type %q", h.Details["domain_type"])
	}
	d.opts.Pool = "lv-no-such-pool"
	if h, err := d.Health(ctx); err != nil || h.Healthy || len(h.Issues) == 0 {
		t.Errorf("Health with a missing pool = %+v, %v; want unhealthy with an issue", h, err)
	}
}
