package driverstest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/messages"
)

// tests lists the top-level subtests in the order they run.
func (su *suite) tests() []namedTest {
	return []namedTest{
		{"Capabilities", testCapabilities},
		{"Unsupported", testUnsupported},
		{"Health", testHealth},
		{"RoundTrip", testRoundTrip},
		{"CreateExisting", testCreateExisting},
		{"Missing", testMissing},
		{"Idempotent", testIdempotent},
		{"ForceStop", testForceStop},
		{"StopDeadline", testStopDeadline},
		{"Unreachable", testUnreachable},
		{"ForceDeleteRunning", testForceDeleteRunning},
		{"DeleteRunningConflict", testDeleteRunningConflict},
		{"RefusedEmitsNothing", testRefusedEmitsNothing},
		{"InvalidNames", testInvalidNames},
		{"Restart", testRestart},
		{"Exec", testExec},
		{"Logs", testLogs},
		{"Metrics", testMetrics},
		{"Limits", testLimits},
		{"Snapshots", testSnapshots},
		{"Clone", testClone},
		{"Networks", testNetworks},
		{"Events", testEvents},
	}
}

func testCapabilities(t *testing.T, e *env) {
	got := e.m.Capabilities()
	if derived := drivers.CapabilitiesOf(e.d); derived != got {
		t.Errorf("manager capabilities %+v differ from CapabilitiesOf(driver) %+v", got, derived)
	}
	if e.s.caps == nil {
		t.Logf("driver %s declares %+v (no expectation given)", e.d.Name(), got)
		return
	}
	if got != *e.s.caps {
		t.Errorf("driver %s declares %+v, want %+v", e.d.Name(), got, *e.s.caps)
	}
	if e.d.Name() != e.m.Driver() || e.d.Name() == "" {
		t.Errorf("driver name %q, manager says %q", e.d.Name(), e.m.Driver())
	}
}

func testRoundTrip(t *testing.T, e *env) {
	name := e.name("rt")
	tmpl := e.h.Template(name)
	inst := e.createNamed(name)
	if inst.Name != name {
		t.Errorf("Create returned name %q, want %q", inst.Name, name)
	}
	if inst.State != drivers.StateStopped {
		t.Errorf("created instance is %s, want stopped", inst.State)
	}

	got, err := e.m.Get(e.ctx(), name)
	e.must("Get", err)
	if got.Name != name || got.State != drivers.StateStopped {
		t.Errorf("Get = {Name:%q State:%s}, want {%q stopped}", got.Name, got.State, name)
	}
	if tmpl.BaseImage != "" && got.Image == "" {
		t.Errorf("Get: Image is empty, template had %q", tmpl.BaseImage)
	}
	if l, ok := e.listed(name); !ok {
		t.Errorf("List does not show %s", name)
	} else if l.State != drivers.StateStopped {
		t.Errorf("List shows %s as %s, want stopped", name, l.State)
	}

	changed, err := e.m.Start(e.ctx(), name)
	e.must("Start", err)
	if !changed {
		t.Errorf("Start of a stopped instance: changed=false, want true")
	}
	e.waitState(name, drivers.StateRunning)
	if l, ok := e.listed(name); !ok || l.State != drivers.StateRunning {
		t.Errorf("List shows %s as %q (listed=%v), want running", name, l.State, ok)
	}

	u, err := e.m.Metrics(e.ctx(), name)
	e.must("Metrics", err)
	if u.Time.IsZero() {
		t.Errorf("Metrics: Time is zero")
	}

	// The template's instance answers a graceful stop, so a stop that
	// takes the whole timeout means the driver's graceful signal never
	// reached it.
	began := time.Now()
	changed, err = e.m.Stop(e.ctx(), name, e.stopOpts())
	e.must("Stop", err)
	if !changed {
		t.Errorf("Stop of a running instance: changed=false, want true")
	}
	if took := time.Since(began); took >= e.s.stopTimeout {
		t.Errorf("graceful Stop took %v, the whole stop timeout: the instance did not get the graceful signal", took)
	}
	e.waitState(name, drivers.StateStopped)

	changed, err = e.m.Delete(e.ctx(), name, drivers.DeleteOptions{})
	e.must("Delete", err)
	if !changed {
		t.Errorf("Delete: changed=false, want true")
	}
	e.waitGone(name)
}

