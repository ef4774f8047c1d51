package manager

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/resilience"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/messages"
)

// fakeClock is the manager's clock in tests (cache TTL, health interval).
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// recorder collects events.
type recorder struct {
	mu  sync.Mutex
	evs []messages.Event
}

func (r *recorder) add(ev messages.Event) {
	r.mu.Lock()
	r.evs = append(r.evs, ev)
	r.mu.Unlock()
}

func (r *recorder) all() []messages.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]messages.Event(nil), r.evs...)
}

// types lists the event types, skipping connection events.
func (r *recorder) types() []string {
	var out []string
	for _, e := range r.all() {
		if e.Type == drivers.EventConnected || e.Type == drivers.EventDisconnected {
			continue
		}
		out = append(out, string(e.Type))
	}
	return out
}

func (r *recorder) reset() {
	r.mu.Lock()
	r.evs = nil
	r.mu.Unlock()
}

type harness struct {
	m      *Manager
	clock  *fakeClock
	sleeps *[]time.Duration
	events *recorder
	logs   *syncBuffer
}

// newHarness builds a connected manager over d with instant retry waits
// and a fake clock.
func newHarness(t *testing.T, d drivers.Driver, opts Options) harness {
	t.Helper()
	logs := &syncBuffer{}
	opts.Logger = zerolog.New(logs)
	if opts.Host == "" {
		opts.Host = "host1"
	}
	m := New(d, opts)
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	m.now = clock.now
	var mu sync.Mutex
	sleeps := &[]time.Duration{}
	m.sleep = func(ctx context.Context, d time.Duration) error {
		mu.Lock()
		*sleeps = append(*sleeps, d)
		mu.Unlock()
		return ctx.Err()
	}
	m.watchDelay = time.Millisecond
	rec := &recorder{}
	m.Subscribe(rec.add)
	if err := m.Connect(context.Background()); err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return harness{m: m, clock: clock, sleeps: sleeps, events: rec, logs: logs}
}

func wantCode(t *testing.T, err error, code drivers.Code) {
	t.Helper()
	if got := drivers.CodeOf(err); got != code {
		t.Fatalf("code = %v, want %v (err: %v)", got, code, err)
	}
}

var bg = context.Background()

// ops runs one operation of each kind against instance "web".
var ops = map[string]func(m *Manager) error{
	"list":         func(m *Manager) error { _, err := m.List(bg); return err },
	"get":          func(m *Manager) error { _, err := m.Get(bg, "web"); return err },
	"metrics":      func(m *Manager) error { _, err := m.Metrics(bg, "web"); return err },
	"health":       func(m *Manager) error { _, err := m.Health(bg); return err },
	"start":        func(m *Manager) error { _, err := m.Start(bg, "web"); return err },
	"stop":         func(m *Manager) error { _, err := m.Stop(bg, "web", drivers.StopOptions{}); return err },
	"delete-force": func(m *Manager) error { _, err := m.Delete(bg, "web", drivers.DeleteOptions{Force: true}); return err },
	"delete":       func(m *Manager) error { _, err := m.Delete(bg, "web", drivers.DeleteOptions{}); return err },
	"limits-get":   func(m *Manager) error { _, err := m.GetLimits(bg, "web"); return err },
	"limits-set": func(m *Manager) error {
		_, err := m.SetLimits(bg, "web", drivers.ResourceLimits{CPUCores: 2})
		return err
	},
	"snapshot-list":    func(m *Manager) error { _, err := m.ListSnapshots(bg, "web"); return err },
	"snapshot-create":  func(m *Manager) error { _, err := m.CreateSnapshot(bg, "web", "s1"); return err },
	"snapshot-restore": func(m *Manager) error { return m.RestoreSnapshot(bg, "web", "s1") },
	"snapshot-delete":  func(m *Manager) error { return m.DeleteSnapshot(bg, "web", "s1") },
	"network-list":     func(m *Manager) error { _, err := m.ListNetworks(bg); return err },
	"network-attach": func(m *Manager) error {
		_, err := m.AttachNetwork(bg, "web", drivers.NetworkConfig{NetworkName: "net0"})
		return err
	},
	"network-detach": func(m *Manager) error { return m.DetachNetwork(bg, "web", "net0") },
	"create": func(m *Manager) error {
		_, err := m.Create(bg, drivers.InstanceTemplate{Name: "new", BaseImage: "img"})
		return err
	},
	"clone": func(m *Manager) error { _, err := m.Clone(bg, "web", "web2"); return err },
	"exec": func(m *Manager) error {
		_, err := m.Exec(bg, "web", drivers.ExecRequest{Command: []string{"true"}}, nil, nil)
		return err
	},
	"logs": func(m *Manager) error {
		return m.Logs(bg, "web", drivers.LogOptions{}, func(drivers.LogLine) error { return nil })
	},
}

// driverOp maps a test op to the driver method name the script keys on.
func driverOp(op string) string {
	if op == "delete-force" {
		return "delete"
	}
	return op
}

func TestRetriesOnlyIdempotentOpsAndRetryableCodes(t *testing.T) {
	idempotent := map[string]bool{
		"list": true, "get": true, "metrics": true, "health": true, "start": true, "stop": true,
		"delete-force": true, "limits-get": true, "snapshot-list": true, "network-list": true,
	}
	for op, fn := range ops {
		t.Run(op, func(t *testing.T) {
			for _, code := range []drivers.Code{drivers.Unavailable, drivers.Timeout, drivers.NotFound, drivers.Internal, drivers.Conflict} {
				d := newFullDriver("fake")
				d.add("web", drivers.StateRunning)
				h := newHarness(t, d, Options{RetryAttempts: 3, CacheTTL: -1})
				do := driverOp(op)
				d.then(do, step{code: code}, step{code: code})
				err := fn(h.m)
				calls := d.count(do)
				if code.Retryable() && idempotent[op] {
					if err != nil || calls != 3 {
						t.Fatalf("%s on %v: calls=%d err=%v, want 3 calls and success", op, code, calls, err)
					}
					if len(*h.sleeps) != 2 {
						t.Fatalf("%s: %d backoff waits, want 2", op, len(*h.sleeps))
					}
					continue
				}
				if calls != 1 {
					t.Fatalf("%s on %v: %d driver calls, want 1 (no retry)", op, code, calls)
				}
				wantCode(t, err, code)
			}
		})
	}
}

