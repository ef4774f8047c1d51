// Package driverstest is the conformance suite every driver runs against
// its real substrate. It drives the driver THROUGH the manager
// (manager.New), the way every caller uses it, and checks the contract of
// internal/drivers: lifecycle round trips, idempotency, each error code
// the contract promises (with one message shape, `instance "x" not
// found`, on every driver), the driver's declared name rule, force stop
// and delete, exec, logs (with the order and times its log_order and
// log_times promise; ScriptHarness), metrics and its measured mask, every
// capability the driver declares, and
// `unsupported` for every one it does not. Two cases run only for
// harnesses that implement an optional hook: StopDeadline (Timeout when
// the caller's ctx ends during a graceful stop; StubbornHarness) and
// Unreachable (Unavailable from a dead endpoint; UnreachableHarness).
//
// A driver package uses it from a test:
//
//	func TestConformance(t *testing.T) {
//		driverstest.RunConformanceTests(t, newHarness,
//			driverstest.WithCapabilities(drivers.Capabilities{Exec: true, Logs: true}))
//	}
//
// Every subtest makes its own harness, driver and manager, uses instance
// names made of a prefix and a random suffix, and force-deletes what it
// created in t.Cleanup, so subtests are independent of each other and of
// parallel runs.
package driverstest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/manager"
)

// Harness adapts the suite to one substrate.
type Harness interface {
	// MakeDriver returns a new, unconnected driver for the substrate
	// under test. The suite wraps it in a manager and connects it. It may
	// be called more than once per harness, but the suite closes one
	// driver before it connects the next.
	MakeDriver(ctx context.Context) (drivers.Driver, error)
	// Template returns a template for an instance called name. Once
	// started the instance:
	//   - runs until stopped, and responds to a graceful stop (SIGTERM,
	//     ACPI shutdown, …) well within the suite's stop timeout;
	//   - writes the line "subbus-conformance <name>" to its log output at
	//     start, then a line starting "subbus-conformance tick" at least
	//     every 2 seconds (so log follow can see new lines arrive);
	//   - has the environment variable SUBBUS_CONFORMANCE=1 (visible to
	//     exec), and, when the driver declares Exec, a POSIX sh on its PATH
	//     and a /tmp directory.
	// A shell loop such as ConformanceScript(name) does all of this.
	Template(name string) drivers.InstanceTemplate
	// Close releases what the harness holds. Instances are already
	// force-deleted by the suite.
	Close()
}

// NetworkHarness is implemented by harnesses whose driver declares
// Networks and can attach test instances to a network.
type NetworkHarness interface {
	// Network returns the name of an existing network (internal, no route
	// out) that test instances may be attached to and detached from, and
	// that instances made from Template are not on.
	Network() string
}

// HarnessMaker makes a harness; it is called once per subtest.
type HarnessMaker func(ctx context.Context, t *testing.T) (Harness, error)

// ConformanceScript returns a POSIX shell script that behaves as
// Harness.Template requires (apart from the environment variable, which
// the template sets): run it as `sh -c <script>`.
func ConformanceScript(name string) string {
	return `trap 'exit 0' TERM INT; echo "subbus-conformance ` + name + `"; ` +
		`i=0; while :; do i=$((i+1)); echo "subbus-conformance tick $i"; sleep 1 & wait $!; done`
}

// StartLine is the line a conformance instance called name writes at start.
func StartLine(name string) string { return "subbus-conformance " + name }

// Option changes how the suite runs.
type Option func(*settings)

type settings struct {
	opTimeout   time.Duration
	settle      time.Duration
	stopTimeout time.Duration
	caps        *drivers.Capabilities
	mopts       manager.Options
	prefix      string
	skips       map[string]string
	// logsNotOutput: the driver's logs are not the instance's own output.
	logsNotOutput string
	root          string // name of the test that called RunConformanceTests
}

// WithOperationTimeout bounds every single operation the suite makes
// (default 30s). Slow substrates (VMs, LXD image unpacking) raise it.
func WithOperationTimeout(d time.Duration) Option { return func(s *settings) { s.opTimeout = d } }

// WithSettleTimeout bounds how long the suite polls for an eventual
// condition: a state change seen in Get, a log line, an event (default 20s).
func WithSettleTimeout(d time.Duration) Option { return func(s *settings) { s.settle = d } }

// WithStopTimeout is the graceful stop timeout the suite passes (default 10s).
func WithStopTimeout(d time.Duration) Option { return func(s *settings) { s.stopTimeout = d } }

// WithCapabilities states the capabilities the driver is expected to
// declare. The suite checks that the driver declares exactly these. Without
// it the suite trusts what the driver declares (and logs it).
func WithCapabilities(c drivers.Capabilities) Option { return func(s *settings) { s.caps = &c } }

// WithManagerOptions sets the options of the manager the suite builds
// (Host, timeouts, retries …). Default: the zero Options.
func WithManagerOptions(o manager.Options) Option { return func(s *settings) { s.mopts = o } }

// WithNamePrefix sets the prefix of instance names (default "sbct").
// Names are prefix-<test>-<random>, lower-case letters, digits and '-'.
func WithNamePrefix(p string) Option { return func(s *settings) { s.prefix = p } }

// WithLogsNotOutput says that the driver's logs are not what the
// instance writes (Proxmox: the logs of the guest's PVE tasks), giving the
// reason. The suite then checks only what holds for any log (the tail of a
// missing instance is NotFound, an emit error stops a followed read) and
// does not look for the template's lines in the logs of a started or
// cloned instance.
func WithLogsNotOutput(reason string) Option { return func(s *settings) { s.logsNotOutput = reason } }

