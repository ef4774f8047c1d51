package proxmox

import (
	"context"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/pvesim"
	"github.com/subbus/subbus/internal/testenv"
)

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func wantCode(t *testing.T, what string, err error, want drivers.Code) {
	t.Helper()
	if got := classify(err); got != want {
		t.Fatalf("%s: %v (code %s), want %s", what, err, got, want)
	}
}

func vmTemplate(name string) drivers.InstanceTemplate {
	return drivers.InstanceTemplate{Name: name, BaseImage: testISO}
}

// A create whose caller gives up leaves nothing behind: the driver waits
// for PVE's create task in the background and destroys the guest it made.
func TestCreateTimeoutLeavesNothing(t *testing.T) {
	for _, kind := range []string{kindQemu, kindLXC} {
		t.Run(kind, func(t *testing.T) {
			env := startSim(t, pvesim.Options{Delays: pvesim.Delays{Create: 1500 * time.Millisecond}})
			d := env.driver(ctxT(t, 10*time.Second))
			tmpl := vmTemplate("px-timeout")
			if kind == kindLXC {
				tmpl.BaseImage = testVZTmpl
			}
			began := time.Now()
			_, err := d.Create(ctxT(t, 400*time.Millisecond), tmpl)
			wantCode(t, "Create past its deadline", err, drivers.Timeout)
			if took := time.Since(began); took > 2*time.Second {
				t.Errorf("Create returned %v after its 400ms deadline", took)
			}
			// A retry at once waits for the first attempt's guest to be
			// removed, then creates the one guest of that name.
			in, err := d.Create(ctxT(t, 15*time.Second), tmpl)
			if err != nil {
				t.Fatalf("retried Create: %v", err)
			}
			if in.Metadata[metaKind] != kind {
				t.Errorf("retried Create made %+v, want kind %s", in.Metadata, kind)
			}
			n := 0
			for _, g := range env.sim.Guests() {
				if g.Name == tmpl.Name {
					n++
				}
			}
			if n != 1 {
				t.Errorf("%d guests called %s after the retry, want 1", n, tmpl.Name)
			}
			// A retry with the request id of a create that finished (its
			// reply lost) answers that guest; another request gets
			// already_exists.
			rctx := drivers.WithRequestID(ctxT(t, 10*time.Second), "req-"+kind)
			first, err := d.Create(rctx, drivers.InstanceTemplate{Name: "px-once-" + kind, BaseImage: tmpl.BaseImage})
			if err != nil {
				t.Fatal(err)
			}
			again, err := d.Create(rctx, drivers.InstanceTemplate{Name: "px-once-" + kind, BaseImage: tmpl.BaseImage})
			if err != nil || again.ID != first.ID {
				t.Errorf("retry with the same request id: %+v, %v; want VMID %s", again, err, first.ID)
			}
			_, err = d.Create(drivers.WithRequestID(ctxT(t, 10*time.Second), "other"), drivers.InstanceTemplate{Name: "px-once-" + kind, BaseImage: tmpl.BaseImage})
			wantCode(t, "Create of a taken name by another request", err, drivers.AlreadyExists)
			// A create whose caller gives up is removed once PVE's task ends.
			_, err = d.Create(ctxT(t, 400*time.Millisecond), drivers.InstanceTemplate{Name: "px-timeout2", BaseImage: tmpl.BaseImage})
			wantCode(t, "second Create past its deadline", err, drivers.Timeout)
			testenv.Eventually(t, 10*time.Second, func() error {
				if g, ok := env.guestByName("px-timeout2"); ok {
					return fmt.Errorf("guest %d (%s) is still there, lock %q", g.VMID, g.Status, g.Lock)
				}
				return nil
			})
			env.checkRequests(t)
		})
	}
}