func TestRetriesGiveUpAfterAttempts(t *testing.T) {
	d := newScriptDriver("fake")
	h := newHarness(t, d, Options{RetryAttempts: 4, CacheTTL: -1, BreakerFailures: 100})
	d.setDown(true)
	_, err := h.m.List(bg)
	wantCode(t, err, drivers.Unavailable)
	if n := d.count("list"); n != 4 {
		t.Fatalf("list calls = %d, want 4", n)
	}
	if !errors.Is(err, errRawDown) {
		t.Fatalf("err %v lost its cause", err)
	}
	st := h.m.Stats().Ops["list"]
	if st.Retries != 3 || st.Errors["unavailable"] != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestBreakerOpensFailsFastAndRecovers(t *testing.T) {
	d := newScriptDriver("fake")
	d.add("web", drivers.StateStopped)
	h := newHarness(t, d, Options{RetryAttempts: 1, BreakerFailures: 3, BreakerOpenTimeout: 500 * time.Millisecond, CacheTTL: -1})
	h.events.reset()
	d.setDown(true)
	for i := 0; i < 3; i++ {
		_, err := h.m.Get(bg, "web")
		wantCode(t, err, drivers.Unavailable)
	}
	if s := h.m.BreakerState(); s != "open" {
		t.Fatalf("breaker %s after 3 failures, want open", s)
	}
	if h.m.IsConnected() {
		t.Fatal("still connected after the substrate went away")
	}
	before := d.totalCalls()
	start := time.Now()
	for op, fn := range ops {
		err := fn(h.m)
		switch drivers.CodeOf(err) {
		case drivers.Unavailable:
			if !errors.Is(err, resilience.ErrOpen) || !strings.Contains(err.Error(), "breaker is open") {
				t.Fatalf("%s: %v, want the open breaker's error", op, err)
			}
		case drivers.Unsupported: // scriptDriver lacks the capability
		default:
			t.Fatalf("%s while open: %v", op, err)
		}
	}
	if d.totalCalls() != before {
		t.Fatalf("an open breaker let %d calls through", d.totalCalls()-before)
	}
	if time.Since(start) > time.Second {
		t.Fatal("open breaker did not fail fast")
	}
	d.setDown(false)
	testenv.Eventually(t, 2*time.Second, func() error {
		if s := h.m.BreakerState(); s != "half_open" {
			return errors.New(s)
		}
		return nil
	})
	if _, err := h.m.Get(bg, "web"); err != nil {
		t.Fatal(err)
	}
	if s := h.m.BreakerState(); s != "closed" {
		t.Fatalf("breaker %s after recovery", s)
	}
	var got []string
	for _, e := range h.events.all() {
		if strings.HasPrefix(string(e.Type), "breaker_") {
			got = append(got, string(e.Type))
			if e.Instance != "" || e.Driver != "fake" || e.Host != "host1" || e.ID == "" {
				t.Fatalf("breaker event %+v", e)
			}
		}
	}
	want := "breaker_opened breaker_half_open breaker_closed"
	if strings.Join(got, " ") != want {
		t.Fatalf("breaker events %v, want %s", got, want)
	}
	if !strings.Contains(h.logs.String(), "circuit breaker opened") || !strings.Contains(h.logs.String(), "circuit breaker closed") {
		t.Fatalf("breaker changes not logged:\n%s", h.logs.String())
	}
	hl, err := h.m.Health(bg)
	if err != nil || hl.Details["breaker"] != "closed" {
		t.Fatalf("health %+v %v", hl, err)
	}
}

func TestBreakerIgnoresCallerErrors(t *testing.T) {
	d := newScriptDriver("fake")
	h := newHarness(t, d, Options{RetryAttempts: 1, BreakerFailures: 2, CacheTTL: -1})
	for i := 0; i < 10; i++ {
		_, err := h.m.Get(bg, "missing")
		wantCode(t, err, drivers.NotFound)
		_, err = h.m.Start(bg, "bad name")
		wantCode(t, err, drivers.InvalidArgument)
		ctx, cancel := context.WithCancel(bg)
		cancel()
		_, err = h.m.List(ctx)
		wantCode(t, err, drivers.Timeout)
	}
	if s := h.m.BreakerState(); s != "closed" {
		t.Fatalf("breaker %s after caller errors", s)
	}
}

func TestFlappingSubstrateRetriesThrough(t *testing.T) {
	d := newScriptDriver("fake")
	d.add("web", drivers.StateStopped)
	h := newHarness(t, d, Options{RetryAttempts: 3, BreakerFailures: 5, CacheTTL: -1})
	d.mu.Lock()
	d.flap = 2 // every second driver call fails
	d.mu.Unlock()
	for i := 0; i < 20; i++ {
		if _, err := h.m.Get(bg, "web"); err != nil {
			t.Fatalf("get %d: %v", i, err)
		}
	}
	if s := h.m.BreakerState(); s != "closed" {
		t.Fatalf("breaker %s: isolated failures must not open it", s)
	}
	if st := h.m.Stats().Ops["get"]; st.Retries == 0 || st.Errors != nil {
		t.Fatalf("stats %+v", st)
	}
}

func TestDeadlines(t *testing.T) {
	tests := []struct {
		name      string
		ignoreCtx bool
		callerTO  time.Duration // 0: no caller deadline
		opTO      time.Duration
	}{
		{"caller deadline, driver honours ctx", false, 100 * time.Millisecond, time.Minute},
		{"caller deadline, driver ignores ctx", true, 100 * time.Millisecond, time.Minute},
		{"operation timeout when caller has none", false, 0, 100 * time.Millisecond},
		{"caller's shorter deadline wins", false, 100 * time.Millisecond, 10 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newScriptDriver("fake")
			h := newHarness(t, d, Options{OperationTimeout: tc.opTO, RetryAttempts: 1, CacheTTL: -1})
			d.then("list", step{delay: 1500 * time.Millisecond, ignoreCtx: tc.ignoreCtx})
			ctx := bg
			if tc.callerTO > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(bg, tc.callerTO)
				defer cancel()
			}
			start := time.Now()
			_, err := h.m.List(ctx)
			el := time.Since(start)
			wantCode(t, err, drivers.Timeout)
			if el > time.Second {
				t.Fatalf("took %v against a 100ms deadline", el)
			}
		})
	}
}

func TestRetryStopsAtCallerDeadline(t *testing.T) {
	d := newScriptDriver("fake")
	h := newHarness(t, d, Options{RetryAttempts: 10, RetryInitialDelay: time.Second, BreakerFailures: 100, CacheTTL: -1})
	h.m.sleep = nil // real waits: the deadline must cut them short
	d.setDown(true)
	ctx, cancel := context.WithTimeout(bg, 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := h.m.List(ctx)
	if time.Since(start) > time.Second {
		t.Fatalf("retries ran past the deadline")
	}
	wantCode(t, err, drivers.Unavailable)
}

func TestAbandonedMutationKeepsLock(t *testing.T) {
	d := newScriptDriver("fake")
	d.add("web", drivers.StateStopped)
	h := newHarness(t, d, Options{RetryAttempts: 1, CacheTTL: -1})
	d.then("start", step{delay: 800 * time.Millisecond, ignoreCtx: true})
	ctx, cancel := context.WithTimeout(bg, 50*time.Millisecond)
	defer cancel()
	_, err := h.m.Start(ctx, "web")
	wantCode(t, err, drivers.Timeout)
	_, err = h.m.Stop(bg, "web", drivers.StopOptions{})
	wantCode(t, err, drivers.Conflict)
	if !strings.Contains(err.Error(), "instance web is busy: start in progress") {
		t.Fatalf("conflict message %q", err)
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		_, err := h.m.Stop(bg, "web", drivers.StopOptions{})
		return err
	})
}

func TestDriverPanicIsInternal(t *testing.T) {
	d := newScriptDriver("fake")
	h := newHarness(t, d, Options{RetryAttempts: 3, CacheTTL: -1})
	d.then("list", step{panic: true})
	_, err := h.m.List(bg)
	wantCode(t, err, drivers.Internal)
	if d.count("list") != 1 {
		t.Fatal("internal error retried")
	}
}

func TestRawErrorsClassifiedOnce(t *testing.T) {
	d := newScriptDriver("fake")
	h := newHarness(t, d, Options{RetryAttempts: 1, CacheTTL: -1})
	d.then("list", step{raw: errors.New("weird")}, step{raw: errRawDown}, step{raw: fmt.Errorf("wrapped: %w", context.DeadlineExceeded)})
	for _, want := range []drivers.Code{drivers.Internal, drivers.Unavailable, drivers.Timeout} {
		_, err := h.m.List(bg)
		wantCode(t, err, want)
	}
}

// countingClassifier counts the calls of its ErrorCode.
type countingClassifier struct {
	*scriptDriver
	calls *atomic.Int32
}

func (d countingClassifier) ErrorCode(err error) drivers.Code {
	d.calls.Add(1)
	return d.scriptDriver.ErrorCode(err)
}