// outputInLogs reports whether the instance's own output can be read
// through Logs.
func (e *env) outputInLogs() bool { return e.caps.Logs && e.s.logsNotOutput == "" }

// WithSkip skips the subtest with the given path below the suite (as
// `go test -run` shows it, e.g. "Exec/Stdin" or "Logs/Follow"), giving the
// reason. Use it only for documented substrate limitations.
func WithSkip(test, reason string) Option {
	return func(s *settings) { s.skips[test] = reason }
}

// suite is the state shared by the subtests of one run.
type suite struct {
	s       settings
	newHarn HarnessMaker
}

// RunConformanceTests runs the whole suite. Every subtest calls newHarness.
func RunConformanceTests(t *testing.T, newHarness HarnessMaker, opts ...Option) {
	st := settings{
		opTimeout:   30 * time.Second,
		settle:      20 * time.Second,
		stopTimeout: 10 * time.Second,
		prefix:      "sbct",
		skips:       map[string]string{},
	}
	for _, o := range opts {
		o(&st)
	}
	st.root = t.Name()
	su := &suite{s: st, newHarn: newHarness}
	for _, tc := range su.tests() {
		t.Run(tc.name, func(t *testing.T) {
			su.s.skipListed(t)
			tc.fn(t, su.env(t))
		})
	}
}

// skipListed skips t when WithSkip names it (by its path below the
// suite's root test).
func (s *settings) skipListed(t *testing.T) {
	t.Helper()
	if reason, ok := s.skips[strings.TrimPrefix(t.Name(), s.root+"/")]; ok {
		t.Skip(reason)
	}
}

// run runs a nested subtest with an env bound to it (so failing helpers
// stop the right test), honouring WithSkip.
func (e *env) run(name string, fn func(t *testing.T, e *env)) bool {
	return e.t.Run(name, func(t *testing.T) {
		e.s.skipListed(t)
		sub := *e
		sub.t = t
		fn(t, &sub)
	})
}

// namedTest is one top-level subtest.
type namedTest struct {
	name string
	fn   func(t *testing.T, e *env)
}

// env is what one subtest works with.
type env struct {
	t    *testing.T
	s    *settings
	h    Harness
	d    drivers.Driver
	m    *manager.Manager
	caps drivers.Capabilities
	// closeM guards closing m: tests that need a second driver close the
	// first (the suite never uses two drivers of one harness at once).
	closeM *sync.Once
}

func (su *suite) env(t *testing.T) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), su.s.opTimeout)
	defer cancel()
	h, err := su.newHarn(ctx, t)
	if err != nil {
		t.Fatalf("making harness: %v", err)
	}
	t.Cleanup(h.Close)
	d, err := h.MakeDriver(ctx)
	if err != nil {
		t.Fatalf("MakeDriver: %v", err)
	}
	m := manager.New(d, su.s.mopts)
	if err := m.Connect(ctx); err != nil {
		_ = m.Close()
		t.Fatalf("Connect: %v", err)
	}
	e := &env{t: t, s: &su.s, h: h, d: d, m: m, caps: m.Capabilities(), closeM: new(sync.Once)}
	t.Cleanup(e.closeManager)
	return e
}

// closeManager closes the env's manager (and driver) once.
func (e *env) closeManager() { e.closeM.Do(func() { _ = e.m.Close() }) }

// ctx returns a context bounded by the operation timeout, ended at the
// end of the test.
func (e *env) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), e.s.opTimeout)
	e.t.Cleanup(cancel)
	return ctx
}

// name returns a fresh, unique instance name for tag.
func (e *env) name(tag string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	tag = strings.ToLower(tag)
	return e.s.prefix + "-" + tag + "-" + hex.EncodeToString(b)
}

// skipf skips the rest of the calling subtest with a reason.
func (e *env) skipf(format string, args ...any) {
	e.t.Helper()
	e.t.Skipf(format, args...)
}

// create creates an instance (registered for force deletion) and returns its name.
func (e *env) create(tag string) string {
	e.t.Helper()
	name := e.name(tag)
	e.createNamed(name)
	return name
}

func (e *env) createNamed(name string) drivers.Instance {
	e.t.Helper()
	e.t.Cleanup(func() { e.forceDelete(name) })
	inst, err := e.m.Create(e.ctx(), e.h.Template(name))
	if err != nil {
		e.t.Fatalf("Create(%s): %v", name, err)
	}
	return inst
}

// forceDelete removes name whatever its state; used in cleanups.
func (e *env) forceDelete(name string) {
	ctx, cancel := context.WithTimeout(context.Background(), e.s.opTimeout)
	defer cancel()
	if _, err := e.m.Delete(ctx, name, drivers.DeleteOptions{Force: true}); err != nil {
		e.t.Errorf("cleanup: force delete %s: %v", name, err)
	}
}

// running creates and starts an instance and waits until it is running.
func (e *env) running(tag string) string {
	e.t.Helper()
	name := e.create(tag)
	if _, err := e.m.Start(e.ctx(), name); err != nil {
		e.t.Fatalf("Start(%s): %v", name, err)
	}
	e.waitState(name, drivers.StateRunning)
	return name
}

func (e *env) stopOpts() drivers.StopOptions {
	return drivers.StopOptions{Timeout: e.s.stopTimeout}
}