// A guest locked by a running snapshot answers conflict, whether PVE
// refuses synchronously (config PUT) or in the task's exitstatus (start),
// and the exitstatus text reaches the caller.
func TestLockConflict(t *testing.T) {
	env := startSim(t, pvesim.Options{Delays: pvesim.Delays{Snapshot: 2 * time.Second}})
	ctx := ctxT(t, 20*time.Second)
	d := env.driver(ctx)
	if _, err := d.Create(ctx, vmTemplate("px-lock")); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := d.CreateSnapshot(ctx, "px-lock", "s1"); done <- err }()
	testenv.Eventually(t, 5*time.Second, func() error {
		if g, _ := env.guestByName("px-lock"); g.Lock != "snapshot" {
			return fmt.Errorf("lock %q, want snapshot", g.Lock)
		}
		return nil
	})
	_, err := d.SetLimits(ctx, "px-lock", drivers.ResourceLimits{MemoryMB: 1024})
	wantCode(t, "SetLimits of a locked guest", err, drivers.Conflict)
	_, err = d.Start(ctx, "px-lock")
	wantCode(t, "Start of a locked guest", err, drivers.Conflict)
	if !strings.Contains(err.Error(), "VM is locked (snapshot)") {
		t.Errorf("Start error %q does not carry PVE's exitstatus", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("the snapshot itself: %v", err)
	}
	env.checkRequests(t)
}

// A task that fails gives the caller its exitstatus text, classified.
func TestFailingTaskExitStatus(t *testing.T) {
	env := startSim(t, pvesim.Options{})
	ctx := ctxT(t, 20*time.Second)
	d := env.driver(ctx)
	in, err := d.Create(ctx, vmTemplate("px-fail"))
	if err != nil {
		t.Fatal(err)
	}
	vmid := mustAtoi(t, in.Metadata[metaVMID])
	if err := env.sim.SetConfig(vmid, "lock", "backup"); err != nil {
		t.Fatal(err)
	}
	_, err = d.Start(ctx, "px-fail")
	if !strings.Contains(err.Error(), "VM is locked (backup)") || classify(err) != drivers.Conflict {
		t.Fatalf("Start of a guest locked by a backup: %v (code %s), want conflict with PVE's text", err, classify(err))
	}
	var tfe interface{ Error() string }
	if !errors.As(err, &tfe) {
		t.Fatal("no error chain")
	}
	_ = env.sim.SetConfig(vmid, "lock", "")
	env.checkRequests(t)
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	var n int
	if _, err := fmt.Sscan(s, &n); err != nil {
		t.Fatalf("%q: %v", s, err)
	}
	return n
}

// Changes made outside the driver (simulated: directly on the simulator,
// as in the PVE UI) become events within the poll interval.
func TestPollerSeesOutsideChanges(t *testing.T) {
	env := startSim(t, pvesim.Options{})
	ctx := ctxT(t, 30*time.Second)
	d := env.driver(ctx)
	if err := env.sim.CreateGuest(pvesim.GuestSpec{VMID: 300, Name: "px-outside"}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []drivers.Event
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- d.Watch(wctx, func(ev drivers.Event) { mu.Lock(); seen = append(seen, ev); mu.Unlock() })
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch after cancel: %v", err)
		}
	}()
	waitEvent := func(what string, match func(drivers.Event) bool) {
		t.Helper()
		testenv.Eventually(t, 5*time.Second, func() error {
			mu.Lock()
			defer mu.Unlock()
			if slices.ContainsFunc(seen, match) {
				return nil
			}
			return fmt.Errorf("no %s event among %+v", what, seen)
		})
	}
	time.Sleep(300 * time.Millisecond) // the first poll only records
	if err := env.sim.SetGuestStatus(300, "running"); err != nil {
		t.Fatal(err)
	}
	waitEvent("started", func(ev drivers.Event) bool {
		return ev.Type == drivers.EventStarted && ev.Instance == "px-outside" && ev.State == drivers.StateRunning
	})
	if err := env.sim.CreateGuest(pvesim.GuestSpec{VMID: 301, Kind: "lxc", Name: "px-new"}); err != nil {
		t.Fatal(err)
	}
	waitEvent("appeared", func(ev drivers.Event) bool {
		return ev.Type == drivers.EventAppeared && ev.Instance == "px-new" && ev.Details[metaKind] == kindLXC
	})
	if err := env.sim.DeleteGuest(301); err != nil {
		t.Fatal(err)
	}
	waitEvent("vanished", func(ev drivers.Event) bool { return ev.Type == drivers.EventVanished && ev.Instance == "px-new" })
	// A snapshot taken through the API by someone else is seen from /cluster/tasks.
	other := env.driver(ctx)
	if _, err := other.CreateSnapshot(ctx, "px-outside", "ui"); err != nil {
		t.Fatal(err)
	}
	waitEvent("snapshot_created", func(ev drivers.Event) bool {
		return ev.Type == drivers.EventSnapshotCreated && ev.Instance == "px-outside"
	})
}