// A driver returns native errors wrapped with context; the manager
// classifies them once through ErrorCode, and errors.Is/As still reach
// the native cause. Errors the driver built with drivers.Errorf keep their
// code without asking ErrorCode.
func TestNativeErrorsClassifiedByTheManager(t *testing.T) {
	var calls atomic.Int32
	d := countingClassifier{newScriptDriver("fake"), &calls}
	h := newHarness(t, d, Options{RetryAttempts: 1, CacheTTL: -1})
	native := &os.PathError{Op: "dial", Path: "/fake.sock", Err: errRawDown}
	d.then("list", step{raw: fmt.Errorf("list web: %w", native)}, step{code: drivers.Conflict})

	_, err := h.m.List(bg)
	wantCode(t, err, drivers.Unavailable)
	var pe *os.PathError
	if !errors.As(err, &pe) || pe != native || !errors.Is(err, errRawDown) || !errors.Is(err, drivers.ErrUnavailable) {
		t.Fatalf("err %v: native cause or code sentinel lost", err)
	}
	if msg := err.Error(); !strings.HasPrefix(msg, "list: fake substrate unavailable: ") || !strings.Contains(msg, "list web") || !strings.Contains(msg, "/fake.sock") {
		t.Fatalf("message %q does not name the driver, the operation and the native failure", msg)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("ErrorCode called %d times for one native error, want 1", n)
	}

	_, err = h.m.List(bg)
	wantCode(t, err, drivers.Conflict)
	if n := calls.Load(); n != 1 {
		t.Fatalf("ErrorCode called for an error that already had its code (%d calls)", n)
	}
}

func TestValidationRejectsBeforeDriver(t *testing.T) {
	d := newFullDriver("fake")
	d.add("web", drivers.StateRunning)
	h := newHarness(t, d, Options{})
	ok := drivers.InstanceTemplate{Name: "web2", BaseImage: "alpine:3"}
	tmpl := func(f func(*drivers.InstanceTemplate)) drivers.InstanceTemplate {
		t := ok
		t.Environment = map[string]string{}
		f(&t)
		return t
	}
	create := func(t drivers.InstanceTemplate) func() error {
		return func() error { _, err := h.m.Create(bg, t); return err }
	}
	tests := []struct {
		name  string
		call  func() error
		field string
	}{
		{"empty name", func() error { _, err := h.m.Get(bg, ""); return err }, "name"},
		{"path in name", func() error { _, err := h.m.Start(bg, "../etc"); return err }, "name"},
		{"slash in name", func() error { _, err := h.m.Stop(bg, "a/b", drivers.StopOptions{}); return err }, "name"},
		{"space in name", func() error { _, err := h.m.Delete(bg, "a b", drivers.DeleteOptions{}); return err }, "name"},
		{"newline in name", func() error { _, err := h.m.Metrics(bg, "a\nb"); return err }, "name"},
		{"long name", func() error { _, err := h.m.Get(bg, strings.Repeat("a", 64)); return err }, "name"},
		{"leading dash", func() error { return h.m.Restart(bg, "-rf", drivers.StopOptions{}) }, "name"},
		{"dot name", func() error { _, err := h.m.Delete(bg, "..", drivers.DeleteOptions{}); return err }, "name"},
		{"empty snapshot name", func() error { return h.m.DeleteSnapshot(bg, "web", "") }, "snapshot"},
		{"path clone target", func() error { _, err := h.m.Clone(bg, "web", "/b"); return err }, "target"},
		{"negative log lines", func() error {
			return h.m.Logs(bg, "web", drivers.LogOptions{Lines: -1}, func(drivers.LogLine) error { return nil })
		}, "logs.lines"},
		{"negative limit", func() error { _, err := h.m.SetLimits(bg, "web", drivers.ResourceLimits{MemoryMB: -1}); return err },
			"limits.memory_mb"},
		{"no image", create(drivers.InstanceTemplate{Name: "x"}), "template.base_image"},
		{"negative stop timeout", func() error { _, err := h.m.Stop(bg, "web", drivers.StopOptions{Timeout: -1}); return err }, "stop.timeout"},
		{"bad snapshot name", func() error { _, err := h.m.CreateSnapshot(bg, "web", "s/1"); return err }, "snapshot"},
		{"bad clone target", func() error { _, err := h.m.Clone(bg, "web", "x y"); return err }, "target"},
		{"clone onto itself", func() error { _, err := h.m.Clone(bg, "web", "web"); return err }, "target"},
		{"bad network name", func() error { return h.m.DetachNetwork(bg, "web", "") }, "network"},
		{"bad attach ip", func() error {
			_, err := h.m.AttachNetwork(bg, "web", drivers.NetworkConfig{NetworkName: "n", IPAddress: "10.0.0.300"})
			return err
		}, "network.ip_address"},
		{"template name", create(tmpl(func(t *drivers.InstanceTemplate) { t.Name = "a;b" })), "template.name"},
		{"no base image", create(tmpl(func(t *drivers.InstanceTemplate) { t.BaseImage = "" })), "template.base_image"},
		{"control char in image", create(tmpl(func(t *drivers.InstanceTemplate) { t.BaseImage = "alp\x1bine" })), "template.base_image"},
		{"env key digit", create(tmpl(func(t *drivers.InstanceTemplate) { t.Environment["1X"] = "v" })), `template.environment["1X"]`},
		{"env key dash", create(tmpl(func(t *drivers.InstanceTemplate) { t.Environment["A-B"] = "v" })), `template.environment["A-B"]`},
		{"env key equals", create(tmpl(func(t *drivers.InstanceTemplate) { t.Environment["A=B"] = "v" })), `template.environment["A=B"]`},
		{"env value NUL", create(tmpl(func(t *drivers.InstanceTemplate) { t.Environment["A"] = "x\x00y" })), `template.environment["A"]`},
		{"command NUL", create(tmpl(func(t *drivers.InstanceTemplate) { t.Command = []string{"sh", "-c", "a\x00b"} })), "template.command[2]"},
		{"command empty argv0", create(tmpl(func(t *drivers.InstanceTemplate) { t.Command = []string{""} })), "template.command[0]"},
		{"relative workdir", create(tmpl(func(t *drivers.InstanceTemplate) { t.WorkDir = "tmp" })), "template.workdir"},
		{"workdir control", create(tmpl(func(t *drivers.InstanceTemplate) { t.WorkDir = "/tmp\x7f" })), "template.workdir"},
		{"user control", create(tmpl(func(t *drivers.InstanceTemplate) { t.User = "root\n" })), "template.user"},
		{"metadata key space", create(tmpl(func(t *drivers.InstanceTemplate) { t.Metadata = map[string]string{"a b": "v"} })), `template.metadata["a b"]`},
		{"metadata empty key", create(tmpl(func(t *drivers.InstanceTemplate) { t.Metadata = map[string]string{"": "v"} })), `template.metadata[""]`},
		{"duplicate network", create(tmpl(func(t *drivers.InstanceTemplate) {
			t.Networks = []drivers.NetworkConfig{{NetworkName: "n"}, {NetworkName: "n"}}
		})), "template.networks[1].network_name"},
		{"volume relative target", create(tmpl(func(t *drivers.InstanceTemplate) {
			t.Volumes = []drivers.Volume{{Source: "/data", Target: "data"}}
		})), "template.volumes[0].target"},
		{"volume empty source", create(tmpl(func(t *drivers.InstanceTemplate) {
			t.Volumes = []drivers.Volume{{Source: "/a", Target: "/a"}, {Source: "", Target: "/b"}}
		})), "template.volumes[1].source"},
		{"volume over root", create(tmpl(func(t *drivers.InstanceTemplate) {
			t.Volumes = []drivers.Volume{{Source: "/a", Target: "/"}}
		})), "template.volumes[0].target"},
		{"network bad name", create(tmpl(func(t *drivers.InstanceTemplate) {
			t.Networks = []drivers.NetworkConfig{{NetworkName: "a b"}}
		})), "template.networks[0].network_name"},
		{"network bad gateway", create(tmpl(func(t *drivers.InstanceTemplate) {
			t.Networks = []drivers.NetworkConfig{{NetworkName: "n", Gateway: "gw"}}
		})), "template.networks[0].gateway"},
		{"network bad dns", create(tmpl(func(t *drivers.InstanceTemplate) {
			t.Networks = []drivers.NetworkConfig{{NetworkName: "n", DNSServers: []string{"1.1.1.1", "x"}}}
		})), "template.networks[0].dns_servers[1]"},
		{"negative cpu", create(tmpl(func(t *drivers.InstanceTemplate) { t.Resources.CPUCores = -1 })), "template.resources.cpu_cores"},
		{"huge memory", create(tmpl(func(t *drivers.InstanceTemplate) { t.Resources.MemoryMB = 1 << 40 })), "template.resources.memory_mb"},
		{"metadata control", create(tmpl(func(t *drivers.InstanceTemplate) { t.Metadata = map[string]string{"k": "a\nb"} })), `template.metadata["k"]`},
		{"metadata long value", create(tmpl(func(t *drivers.InstanceTemplate) {
			t.Metadata = map[string]string{"k": strings.Repeat("v", MaxMetaValueLen+1)}
		})), `template.metadata["k"]`},
		{"template too big", create(tmpl(func(t *drivers.InstanceTemplate) {
			for i := 0; i < 100; i++ {
				t.Environment[fmt.Sprintf("V%d", i)] = strings.Repeat("x", 4096)
			}
		})), "template"},
		{"exec empty command", func() error { _, err := h.m.Exec(bg, "web", drivers.ExecRequest{}, nil, nil); return err }, "exec.command"},
		{"exec env key", func() error {
			_, err := h.m.Exec(bg, "web", drivers.ExecRequest{Command: []string{"x"}, Env: map[string]string{"": "v"}}, nil, nil)
			return err
		}, "exec.env"},
		{"exec relative workdir", func() error {
			_, err := h.m.Exec(bg, "web", drivers.ExecRequest{Command: []string{"x"}, WorkDir: "rel"}, nil, nil)
			return err
		}, "exec.workdir"},
		{"exec stdin too big", func() error {
			_, err := h.m.Exec(bg, "web", drivers.ExecRequest{Command: []string{"x"}, Stdin: make([]byte, MaxStdinBytes+1)}, nil, nil)
			return err
		}, "exec.stdin"},
		{"limits NaN", func() error {
			_, err := h.m.SetLimits(bg, "web", drivers.ResourceLimits{CPUCores: nan()})
			return err
		}, "limits.cpu_cores"},
		{"limits empty", func() error { _, err := h.m.SetLimits(bg, "web", drivers.ResourceLimits{}); return err }, "limits"},
		{"unset unknown field", func() error { _, err := h.m.UnsetLimits(bg, "web", []drivers.LimitField{"memory"}); return err }, "unset"},
		{"unset twice", func() error {
			_, err := h.m.UnsetLimits(bg, "web", []drivers.LimitField{drivers.LimitPIDs, drivers.LimitPIDs})
			return err
		}, "unset"},
		{"unset and set", func() error {
			_, err := h.m.ChangeLimits(bg, "web", drivers.ResourceLimits{PIDs: 5}, []drivers.LimitField{drivers.LimitPIDs})
			return err
		}, "unset"},
		{"too many log lines", func() error {
			return h.m.Logs(bg, "web", drivers.LogOptions{Lines: MaxLogLines + 1}, func(drivers.LogLine) error { return nil })
		}, "logs.lines"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := d.totalCalls()
			h.events.reset()
			err := tc.call()
			wantCode(t, err, drivers.InvalidArgument)
			msg := err.Error()
			if !strings.HasPrefix(msg, tc.field) || len(msg) == len(tc.field) || !strings.ContainsRune(":.[", rune(msg[len(tc.field)])) {
				t.Fatalf("error %q does not name field %s", err, tc.field)
			}
			if d.totalCalls() != before {
				t.Fatal("the driver was called with invalid input")
			}
			if len(h.events.all()) != 0 {
				t.Fatalf("events for a rejected request: %v", h.events.types())
			}
		})
	}
	// A full, valid template passes.
	good := drivers.InstanceTemplate{
		Name: "good-1.x", BaseImage: "alpine:3", Command: []string{"sh", "-c", "echo hi\nthere"},
		WorkDir: "/srv", Environment: map[string]string{"_A1": "multi\nline"},
		Volumes:   []drivers.Volume{{Source: "data", Target: "/data", ReadOnly: true}},
		Networks:  []drivers.NetworkConfig{{NetworkName: "n1", IPAddress: "10.0.0.5/24", Gateway: "10.0.0.1", DNSServers: []string{"::1"}}},
		Resources: drivers.ResourceLimits{CPUCores: 0.5, MemoryMB: 256},
		Metadata:  map[string]string{"owner": "team a"},
	}
	if _, err := h.m.Create(bg, good); err != nil {
		t.Fatalf("valid template rejected: %v", err)
	}
}