func testHealth(t *testing.T, e *env) {
	name := e.running("health")
	h, err := e.m.Health(e.ctx())
	e.must("Health", err)
	if !h.Healthy {
		t.Errorf("Health: not healthy on a working substrate: %+v", h)
	}
	checkHealthUsage(t, h)
	if h.Instances != nil && h.Instances[drivers.StateRunning] < 1 {
		t.Errorf("Health counts %v, but %s is running", h.Instances, name)
	}
}

func testCreateExisting(t *testing.T, e *env) {
	name := e.create("dup")
	_, err := e.m.Create(e.ctx(), e.h.Template(name))
	e.wantCode("Create of an existing name", err, drivers.AlreadyExists)
	// The original is untouched.
	e.waitState(name, drivers.StateStopped)
}

func testMissing(t *testing.T, e *env) {
	name := e.name("missing")
	ops := []struct {
		op string
		fn func(ctx context.Context) error
	}{
		{"Get", func(ctx context.Context) error { _, err := e.m.Get(ctx, name); return err }},
		{"Start", func(ctx context.Context) error { _, err := e.m.Start(ctx, name); return err }},
		{"Stop", func(ctx context.Context) error { _, err := e.m.Stop(ctx, name, e.stopOpts()); return err }},
		{"ForceStop", func(ctx context.Context) error {
			_, err := e.m.Stop(ctx, name, drivers.StopOptions{Force: true})
			return err
		}},
		{"Delete", func(ctx context.Context) error { _, err := e.m.Delete(ctx, name, drivers.DeleteOptions{}); return err }},
	}
	// One wording on every driver: the manager's shape, with the
	// substrate's own text (if any) as the detail, said once.
	want := fmt.Sprintf("instance %q not found", name)
	for _, o := range ops {
		e.run(o.op, func(t *testing.T, e *env) {
			err := o.fn(e.ctx())
			e.wantCode(o.op+" of a missing instance", err, drivers.NotFound)
			info := messages.InfoOf(err)
			if info.Message != want {
				t.Errorf("%s of a missing instance: message %q, want %q", o.op, info.Message, want)
			}
			if repeats(info.Detail) {
				t.Errorf("%s of a missing instance: detail %q says the same thing twice", o.op, info.Detail)
			}
		})
	}
	e.run("ForceDelete", func(t *testing.T, e *env) {
		changed, err := e.m.Delete(e.ctx(), name, drivers.DeleteOptions{Force: true})
		e.must("force Delete of a missing instance", err)
		if changed {
			t.Errorf("force Delete of a missing instance: changed=true, want false")
		}
	})
}

// repeats reports whether an error text has the same part twice (parts
// are separated by ": ", the way wrapped errors are joined).
func repeats(text string) bool {
	seen := map[string]bool{}
	for _, p := range strings.Split(text, ": ") {
		p = strings.ToLower(strings.TrimSpace(p))
		if p != "" && seen[p] {
			return true
		}
		seen[p] = true
	}
	return false
}

func testIdempotent(t *testing.T, e *env) {
	name := e.create("idem")
	changed, err := e.m.Stop(e.ctx(), name, e.stopOpts())
	e.must("Stop of a stopped instance", err)
	if changed {
		t.Errorf("Stop of a stopped instance: changed=true, want false")
	}
	_, err = e.m.Start(e.ctx(), name)
	e.must("Start", err)
	e.waitState(name, drivers.StateRunning)
	changed, err = e.m.Start(e.ctx(), name)
	e.must("Start of a running instance", err)
	if changed {
		t.Errorf("Start of a running instance: changed=true, want false")
	}
	e.waitState(name, drivers.StateRunning)
	_, err = e.m.Stop(e.ctx(), name, e.stopOpts())
	e.must("Stop", err)
	e.waitState(name, drivers.StateStopped)
	changed, err = e.m.Stop(e.ctx(), name, drivers.StopOptions{Force: true})
	e.must("force Stop of a stopped instance", err)
	if changed {
		t.Errorf("force Stop of a stopped instance: changed=true, want false")
	}
}

func testForceStop(t *testing.T, e *env) {
	name := e.running("fstop")
	changed, err := e.m.Stop(e.ctx(), name, drivers.StopOptions{Force: true})
	e.must("force Stop", err)
	if !changed {
		t.Errorf("force Stop of a running instance: changed=false, want true")
	}
	e.waitState(name, drivers.StateStopped)
	// It can be started again.
	_, err = e.m.Start(e.ctx(), name)
	e.must("Start after force stop", err)
	e.waitState(name, drivers.StateRunning)
}