// A dead API opens the manager's breaker; once it answers again the
// breaker closes and calls succeed.
func TestDeadAPIOpensBreaker(t *testing.T) {
	env := startSim(t, pvesim.Options{})
	ctx := ctxT(t, 30*time.Second)
	m := manager.New(New(env.options()), manager.Options{RetryAttempts: 1, BreakerFailures: 2, BreakerOpenTimeout: 300 * time.Millisecond, CacheTTL: -1})
	t.Cleanup(func() { _ = m.Close() })
	if err := m.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	remove, err := env.sim.AddFault(pvesim.Fault{Drop: true})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		_, err := m.List(ctx)
		if !errors.Is(err, drivers.ErrUnavailable) {
			t.Fatalf("List %d through a dead API: %v, want unavailable", i, err)
		}
	}
	if st := m.Stats().Breaker; st != "open" {
		t.Errorf("breaker %q after failures, want open", st)
	}
	remove()
	testenv.Eventually(t, 5*time.Second, func() error {
		_, err := m.List(ctx)
		return err
	})
	if st := m.Stats().Breaker; st != "closed" {
		t.Errorf("breaker %q after recovery, want closed", st)
	}
}

// Token and ticket auth both work; bad credentials are permission_denied.
func TestAuth(t *testing.T) {
	env := startSim(t, pvesim.Options{})
	cases := []struct {
		name string
		mod  func(*Options)
		want drivers.Code
	}{
		{"token", func(o *Options) {}, 0},
		{"ticket", func(o *Options) { o.TokenID, o.TokenSecret, o.User, o.Password = "", "", "root@pam", testPassword }, 0},
		{"ticket from file", func(o *Options) {
			f := filepath.Join(t.TempDir(), "pw")
			_ = os.WriteFile(f, []byte(testPassword+"\n"), 0o600)
			o.TokenID, o.TokenSecret, o.User, o.PasswordFile = "", "", "root@pam", f
		}, 0},
		{"wrong token secret", func(o *Options) { o.TokenSecret = "nope" }, drivers.PermissionDenied},
		{"wrong password", func(o *Options) { o.TokenID, o.TokenSecret, o.User, o.Password = "", "", "root@pam", "nope" }, drivers.PermissionDenied},
		{"no credentials", func(o *Options) { o.TokenID, o.TokenSecret = "", "" }, drivers.InvalidArgument},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := env.options()
			c.mod(&o)
			d := New(o)
			ctx := ctxT(t, 10*time.Second)
			err := d.Connect(ctx)
			if c.want != 0 {
				wantCode(t, "Connect", err, c.want)
				return
			}
			if err != nil {
				t.Fatalf("Connect: %v", err)
			}
			// A write too (ticket auth needs the CSRF token on writes).
			if _, err := d.Create(ctx, vmTemplate("px-auth-"+strings.ReplaceAll(c.name, " ", "-"))); err != nil {
				t.Fatalf("Create: %v", err)
			}
		})
	}
	env.checkRequests(t)
}

// The server certificate is verified unless pinned (fingerprint), trusted
// (ca_file) or verification is turned off explicitly.
func TestCertificate(t *testing.T) {
	env := startSim(t, pvesim.Options{})
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: env.srv.Certificate().Raw})
	if err := os.WriteFile(caFile, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	f := false
	cases := []struct {
		name string
		mod  func(*Options)
		want drivers.Code
	}{
		{"system roots refuse it", func(o *Options) { o.Fingerprint = "" }, drivers.PermissionDenied},
		{"wrong pin", func(o *Options) { o.Fingerprint = strings.Repeat("AB:", 31) + "AB" }, drivers.PermissionDenied},
		{"pinned", func(o *Options) {}, 0},
		{"ca_file", func(o *Options) { o.Fingerprint, o.CAFile = "", caFile }, 0},
		{"verify_ssl false", func(o *Options) { o.Fingerprint, o.VerifySSL = "", &f }, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := env.options()
			c.mod(&o)
			d := New(o)
			var warned []string
			d.warnf = func(format string, args ...any) { warned = append(warned, fmt.Sprintf(format, args...)) }
			err := d.Connect(ctxT(t, 10*time.Second))
			if c.want != 0 {
				wantCode(t, "Connect", err, c.want)
			} else if err != nil {
				t.Fatalf("Connect: %v", err)
			}
			if (len(warned) > 0) != (o.VerifySSL != nil) {
				t.Errorf("warnings %q", warned)
			}
		})
	}
	_ = tls.VersionTLS12
}