func nan() float64 { var z float64; return z / z }

func TestStopAndLogDefaults(t *testing.T) {
	d := newFullDriver("fake")
	d.add("web", drivers.StateRunning)
	h := newHarness(t, d, Options{StopTimeout: 7 * time.Second, LogLines: 42})
	tests := []struct {
		in, want drivers.StopOptions
	}{
		{drivers.StopOptions{}, drivers.StopOptions{Timeout: 7 * time.Second}},
		{drivers.StopOptions{Timeout: time.Second}, drivers.StopOptions{Timeout: time.Second}},
		{drivers.StopOptions{Force: true}, drivers.StopOptions{Force: true}},
	}
	for _, tc := range tests {
		if _, err := h.m.Stop(bg, "web", tc.in); err != nil {
			t.Fatal(err)
		}
		d.mu.Lock()
		got := d.lastStop
		d.mu.Unlock()
		if got != tc.want {
			t.Fatalf("driver got %+v for %+v, want %+v", got, tc.in, tc.want)
		}
	}
	var lines []string
	if err := h.m.Logs(bg, "web", drivers.LogOptions{}, func(l drivers.LogLine) error { lines = append(lines, l.Line); return nil }); err != nil {
		t.Fatal(err)
	}
	if d.lastLogs.Lines != 42 || len(lines) != 3 {
		t.Fatalf("logs opts %+v lines %v", d.lastLogs, lines)
	}
	// Follow runs until the caller's ctx ends, with no default deadline.
	ctx, cancel := context.WithTimeout(bg, 50*time.Millisecond)
	defer cancel()
	if err := h.m.Logs(ctx, "web", drivers.LogOptions{Lines: 1, Follow: true}, func(drivers.LogLine) error { return nil }); err != nil && drivers.CodeOf(err) != drivers.Timeout {
		t.Fatal(err)
	}
}