func testForceDeleteRunning(t *testing.T, e *env) {
	name := e.running("fdel")
	changed, err := e.m.Delete(e.ctx(), name, drivers.DeleteOptions{Force: true})
	e.must("force Delete of a running instance", err)
	if !changed {
		t.Errorf("force Delete of a running instance: changed=false, want true")
	}
	e.waitGone(name)
}

func testDeleteRunningConflict(t *testing.T, e *env) {
	name := e.running("delrun")
	_, err := e.m.Delete(e.ctx(), name, drivers.DeleteOptions{})
	e.wantCode("Delete of a running instance without force", err, drivers.Conflict)
	e.waitState(name, drivers.StateRunning)
}

// testRefusedEmitsNothing: a request the substrate refuses (a taken name,
// a missing instance, a running instance deleted without force) changes
// nothing and emits no failed event; failed is for a substrate operation
// that failed.
func testRefusedEmitsNothing(t *testing.T, e *env) {
	var mu sync.Mutex
	var failed []messages.Event
	unsub := e.m.Subscribe(func(ev messages.Event) {
		if ev.Type == drivers.EventFailed {
			mu.Lock()
			failed = append(failed, ev)
			mu.Unlock()
		}
	})
	defer unsub()
	name, missing := e.running("refused"), e.name("missing")
	refusals := []struct {
		what string
		code drivers.Code
		fn   func(ctx context.Context) error
	}{
		{"Create of a taken name", drivers.AlreadyExists, func(ctx context.Context) error {
			_, err := e.m.Create(ctx, e.h.Template(name))
			return err
		}},
		{"Delete of a running instance", drivers.Conflict, func(ctx context.Context) error {
			_, err := e.m.Delete(ctx, name, drivers.DeleteOptions{})
			return err
		}},
		{"Delete of a missing instance", drivers.NotFound, func(ctx context.Context) error {
			_, err := e.m.Delete(ctx, missing, drivers.DeleteOptions{})
			return err
		}},
		{"Start of a missing instance", drivers.NotFound, func(ctx context.Context) error {
			_, err := e.m.Start(ctx, missing)
			return err
		}},
		{"Restart of a missing instance", drivers.NotFound, func(ctx context.Context) error {
			return e.m.Restart(ctx, missing, e.stopOpts())
		}},
	}
	for _, r := range refusals {
		e.wantCode(r.what, r.fn(e.ctx()), r.code)
	}
	e.waitState(name, drivers.StateRunning)
	mu.Lock()
	defer mu.Unlock()
	for _, ev := range failed {
		if ev.Instance == name || ev.Instance == missing {
			t.Errorf("refused request emitted %+v", ev)
		}
	}
}

func testRestart(t *testing.T, e *env) {
	name := e.running("restart")
	e.must("Restart", e.m.Restart(e.ctx(), name, e.stopOpts()))
	e.waitState(name, drivers.StateRunning)
	// Restart of a stopped instance starts it.
	_, err := e.m.Stop(e.ctx(), name, e.stopOpts())
	e.must("Stop", err)
	e.waitState(name, drivers.StateStopped)
	e.must("Restart of a stopped instance", e.m.Restart(e.ctx(), name, e.stopOpts()))
	e.waitState(name, drivers.StateRunning)
	err = e.m.Restart(e.ctx(), e.name("missing"), e.stopOpts())
	e.wantCode("Restart of a missing instance", err, drivers.NotFound)
}

// spy wraps a driver's core interface and counts calls, so the suite can
// show that invalid input never reaches the driver.
type spy struct {
	drivers.Driver
	calls atomic.Int64
}

// NameRule is the wrapped driver's rule, so the manager checks it.
func (s *spy) NameRule() drivers.NameRule { return drivers.NameRuleOf(s.Driver) }

func (s *spy) List(ctx context.Context) ([]drivers.Instance, error) {
	return s.Driver.List(ctx)
}
func (s *spy) Get(ctx context.Context, n string) (drivers.Instance, error) {
	s.calls.Add(1)
	return s.Driver.Get(ctx, n)
}
func (s *spy) Create(ctx context.Context, t drivers.InstanceTemplate) (drivers.Instance, error) {
	s.calls.Add(1)
	return s.Driver.Create(ctx, t)
}
func (s *spy) Start(ctx context.Context, n string) (bool, error) {
	s.calls.Add(1)
	return s.Driver.Start(ctx, n)
}
func (s *spy) Stop(ctx context.Context, n string, o drivers.StopOptions) (bool, error) {
	s.calls.Add(1)
	return s.Driver.Stop(ctx, n, o)
}
func (s *spy) Delete(ctx context.Context, n string, o drivers.DeleteOptions) (bool, error) {
	s.calls.Add(1)
	return s.Driver.Delete(ctx, n, o)
}
func (s *spy) Metrics(ctx context.Context, n string) (drivers.ResourceUsage, error) {
	s.calls.Add(1)
	return s.Driver.Metrics(ctx, n)
}