// A graceful stop of a guest that ignores it gives up with timeout when
// the caller's deadline passes (PVE's shutdown task keeps running), and a
// forced stop still ends it.
func TestStopDeadline(t *testing.T) {
	env := startSim(t, pvesim.Options{})
	ctx := ctxT(t, 30*time.Second)
	d := env.driver(ctx)
	in, err := d.Create(ctx, vmTemplate("px-stubborn"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Start(ctx, "px-stubborn"); err != nil {
		t.Fatal(err)
	}
	if err := env.sim.SetGuestIgnoresShutdown(mustAtoi(t, in.Metadata[metaVMID]), true); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	_, err = d.Stop(ctxT(t, time.Second), "px-stubborn", drivers.StopOptions{Timeout: 30 * time.Second})
	wantCode(t, "graceful Stop past the deadline", err, drivers.Timeout)
	if took := time.Since(began); took > 3*time.Second {
		t.Errorf("Stop returned after %v, deadline 1s", took)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		_, err := d.Stop(ctx, "px-stubborn", drivers.StopOptions{Force: true})
		return err
	})
	testenv.Eventually(t, 5*time.Second, func() error {
		if g, _ := env.guestByName("px-stubborn"); g.Status != "stopped" {
			return fmt.Errorf("status %s", g.Status)
		}
		return nil
	})
	// Within the deadline, PVE stops the guest after the shutdown timeout
	// (forceStop): the task ends "WARNINGS: 1", which is success.
	if _, err := d.Start(ctx, "px-stubborn"); err != nil {
		t.Fatal(err)
	}
	changed, err := d.Stop(ctx, "px-stubborn", drivers.StopOptions{Timeout: time.Second})
	if err != nil || !changed {
		t.Fatalf("Stop of a guest ignoring shutdown, 1s timeout: %v, %v; want PVE to stop it", changed, err)
	}
	tasks := env.sim.Tasks()
	if last := tasks[len(tasks)-1]; last.Type != "qmshutdown" || last.ExitStatus != "WARNINGS: 1" {
		t.Errorf("last task %s ended %q, want a qmshutdown ending WARNINGS: 1", last.Type, last.ExitStatus)
	}
}

// A shared name is conflict listing the VMIDs; the VMID addresses each.
// Guests the driver did not create are deleted only with force.
func TestAddressingAndOwnership(t *testing.T) {
	env := startSim(t, pvesim.Options{})
	ctx := ctxT(t, 20*time.Second)
	d := env.driver(ctx)
	for _, g := range []pvesim.GuestSpec{{VMID: 500, Name: "px-twin"}, {VMID: 501, Kind: "lxc", Name: "px-twin"}} {
		if err := env.sim.CreateGuest(g); err != nil {
			t.Fatal(err)
		}
	}
	_, err := d.Get(ctx, "px-twin")
	wantCode(t, "Get of a shared name", err, drivers.Conflict)
	if !strings.Contains(err.Error(), "500, 501") {
		t.Errorf("error %q does not list the VMIDs", err)
	}
	in, err := d.Get(ctx, "501")
	if err != nil || in.Metadata[metaKind] != kindLXC || in.Name != "px-twin" || in.Managed {
		t.Fatalf("Get(501) = %+v, %v", in, err)
	}
	_, err = d.Delete(ctx, "501", drivers.DeleteOptions{})
	wantCode(t, "Delete of a guest subbus did not create", err, drivers.Conflict)
	if changed, err := d.Delete(ctx, "501", drivers.DeleteOptions{Force: true}); err != nil || !changed {
		t.Fatalf("forced Delete: %v, %v", changed, err)
	}
	if _, ok := env.sim.Guest(501); ok {
		t.Errorf("guest 501 still exists")
	}
	_, err = d.Create(ctx, vmTemplate("px-twin"))
	wantCode(t, "Create onto a taken name", err, drivers.AlreadyExists)
	_, err = d.Create(ctx, vmTemplate("123"))
	wantCode(t, "Create with an all-digit name", err, drivers.InvalidArgument)
	env.checkRequests(t)
}

// Creates from a template guest clone it; kind follows the source, and a
// contradicting metadata kind is invalid_argument. Metadata round-trips
// and the guest is tagged and marked.
func TestCreateFromTemplateGuest(t *testing.T) {
	env := startSim(t, pvesim.Options{})
	ctx := ctxT(t, 20*time.Second)
	d := env.driver(ctx)
	if err := env.sim.CreateGuest(pvesim.GuestSpec{VMID: 9000, Kind: "lxc", Name: "px-tmpl",
		Config: map[string]any{"rootfs": "local-lvm:4", "net0": "name=eth0,bridge=vmbr0,ip=dhcp", "memory": 256, "tags": "golden"}}); err != nil {
		t.Fatal(err)
	}
	// Converted as PVE's UI does (its disk becomes a base volume).
	c, _ := d.client()
	if err := c.Post(ctx, "/nodes/pve1/lxc/9000/template", nil, nil); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		if g, _ := env.sim.Guest(9000); !g.Template {
			return fmt.Errorf("9000 is not a template yet")
		}
		return nil
	})
	in, err := d.Create(ctx, drivers.InstanceTemplate{Name: "px-from-tmpl", BaseImage: "px-tmpl",
		Resources: drivers.ResourceLimits{CPUCores: 2, MemoryMB: 1024}, Metadata: map[string]string{"team": "infra"}})
	if err != nil {
		t.Fatal(err)
	}
	if in.Metadata[metaKind] != kindLXC || in.Metadata["team"] != "infra" || !in.Managed || in.Image != "px-tmpl" ||
		in.Limits.CPUCores != 2 || in.Limits.MemoryMB != 1024 || in.State != drivers.StateStopped {
		t.Errorf("created %+v", in)
	}
	g, _ := env.sim.Guest(mustAtoi(t, in.Metadata[metaVMID]))
	if !hasTag(g.Config["tags"], managedTag) || !hasTag(g.Config["tags"], "golden") {
		t.Errorf("config %v: want the template's tag golden and %s", g.Config, managedTag)
	}
	// full_clone: false links the clone to the template.
	o := env.options()
	f := false
	o.FullClone = &f
	linked := New(o)
	if err := linked.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := linked.Create(ctx, drivers.InstanceTemplate{Name: "px-linked", BaseImage: "9000"}); err != nil {
		t.Fatalf("linked clone: %v", err)
	}
	fulls := map[string]any{}
	for _, r := range env.sim.Requests() {
		if r.Method == "POST" && strings.HasSuffix(r.Path, "/clone") {
			fulls[fmt.Sprint(r.Params["newid"])] = r.Params["full"]
		}
	}
	if len(fulls) != 2 || fulls[in.Metadata[metaVMID]] != true || slices.Contains([]any{true, "1", 1.0}, fulls[fmt.Sprint(mustAtoi(t, in.Metadata[metaVMID])+1)]) {
		t.Errorf("clone requests' full parameters %v: want the first full, the second linked", fulls)
	}
	_, err = d.Create(ctx, drivers.InstanceTemplate{Name: "px-bad-kind", BaseImage: "px-tmpl", Metadata: map[string]string{"kind": "qemu"}})
	wantCode(t, "Create with a kind that contradicts the template", err, drivers.InvalidArgument)
	_, err = d.Create(ctx, drivers.InstanceTemplate{Name: "px-no-tmpl", BaseImage: "px-none"})
	wantCode(t, "Create from a missing template guest", err, drivers.NotFound)
	env.checkRequests(t)
}