func TestLockConflictAndWait(t *testing.T) {
	d := newFullDriver("fake")
	d.add("web", drivers.StateStopped)
	d.add("other", drivers.StateStopped)
	h := newHarness(t, d, Options{CacheTTL: -1})
	release := make(chan struct{})
	d.then("start", step{block: release})
	done := make(chan error, 1)
	go func() { _, err := h.m.Start(bg, "web"); done <- err }()
	testenv.Eventually(t, 2*time.Second, func() error {
		if op, ok := h.m.locks.busy("web"); !ok || op != "start" {
			return errors.New("start not in progress yet")
		}
		return nil
	})
	mutations := map[string]func() error{
		"stop":    func() error { _, err := h.m.Stop(bg, "web", drivers.StopOptions{}); return err },
		"delete":  func() error { _, err := h.m.Delete(bg, "web", drivers.DeleteOptions{Force: true}); return err },
		"restart": func() error { return h.m.Restart(bg, "web", drivers.StopOptions{}) },
		"clone":   func() error { _, err := h.m.Clone(bg, "other", "web"); return err },
		"limits":  func() error { _, err := h.m.SetLimits(bg, "web", drivers.ResourceLimits{PIDs: 10}); return err },
	}
	for name, fn := range mutations {
		err := fn()
		wantCode(t, err, drivers.Conflict)
		if !strings.Contains(err.Error(), "instance web is busy: start in progress") {
			t.Fatalf("%s: %q", name, err)
		}
	}
	// Reads never wait; another instance is not blocked.
	if _, err := h.m.Get(bg, "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.m.Metrics(bg, "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.m.Start(bg, "other"); err != nil {
		t.Fatal(err)
	}
	// The conflicts were refusals (nothing changed): no failed events,
	// but counted in the operation metrics.
	for _, e := range h.events.all() {
		if e.Type == drivers.EventFailed {
			t.Fatalf("a busy instance emitted %+v", e)
		}
	}
	conflicts := 0
	for _, s := range h.m.Stats().Ops {
		conflicts += int(s.Errors[drivers.Conflict.String()])
	}
	if conflicts < len(mutations) {
		t.Fatalf("%d conflicts counted, want at least %d", conflicts, len(mutations))
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, ok := h.m.locks.busy("web"); ok {
		t.Fatal("lock still held")
	}
	if len(h.m.locks.entries) != 0 {
		t.Fatalf("lock entries leak: %v", h.m.locks.entries)
	}

	// With LockWait, a second mutation waits for the first.
	h2 := newHarness(t, d, Options{CacheTTL: -1, LockWait: 5 * time.Second})
	release2 := make(chan struct{})
	d.then("stop", step{block: release2})
	go func() { _, err := h2.m.Stop(bg, "web", drivers.StopOptions{}); done <- err }()
	testenv.Eventually(t, 2*time.Second, func() error {
		if _, ok := h2.m.locks.busy("web"); !ok {
			return errors.New("stop not in progress yet")
		}
		return nil
	})
	go func() { time.Sleep(20 * time.Millisecond); close(release2) }()
	if _, err := h2.m.Start(bg, "web"); err != nil {
		t.Fatalf("waiting start: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// A waiting mutation gives up when its ctx ends.
	release3 := make(chan struct{})
	defer close(release3)
	d.then("stop", step{block: release3})
	go func() { _, err := h2.m.Stop(bg, "web", drivers.StopOptions{}); done <- err }()
	testenv.Eventually(t, 2*time.Second, func() error {
		if _, ok := h2.m.locks.busy("web"); !ok {
			return errors.New("stop not in progress yet")
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(bg, 30*time.Millisecond)
	defer cancel()
	_, err := h2.m.Start(ctx, "web")
	wantCode(t, err, drivers.Timeout)
}

func TestCloneLocksSourceAndTarget(t *testing.T) {
	d := newFullDriver("fake")
	d.add("src", drivers.StateStopped)
	h := newHarness(t, d, Options{CacheTTL: -1})
	release := make(chan struct{})
	d.then("clone", step{block: release})
	done := make(chan error, 1)
	go func() { _, err := h.m.Clone(bg, "src", "dst"); done <- err }()
	testenv.Eventually(t, 2*time.Second, func() error {
		if _, ok := h.m.locks.busy("dst"); !ok {
			return errors.New("clone not in progress yet")
		}
		return nil
	})
	for _, n := range []string{"src", "dst"} {
		_, err := h.m.Start(bg, n)
		wantCode(t, err, drivers.Conflict)
		if !strings.Contains(err.Error(), "clone in progress") {
			t.Fatal(err)
		}
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	i, err := h.m.Get(bg, "dst")
	if err != nil || i.State != drivers.StateStopped {
		t.Fatalf("%+v %v", i, err)
	}
}

func TestCache(t *testing.T) {
	d := newFullDriver("fake")
	d.add("web", drivers.StateStopped)
	h := newHarness(t, d, Options{CacheTTL: 2 * time.Second})
	get := func() drivers.Instance {
		t.Helper()
		i, err := h.m.Get(bg, "web")
		if err != nil {
			t.Fatal(err)
		}
		return i
	}
	get()
	get()
	if n := d.count("get"); n != 1 {
		t.Fatalf("get calls = %d, want 1 (cached)", n)
	}
	// Returned values are copies: changing one does not change the cache.
	i := get()
	i.State = "mangled"
	if get().State != drivers.StateStopped {
		t.Fatal("cache shares memory with callers")
	}
	h.clock.advance(2 * time.Second)
	get()
	if n := d.count("get"); n != 2 {
		t.Fatalf("get calls = %d after TTL, want 2", n)
	}
	// A mutation invalidates.
	if _, err := h.m.Start(bg, "web"); err != nil {
		t.Fatal(err)
	}
	if get().State != drivers.StateRunning {
		t.Fatal("stale state after start")
	}
	if n := d.count("get"); n != 3 {
		t.Fatalf("get calls = %d, want 3", n)
	}
	// List is cached and invalidated the same way.
	for i := 0; i < 3; i++ {
		if _, err := h.m.List(bg); err != nil {
			t.Fatal(err)
		}
	}
	if n := d.count("list"); n != 1 {
		t.Fatalf("list calls = %d, want 1", n)
	}
	if _, err := h.m.Create(bg, drivers.InstanceTemplate{Name: "new", BaseImage: "img"}); err != nil {
		t.Fatal(err)
	}
	l, _ := h.m.List(bg)
	if len(l) != 2 || d.count("list") != 2 {
		t.Fatalf("list after create: %d items, %d calls", len(l), d.count("list"))
	}
	// A native event invalidates.
	get()
	n := d.count("get")
	d.events <- drivers.Event{Type: drivers.EventStateChanged, Instance: "web", State: drivers.StateStopped}
	testenv.Eventually(t, 2*time.Second, func() error {
		get()
		if d.count("get") == n {
			return errors.New("cache not invalidated by the native event")
		}
		return nil
	})
	if st := h.m.Stats().Ops["get"]; st.CacheHits == 0 {
		t.Fatalf("no cache hits counted: %+v", st)
	}

	// Disabled cache.
	d2 := newScriptDriver("fake")
	d2.add("web", drivers.StateStopped)
	h2 := newHarness(t, d2, Options{CacheTTL: -1})
	for i := 0; i < 3; i++ {
		if _, err := h2.m.Get(bg, "web"); err != nil {
			t.Fatal(err)
		}
	}
	if n := d2.count("get"); n != 3 {
		t.Fatalf("get calls = %d with caching off, want 3", n)
	}
}

func TestEventsForMutations(t *testing.T) {
	d := newFullDriver("fake")
	h := newHarness(t, d, Options{Host: "h9"})
	h.events.reset()
	ctx := drivers.WithRequestID(bg, "req-1")
	if drivers.RequestID(ctx) != "req-1" || drivers.RequestID(bg) != "" {
		t.Fatal("request id round trip")
	}
	steps := []struct {
		do   func() error
		want string // event types emitted, space separated
	}{
		{func() error {
			_, err := h.m.Create(ctx, drivers.InstanceTemplate{Name: "web", BaseImage: "img"})
			return err
		}, "created"},
		{func() error { _, err := h.m.Start(ctx, "web"); return err }, "started"},
		{func() error { _, err := h.m.Start(ctx, "web"); return err }, ""}, // already running
		{func() error { return h.m.Restart(ctx, "web", drivers.StopOptions{}) }, "restarted"},
		{func() error { _, err := h.m.SetLimits(ctx, "web", drivers.ResourceLimits{MemoryMB: 64}); return err }, "limits_changed"},
		{func() error { _, err := h.m.CreateSnapshot(ctx, "web", "s1"); return err }, "snapshot_created"},
		{func() error { return h.m.RestoreSnapshot(ctx, "web", "s1") }, "snapshot_restored"},
		{func() error { return h.m.DeleteSnapshot(ctx, "web", "s1") }, "snapshot_deleted"},
		{func() error {
			_, err := h.m.AttachNetwork(ctx, "web", drivers.NetworkConfig{NetworkName: "n1"})
			return err
		}, "network_attached"},
		{func() error {
			_, err := h.m.AttachNetwork(ctx, "web", drivers.NetworkConfig{NetworkName: "n1"})
			return err
		}, ""}, // already attached
		{func() error { return h.m.DetachNetwork(ctx, "web", "n1") }, "network_detached"},
		{func() error { _, err := h.m.Clone(ctx, "web", "web2"); return err }, "cloned"},
		{func() error { _, err := h.m.Stop(ctx, "web", drivers.StopOptions{}); return err }, "stopped"},
		{func() error { _, err := h.m.Stop(ctx, "web", drivers.StopOptions{}); return err }, ""}, // already stopped
		{func() error { _, err := h.m.Delete(ctx, "web", drivers.DeleteOptions{}); return err }, "deleted"},
		{func() error { _, err := h.m.Delete(ctx, "web", drivers.DeleteOptions{Force: true}); return err }, ""}, // already gone
		{func() error {
			_, err := h.m.Exec(ctx, "web2", drivers.ExecRequest{Command: []string{"x"}}, nil, nil)
			return err
		}, ""},
	}
	for i, s := range steps {
		h.events.reset()
		if err := s.do(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if got := strings.Join(h.events.types(), " "); got != s.want {
			t.Fatalf("step %d: events %q, want %q", i, got, s.want)
		}
	}
	// A refused request emits nothing: the manager refused it, or the
	// substrate answered that the name is missing, taken or in the wrong
	// state, and nothing changed.
	h.events.reset()
	_, err := h.m.Delete(ctx, "ghost", drivers.DeleteOptions{})
	wantCode(t, err, drivers.NotFound)
	if evs := h.events.all(); len(evs) != 0 {
		t.Fatalf("delete of a missing instance emitted %+v", evs)
	}
	for _, c := range drivers.Codes() {
		h.events.reset()
		d.then("snapshot-create", step{code: c})
		_, err = h.m.CreateSnapshot(ctx, "web2", "s1")
		wantCode(t, err, c)
		var evs []messages.Event // of the instance (unavailable also emits disconnected)
		for _, e := range h.events.all() {
			if e.Instance != "" {
				evs = append(evs, e)
			}
		}
		if Refused(err) {
			if len(evs) != 0 {
				t.Errorf("%s: refused request emitted %+v", c, evs)
			}
			continue
		}
		// A substrate operation that failed emits failed with the error.
		if len(evs) != 1 || evs[0].Type != drivers.EventFailed || evs[0].Details["snapshot"] != "s1" ||
			evs[0].Details["op"] != "snapshot-create" || evs[0].Instance != "web2" ||
			evs[0].Error == nil || evs[0].Error.Code != c || evs[0].Error.Retryable != c.Retryable() {
			t.Errorf("%s: failed event %+v", c, evs)
		}
	}
	// Every event is stamped.
	h.events.reset()
	_, _ = h.m.Start(ctx, "web2")
	_, _ = h.m.Stop(ctx, "web2", drivers.StopOptions{})
	ids := map[string]bool{}
	for _, e := range h.events.all() {
		if e.ID == "" || ids[e.ID] || e.Time.IsZero() || e.Driver != "fake" || e.Host != "h9" ||
			e.RequestID != "req-1" || e.Source != messages.SourceManager || e.Instance != "web2" {
			t.Fatalf("badly stamped event %+v", e)
		}
		ids[e.ID] = true
	}
	if len(ids) != 2 {
		t.Fatalf("%d events", len(ids))
	}
}

func TestSubscribers(t *testing.T) {
	d := newScriptDriver("fake")
	d.add("web", drivers.StateStopped)
	h := newHarness(t, d, Options{})
	var order []string
	var mu sync.Mutex
	note := func(s string) { mu.Lock(); order = append(order, s); mu.Unlock() }
	unsub := h.m.Subscribe(func(e messages.Event) { note("a:" + string(e.Type)) })
	h.m.Subscribe(func(e messages.Event) { panic("bad subscriber") })
	h.m.Subscribe(func(e messages.Event) {
		note("c:" + string(e.Type))
		if e.Type == drivers.EventStarted {
			// Calling back into the manager from a subscriber must not deadlock.
			_, _ = h.m.Stop(bg, "web", drivers.StopOptions{})
		}
	})
	if _, err := h.m.Start(bg, "web"); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	got := strings.Join(order, " ")
	mu.Unlock()
	if got != "a:started c:started a:stopped c:stopped" {
		t.Fatalf("delivery %q", got)
	}
	if !strings.Contains(h.logs.String(), "event subscriber panicked") {
		t.Fatal("subscriber panic not logged")
	}
	unsub()
	unsub()
	mu.Lock()
	order = nil
	mu.Unlock()
	_, _ = h.m.Start(bg, "web")
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(order, " ") != "c:started c:stopped" {
		t.Fatalf("after unsubscribe: %v", order)
	}
}

func TestDisableEvents(t *testing.T) {
	d := newFullDriver("fake")
	d.add("web", drivers.StateStopped)
	h := newHarness(t, d, Options{DisableEvents: true})
	if _, err := h.m.Start(bg, "web"); err != nil {
		t.Fatal(err)
	}
	if len(h.events.all()) != 0 {
		t.Fatalf("events with events disabled: %v", h.events.types())
	}
	if d.count("watch") != 0 {
		t.Fatal("native feed watched with events disabled")
	}
}

func TestNativeEvents(t *testing.T) {
	d := newFullDriver("fake")
	d.watchErrs <- errors.New("feed broke")
	h := newHarness(t, d, Options{Host: "h2"})
	// The first Watch fails; the manager watches again.
	testenv.Eventually(t, 2*time.Second, func() error {
		if d.count("watch") < 2 {
			return errors.New("not re-watched")
		}
		return nil
	})
	at := time.Date(2026, 2, 3, 4, 5, 6, 0, time.UTC)
	d.events <- drivers.Event{Type: drivers.EventAppeared, Instance: "outside", Time: at, State: drivers.StateRunning,
		Err: drivers.Errorf(drivers.Internal, "crashed")}
	var got messages.Event
	testenv.Eventually(t, 2*time.Second, func() error {
		for _, e := range h.events.all() {
			if e.Type == drivers.EventAppeared {
				got = e
				return nil
			}
		}
		return errors.New("native event not re-emitted")
	})
	if got.Source != messages.SourceNative || got.Instance != "outside" || got.Driver != "fake" || got.Host != "h2" ||
		got.ID == "" || !got.Time.Equal(at) || got.RequestID != "" || got.State != drivers.StateRunning ||
		got.Error == nil || got.Error.Code != drivers.Internal || got.Error.Message != "crashed" {
		t.Fatalf("native event %+v", got)
	}
	if !strings.Contains(h.logs.String(), "feed broke") {
		t.Fatal("feed failure not logged")
	}
	// Close stops the loop.
	if err := h.m.Close(); err != nil {
		t.Fatal(err)
	}
	n := d.count("watch")
	d.watchErrs <- errors.New("again")
	time.Sleep(20 * time.Millisecond)
	if d.count("watch") != n {
		t.Fatal("watch loop survived Close")
	}
}

func TestUnsupportedCapabilities(t *testing.T) {
	d := newScriptDriver("bare")
	d.add("web", drivers.StateRunning)
	h := newHarness(t, d, Options{})
	for _, op := range []string{"exec", "logs", "limits-get", "limits-set", "snapshot-list", "snapshot-create", "snapshot-restore", "snapshot-delete", "clone", "network-list", "network-attach", "network-detach"} {
		t.Run(op, func(t *testing.T) {
			err := ops[op](h.m)
			wantCode(t, err, drivers.Unsupported)
			if !strings.Contains(err.Error(), op) || !strings.Contains(err.Error(), "bare") {
				t.Fatalf("%q does not name the op and driver", err)
			}
		})
	}
	if c := h.m.Capabilities(); c != (drivers.Capabilities{}) {
		t.Fatalf("capabilities %+v", c)
	}
}

func TestRestart(t *testing.T) {
	t.Run("stop then start", func(t *testing.T) {
		d := newScriptDriver("fake")
		d.add("web", drivers.StateRunning)
		h := newHarness(t, d, Options{})
		h.events.reset()
		if err := h.m.Restart(bg, "web", drivers.StopOptions{}); err != nil {
			t.Fatal(err)
		}
		if d.count("stop") != 1 || d.count("start") != 1 {
			t.Fatalf("stop %d start %d", d.count("stop"), d.count("start"))
		}
		if got := strings.Join(h.events.types(), " "); got != "restarted" {
			t.Fatalf("events %q", got)
		}
		d.then("start", step{code: drivers.Conflict})
		err := h.m.Restart(bg, "web", drivers.StopOptions{})
		wantCode(t, err, drivers.Conflict)
	})
	t.Run("native", func(t *testing.T) {
		d := restartDriver{newScriptDriver("fake")}
		d.add("web", drivers.StateRunning)
		h := newHarness(t, d, Options{RetryAttempts: 3})
		if err := h.m.Restart(bg, "web", drivers.StopOptions{}); err != nil {
			t.Fatal(err)
		}
		if d.count("restart") != 1 || d.count("stop") != 0 {
			t.Fatalf("restart %d stop %d", d.count("restart"), d.count("stop"))
		}
		d.then("restart", step{code: drivers.Unavailable})
		err := h.m.Restart(bg, "web", drivers.StopOptions{})
		wantCode(t, err, drivers.Unavailable)
		if d.count("restart") != 2 {
			t.Fatal("native restart was retried")
		}
	})
}

func TestExecCollectsOrStreams(t *testing.T) {
	d := newFullDriver("fake")
	d.add("web", drivers.StateRunning)
	h := newHarness(t, d, Options{RetryAttempts: 3})
	res, err := h.m.Exec(bg, "web", drivers.ExecRequest{Command: []string{"echo"}}, nil, nil)
	if err != nil || res.ExitCode != 3 || string(res.Stdout) != "out:echo" || string(res.Stderr) != "err:echo" {
		t.Fatalf("%+v %v", res, err)
	}
	var out, errb bytes.Buffer
	res, err = h.m.Exec(bg, "web", drivers.ExecRequest{Command: []string{"ls"}}, &out, &errb)
	if err != nil || res.ExitCode != 3 || res.Stdout != nil || out.String() != "out:ls" || errb.String() != "err:ls" {
		t.Fatalf("%+v %v %q", res, err, out.String())
	}
	w := &limitWriter{n: 4}
	_, _ = w.Write([]byte("abc"))
	_, _ = w.Write([]byte("def"))
	if w.buf.String() != "abcd" {
		t.Fatalf("limitWriter kept %q", w.buf.String())
	}
}

func TestConnection(t *testing.T) {
	d := newScriptDriver("fake")
	d.add("web", drivers.StateRunning)
	logs := &syncBuffer{}
	m := New(d, Options{Logger: zerolog.New(logs), HealthCheckInterval: time.Minute, RetryAttempts: 1, CacheTTL: -1})
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	m.now = clock.now
	rec := &recorder{}
	m.Subscribe(rec.add)
	defer m.Close()
	if m.IsConnected() {
		t.Fatal("connected before Connect")
	}
	d.then("connect", step{code: drivers.Unavailable})
	wantCode(t, m.EnsureConnected(bg), drivers.Unavailable)
	if err := m.EnsureConnected(bg); err != nil {
		t.Fatal(err)
	}
	if !m.IsConnected() || d.count("connect") != 2 {
		t.Fatalf("connected=%v connects=%d", m.IsConnected(), d.count("connect"))
	}
	// Within the interval, no health check.
	if err := m.EnsureConnected(bg); err != nil || d.count("health") != 0 {
		t.Fatalf("err=%v health=%d", err, d.count("health"))
	}
	clock.advance(time.Minute)
	if err := m.EnsureConnected(bg); err != nil || d.count("health") != 1 {
		t.Fatalf("err=%v health=%d", err, d.count("health"))
	}
	// The substrate goes away: reads fail, never fabricate a state.
	d.setDown(true)
	_, err := m.Get(bg, "web")
	wantCode(t, err, drivers.Unavailable)
	_, err = m.List(bg)
	wantCode(t, err, drivers.Unavailable)
	if m.IsConnected() {
		t.Fatal("connected while the substrate is down")
	}
	wantCode(t, m.EnsureConnected(bg), drivers.Unavailable)
	d.setDown(false)
	if err := m.EnsureConnected(bg); err != nil || !m.IsConnected() {
		t.Fatalf("reconnect: %v", err)
	}
	var conn []string
	for _, e := range rec.all() {
		if e.Type == drivers.EventConnected || e.Type == drivers.EventDisconnected {
			conn = append(conn, string(e.Type))
		}
	}
	if strings.Join(conn, " ") != "connected disconnected connected" {
		t.Fatalf("connection events %v", conn)
	}
	// A slow connect is bounded by ConnectionTimeout.
	m2 := New(d, Options{ConnectionTimeout: 50 * time.Millisecond})
	d.then("connect", step{delay: 2 * time.Second})
	start := time.Now()
	wantCode(t, m2.Connect(bg), drivers.Timeout)
	if time.Since(start) > time.Second {
		t.Fatal("connect not bounded by ConnectionTimeout")
	}
}

func TestHealthReportsBreaker(t *testing.T) {
	d := newScriptDriver("fake")
	h := newHarness(t, d, Options{RetryAttempts: 1, BreakerFailures: 1, BreakerOpenTimeout: time.Minute})
	hl, err := h.m.Health(bg)
	if err != nil || !hl.Healthy || hl.Details["breaker"] != "closed" || len(hl.Issues) != 0 {
		t.Fatalf("%+v %v", hl, err)
	}
	d.setDown(true)
	_, _ = h.m.List(bg)
	hl, err = h.m.Health(bg)
	wantCode(t, err, drivers.Unavailable)
	if hl.Healthy || hl.Details["breaker"] != "open" || !strings.Contains(strings.Join(hl.Issues, ";"), "circuit breaker is open") {
		t.Fatalf("%+v", hl)
	}
}

func TestStats(t *testing.T) {
	d := newScriptDriver("fake")
	d.add("web", drivers.StateRunning)
	h := newHarness(t, d, Options{RetryAttempts: 1, CacheTTL: -1, Host: "h"})
	for i := 0; i < 5; i++ {
		_, _ = h.m.Get(bg, "web")
	}
	_, _ = h.m.Get(bg, "nope")
	_, _ = h.m.Get(bg, "bad name")
	s := h.m.Stats()
	g := s.Ops["get"]
	if g.Count != 7 || g.Errors["not_found"] != 1 || g.Errors["invalid_argument"] != 1 {
		t.Fatalf("get stats %+v", g)
	}
	var sum int64
	for _, b := range g.Buckets {
		sum += b
	}
	if sum != g.Count || len(g.Buckets) != len(BucketBoundsMs)+1 || g.P50Ms > g.P99Ms || g.P99Ms > g.MaxMs && g.MaxMs > 0 {
		t.Fatalf("histogram %+v", g)
	}
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var back OpStats
	if err := json.Unmarshal(b, &back); err != nil || back.Ops["get"].Count != 7 || back.Driver != "fake" || back.Breaker != "closed" {
		t.Fatalf("round trip %s: %v", b, err)
	}
}

func TestQuantile(t *testing.T) {
	buckets := make([]int64, len(BucketBoundsMs)+1)
	buckets[0] = 50 // ≤ 1ms
	buckets[5] = 49 // ≤ 100ms
	buckets[8] = 1  // ≤ 1000ms
	tests := []struct {
		q    float64
		max  float64
		want float64
	}{
		{0.5, 700, 1},
		{0.51, 700, 100},
		{0.99, 700, 100},
		{1, 700, 700}, // capped at the max seen
	}
	for _, tc := range tests {
		if got := quantile(buckets, 100, tc.q, tc.max); got != tc.want {
			t.Errorf("q%.2f = %v, want %v", tc.q, got, tc.want)
		}
	}
	if quantile(buckets, 0, 0.5, 0) != 0 {
		t.Error("empty")
	}
}

// badClassifier returns codes outside the closed set, or panics.
type badClassifier struct{ *scriptDriver }

func (d badClassifier) ErrorCode(err error) drivers.Code {
	if strings.Contains(err.Error(), "panic") {
		panic("classifier bug")
	}
	return drivers.Code(7)
}

func TestBadClassifierIsInternal(t *testing.T) {
	d := badClassifier{newScriptDriver("fake")}
	h := newHarness(t, d, Options{RetryAttempts: 1, CacheTTL: -1})
	d.then("list", step{raw: errors.New("odd")}, step{raw: errors.New("panic please")})
	for i := 0; i < 2; i++ {
		_, err := h.m.List(bg)
		wantCode(t, err, drivers.Internal)
	}
}

func TestEnsureConnectedReconnectsAfterFailedHealthCheck(t *testing.T) {
	d := newScriptDriver("fake")
	h := newHarness(t, d, Options{RetryAttempts: 1, HealthCheckInterval: time.Minute})
	d.then("health", step{code: drivers.Unavailable})
	h.clock.advance(time.Minute)
	if err := h.m.EnsureConnected(bg); err != nil {
		t.Fatal(err)
	}
	if d.count("health") != 1 || d.count("connect") != 2 || !h.m.IsConnected() {
		t.Fatalf("health %d connect %d connected %v", d.count("health"), d.count("connect"), h.m.IsConnected())
	}
	// A health error that says nothing about reachability does not reconnect.
	h.clock.advance(time.Minute)
	d.then("health", step{code: drivers.PermissionDenied})
	wantCode(t, h.m.EnsureConnected(bg), drivers.PermissionDenied)
	if d.count("connect") != 2 {
		t.Fatal("reconnected on a non-connection error")
	}
}

// Many callers at once: every mutation either succeeds or is a clean
// conflict, no event is lost or duplicated, and no lock leaks.
func TestConcurrentCallers(t *testing.T) {
	d := newFullDriver("fake")
	names := []string{"a", "b", "c"}
	for _, n := range names {
		d.add(n, drivers.StateStopped)
	}
	h := newHarness(t, d, Options{RetryAttempts: 1})
	h.events.reset()
	var inside, overlaps atomic.Int32
	h.m.Subscribe(func(messages.Event) {
		if inside.Add(1) > 1 {
			overlaps.Add(1)
		}
		time.Sleep(10 * time.Microsecond)
		inside.Add(-1)
	})
	var wg sync.WaitGroup
	var mu sync.Mutex
	changes := 0
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				n := names[(g+i)%len(names)]
				var changed bool
				var err error
				if (g+i)%2 == 0 {
					changed, err = h.m.Start(bg, n)
				} else {
					changed, err = h.m.Stop(bg, n, drivers.StopOptions{Force: true})
				}
				if err != nil && drivers.CodeOf(err) != drivers.Conflict {
					t.Errorf("%s: %v", n, err)
				}
				if changed {
					mu.Lock()
					changes++
					mu.Unlock()
				}
				_, _ = h.m.Get(bg, n)
				_, _ = h.m.List(bg)
			}
		}(g)
	}
	wg.Wait()
	var started, stopped int
	for _, e := range h.events.all() {
		switch e.Type {
		case drivers.EventStarted:
			started++
		case drivers.EventStopped:
			stopped++
		}
	}
	if started+stopped != changes {
		t.Fatalf("%d state events for %d changes", started+stopped, changes)
	}
	if overlaps.Load() != 0 {
		t.Fatalf("a subscriber was called concurrently %d times", overlaps.Load())
	}
	h.m.locks.mu.Lock()
	defer h.m.locks.mu.Unlock()
	if len(h.m.locks.entries) != 0 {
		t.Fatalf("lock entries leak: %d", len(h.m.locks.entries))
	}
}

func TestLogsReturnsEmitErrorUnchanged(t *testing.T) {
	d := newFullDriver("fake")
	d.add("web", drivers.StateRunning)
	h := newHarness(t, d, Options{})
	stop := errors.New("enough")
	err := h.m.Logs(bg, "web", drivers.LogOptions{Lines: 3}, func(drivers.LogLine) error { return stop })
	if err != stop {
		t.Fatalf("err = %v, want the emit error itself", err)
	}
	coded := drivers.Errorf(drivers.Unavailable, "bus down")
	for i := 0; i < 10; i++ {
		err = h.m.Logs(bg, "web", drivers.LogOptions{Lines: 3}, func(drivers.LogLine) error { return coded })
		if err != coded {
			t.Fatalf("err = %v", err)
		}
	}
	if s := h.m.BreakerState(); s != "closed" {
		t.Fatalf("the caller's emit errors opened the breaker: %s", s)
	}
}

type failingWriter struct{ err error }

func (w failingWriter) Write([]byte) (int, error) { return 0, w.err }

func TestExecReturnsWriterErrorUnchanged(t *testing.T) {
	d := newFullDriver("fake")
	d.add("web", drivers.StateRunning)
	h := newHarness(t, d, Options{BreakerFailures: 2})
	gone := drivers.Errorf(drivers.Unavailable, "client went away")
	for i := 0; i < 5; i++ {
		var out bytes.Buffer
		_, err := h.m.Exec(bg, "web", drivers.ExecRequest{Command: []string{"x"}}, &out, failingWriter{gone})
		if err != gone {
			t.Fatalf("err = %v, want the writer's error itself", err)
		}
	}
	if s := h.m.BreakerState(); s != "closed" {
		t.Fatalf("the caller's writer errors opened the breaker: %s", s)
	}
}

// unsetDriver can remove limits; it records what it was asked.
type unsetDriver struct {
	*fullDriver
	unset []drivers.LimitField
}

func (d *unsetDriver) UnsetLimits(ctx context.Context, name string, fields []drivers.LimitField) (drivers.ResourceLimits, error) {
	d.unset = append(d.unset, fields...)
	return drivers.ResourceLimits{MemoryMB: 64}, d.enter(ctx, "limits-unset")
}

// Removing a limit: a driver without LimitUnsetter answers unsupported
// before anything changes; one with it removes first, then sets, and one
// limits_changed event says so.
func TestLimitRemoval(t *testing.T) {
	d := newFullDriver("nounset")
	d.add("web", drivers.StateRunning)
	h := newHarness(t, d, Options{})
	h.events.reset()
	before := d.totalCalls()
	_, err := h.m.ChangeLimits(bg, "web", drivers.ResourceLimits{MemoryMB: 64}, []drivers.LimitField{drivers.LimitPIDs})
	wantCode(t, err, drivers.Unsupported)
	if !strings.Contains(err.Error(), "pids") || d.totalCalls() != before || len(h.events.types()) != 0 {
		t.Fatalf("unsupported removal: %v, %d driver calls, events %v", err, d.totalCalls()-before, h.events.types())
	}

	u := &unsetDriver{fullDriver: newFullDriver("canunset")}
	u.add("web", drivers.StateRunning)
	h = newHarness(t, u, Options{})
	h.events.reset()
	l, err := h.m.ChangeLimits(bg, "web", drivers.ResourceLimits{MemoryMB: 64}, []drivers.LimitField{drivers.LimitPIDs, drivers.LimitCPUCores})
	if err != nil || l.MemoryMB != 64 {
		t.Fatalf("set and unset: %+v %v", l, err)
	}
	if !slices.Equal(u.unset, []drivers.LimitField{drivers.LimitPIDs, drivers.LimitCPUCores}) || u.count("limits-unset") != 1 || u.count("limits-set") != 1 {
		t.Fatalf("driver asked to unset %v (%d calls), set %d times", u.unset, u.count("limits-unset"), u.count("limits-set"))
	}
	if got := strings.Join(h.events.types(), " "); got != "limits_changed" {
		t.Fatalf("events %q", got)
	}
	// Removal alone is enough of a request.
	if _, err := h.m.UnsetLimits(bg, "web", []drivers.LimitField{drivers.LimitMemoryMB}); err != nil {
		t.Fatal(err)
	}
}