var invalidNames = []struct{ desc, name string }{
	{"empty", ""},
	{"slash", "a/b"},
	{"dotdot", ".."},
	{"dot", "."},
	{"traversal", "../etc"},
	{"newline", "a\nb"},
	{"space", "a b"},
	{"nul", "a\x00b"},
	{"leading dash", "-a"},
	{"too long", "a123456789012345678901234567890123456789012345678901234567890123"},
}

func testInvalidNames(t *testing.T, e *env) {
	e.closeManager() // this test needs its own driver, wrapped in a spy
	d, err := e.h.MakeDriver(e.ctx())
	e.must("MakeDriver", err)
	sp := &spy{Driver: d}
	m := manager.New(sp, e.s.mopts)
	e.must("Connect", m.Connect(e.ctx()))
	t.Cleanup(func() { _ = m.Close() })
	sp.calls.Store(0)
	for _, n := range invalidNames {
		e.run(n.desc, func(t *testing.T, e *env) {
			ctx := e.ctx()
			tmpl := e.h.Template("valid")
			tmpl.Name = n.name
			_, err := m.Create(ctx, tmpl)
			e.wantCode(fmt.Sprintf("Create(%q)", n.name), err, drivers.InvalidArgument)
			_, err = m.Get(ctx, n.name)
			e.wantCode(fmt.Sprintf("Get(%q)", n.name), err, drivers.InvalidArgument)
			_, err = m.Start(ctx, n.name)
			e.wantCode(fmt.Sprintf("Start(%q)", n.name), err, drivers.InvalidArgument)
			_, err = m.Stop(ctx, n.name, e.stopOpts())
			e.wantCode(fmt.Sprintf("Stop(%q)", n.name), err, drivers.InvalidArgument)
			_, err = m.Delete(ctx, n.name, drivers.DeleteOptions{Force: true})
			e.wantCode(fmt.Sprintf("Delete(%q)", n.name), err, drivers.InvalidArgument)
			_, err = m.Metrics(ctx, n.name)
			e.wantCode(fmt.Sprintf("Metrics(%q)", n.name), err, drivers.InvalidArgument)
		})
	}
	if n := sp.calls.Load(); n != 0 {
		t.Errorf("the driver was called %d times with invalid names; the manager must reject them first", n)
	}
	e.run("DriverRule", func(t *testing.T, e *env) { testDriverNameRule(t, e, m, sp) })
}

// testDriverNameRule: a name the generic rule (and so the CLI) accepts but
// the driver's declared rule refuses is invalid_argument naming the rule,
// and the substrate is not touched.
func testDriverNameRule(t *testing.T, e *env, m *manager.Manager, sp *spy) {
	rule := m.NameRule()
	if rule.Text == "" {
		t.Errorf("the driver's name rule has no words")
	}
	base := e.name("rule")
	var name string
	for _, c := range []string{base + "_x", base + ".x", "9" + base, "x", "4242", base + "-"} {
		if drivers.ValidateName("name", c) == nil && !rule.Valid(c, true) {
			name = c
			break
		}
	}
	if name == "" {
		t.Skipf("the driver's rule accepts every name the generic rule does (%s)", rule.Text)
	}
	before := sp.calls.Load()
	tmpl := e.h.Template("valid")
	tmpl.Name = name
	_, err := m.Create(e.ctx(), tmpl)
	e.wantCode(fmt.Sprintf("Create(%q)", name), err, drivers.InvalidArgument)
	if !strings.Contains(err.Error(), rule.Text) {
		t.Errorf("Create(%q): %v, want the error to state the rule (%s)", name, err, rule.Text)
	}
	if n := sp.calls.Load() - before; n != 0 {
		t.Errorf("Create(%q) reached the driver (%d calls); the manager must check the driver's rule first", name, n)
	}
	if _, ok := e.listedBy(m, name); ok {
		t.Errorf("Create(%q) was refused but the instance exists", name)
	}
}