// Exec in an LXC container is unsupported, with the reason.
func TestExecLXCUnsupported(t *testing.T) {
	env := startSim(t, pvesim.Options{})
	ctx := ctxT(t, 20*time.Second)
	d := env.driver(ctx)
	if _, err := d.Create(ctx, drivers.InstanceTemplate{Name: "px-ct", BaseImage: testVZTmpl}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Start(ctx, "px-ct"); err != nil {
		t.Fatal(err)
	}
	_, err := d.Exec(ctx, "px-ct", drivers.ExecRequest{Command: []string{"true"}}, &strings.Builder{}, &strings.Builder{})
	wantCode(t, "Exec in a container", err, drivers.Unsupported)
	if !strings.Contains(err.Error(), "no exec for LXC") {
		t.Errorf("error %q gives no reason", err)
	}
}

// Logs are the guest's task logs, oldest first, followed as tasks run.
func TestTaskLogs(t *testing.T) {
	env := startSim(t, pvesim.Options{})
	ctx := ctxT(t, 20*time.Second)
	d := env.driver(ctx)
	if _, err := d.Create(ctx, vmTemplate("px-logs")); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Start(ctx, "px-logs"); err != nil {
		t.Fatal(err)
	}
	var lines []string
	err := d.Logs(ctx, "px-logs", drivers.LogOptions{Lines: 100}, func(l drivers.LogLine) error {
		if l.Stream != "task" || l.Time.IsZero() {
			t.Errorf("line %+v", l)
		}
		lines = append(lines, l.Line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	create := slices.IndexFunc(lines, func(s string) bool { return strings.HasPrefix(s, "qmcreate: ") })
	start := slices.IndexFunc(lines, func(s string) bool { return s == "qmstart: TASK OK" })
	if create < 0 || start < 0 || create > start {
		t.Errorf("task log lines %q: want the qmcreate task before a qmstart ending TASK OK", lines)
	}
	var mu sync.Mutex
	var followed []string
	fctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- d.Logs(fctx, "px-logs", drivers.LogOptions{Lines: 1, Follow: true}, func(l drivers.LogLine) error {
			mu.Lock()
			followed = append(followed, l.Line)
			mu.Unlock()
			return nil
		})
	}()
	time.Sleep(300 * time.Millisecond)
	if _, err := d.Stop(ctx, "px-logs", drivers.StopOptions{Timeout: 5 * time.Second}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if !slices.Contains(followed, "qmshutdown: TASK OK") {
			return fmt.Errorf("followed %q", followed)
		}
		return nil
	})
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Logs(Follow) after cancel: %v", err)
	}
}

// One /cluster/resources call samples a whole list.
func TestMetricsBatch(t *testing.T) {
	env := startSim(t, pvesim.Options{})
	ctx := ctxT(t, 20*time.Second)
	d := env.driver(ctx)
	for _, n := range []string{"px-m1", "px-m2"} {
		if _, err := d.Create(ctx, vmTemplate(n)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d.Start(ctx, "px-m1"); err != nil {
		t.Fatal(err)
	}
	before := len(env.sim.Requests())
	samples, failed, err := d.MetricsBatch(ctx, []string{"px-m1", "px-m2", "px-none"})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(env.sim.Requests()) - before; n != 1 {
		t.Errorf("MetricsBatch made %d requests, want 1", n)
	}
	if u := samples["px-m1"]; !u.Measured.Has(drivers.MeasureCPU|drivers.MeasureMemory|drivers.MeasureNetwork) || u.MemoryMB <= 0 {
		t.Errorf("running guest's sample %+v", u)
	}
	if u := samples["px-m2"]; u.CPUPercent != 0 || u.MemoryMB != 0 {
		t.Errorf("stopped guest's sample %+v", u)
	}
	if classify(failed["px-none"]) != drivers.NotFound || len(samples) != 2 {
		t.Errorf("samples %v failed %v", samples, failed)
	}
}

// Health reports offline nodes as issues and counts guests.
func TestHealthOfflineNode(t *testing.T) {
	env := startSim(t, pvesim.Options{Nodes: []string{"pve1", "pve2", "pve3"}})
	ctx := ctxT(t, 20*time.Second)
	d := env.driver(ctx)
	h, err := d.Health(ctx)
	if err != nil || !h.Healthy || len(h.Issues) != 0 || h.Version == "" || h.Usage == nil {
		t.Fatalf("Health = %+v, %v", h, err)
	}
	if err := env.sim.SetNodeOnline("pve2", false); err != nil {
		t.Fatal(err)
	}
	h, err = d.Health(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !h.Healthy || !slices.ContainsFunc(h.Issues, func(s string) bool { return strings.Contains(s, "pve2") }) {
		t.Errorf("with pve2 offline: %+v, want healthy with an issue naming pve2", h)
	}
	// Two of three nodes offline: no quorum, unhealthy.
	if err := env.sim.SetNodeOnline("pve3", false); err != nil {
		t.Fatal(err)
	}
	if h, err = d.Health(ctx); err != nil || h.Healthy {
		t.Errorf("with two of three nodes offline: %+v, %v, want unhealthy (no quorum)", h, err)
	}
	env.checkRequests(t)
}

// TestGetRuntimeFields: get reports a running guest's start time (from
// PVE's uptime, to the second), a running VM's QEMU PID (status/current;
// PVE has none for a container) and the guest's disks from its config
// (not a CD-ROM, not an unused volume); a stopped guest has neither time
// nor PID.
func TestGetRuntimeFields(t *testing.T) {
	env := startSim(t, pvesim.Options{})
	ctx := ctxT(t, 20*time.Second)
	d := env.driver(ctx)
	for _, g := range []pvesim.GuestSpec{
		{VMID: 520, Name: "fd-vm", Config: map[string]any{
			"scsi0": "local-lvm:vm-520-disk-0,size=4G", "virtio1": "local-lvm:vm-520-disk-1,size=1G,ro=1",
			"ide2": "local:iso/boot.iso,media=cdrom", "efidisk0": "local-lvm:vm-520-disk-2,size=4M",
			"unused0": "local-lvm:vm-520-disk-3"}},
		{VMID: 521, Kind: "lxc", Name: "fd-ct", Config: map[string]any{
			"rootfs": "local-lvm:vm-521-disk-0,size=8G", "mp0": "/srv/data,mp=/data,ro=1",
			"mp1": "local-lvm:vm-521-disk-1,mp=/var/lib/db,size=2G"}},
	} {
		if err := env.sim.CreateGuest(g); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name    string
		pid     int
		volumes []drivers.Volume
	}{
		{"fd-vm", 10520, []drivers.Volume{ // the sim's QEMU PID is 10000+VMID
			{Source: "local-lvm:vm-520-disk-2", Target: "efidisk0"},
			{Source: "local-lvm:vm-520-disk-0", Target: "scsi0"},
			{Source: "local-lvm:vm-520-disk-1", Target: "virtio1", ReadOnly: true}}},
		{"fd-ct", 0, []drivers.Volume{
			{Source: "/srv/data", Target: "/data", ReadOnly: true},
			{Source: "local-lvm:vm-521-disk-1", Target: "/var/lib/db"},
			{Source: "local-lvm:vm-521-disk-0", Target: "/"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in, err := d.Get(ctx, tc.name)
			if err != nil {
				t.Fatal(err)
			}
			if in.PID != 0 || !in.StartedAt.IsZero() {
				t.Errorf("stopped: PID %d, StartedAt %v, want neither", in.PID, in.StartedAt)
			}
			if !reflect.DeepEqual(in.Volumes, tc.volumes) {
				t.Errorf("Volumes\n %+v\nwant\n %+v", in.Volumes, tc.volumes)
			}
			before := time.Now().Truncate(time.Second).Add(-time.Second)
			if _, err := d.Start(ctx, tc.name); err != nil {
				t.Fatal(err)
			}
			after := time.Now().Add(time.Second)
			in, err = d.Get(ctx, tc.name)
			if err != nil {
				t.Fatal(err)
			}
			if in.PID != tc.pid {
				t.Errorf("running: PID %d, want %d", in.PID, tc.pid)
			}
			if in.StartedAt.Before(before) || in.StartedAt.After(after) {
				t.Errorf("running: StartedAt %v, want between %v and %v", in.StartedAt, before, after)
			}
			list, err := d.List(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range list {
				if l.Name == tc.name && !l.StartedAt.Equal(in.StartedAt) && l.StartedAt.Sub(in.StartedAt).Abs() > time.Second {
					t.Errorf("List StartedAt %v, Get %v", l.StartedAt, in.StartedAt)
				}
			}
		})
	}
	env.checkRequests(t)
}
