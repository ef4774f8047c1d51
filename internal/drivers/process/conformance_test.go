package process

import (
	"context"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/config"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/manager/driverstest"
)

// harness runs the conformance suite against the process driver with a
// fresh state directory per subtest.
type harness struct {
	dir       string
	noCgroups bool
}

func (h *harness) MakeDriver(ctx context.Context) (drivers.Driver, error) {
	o := testOptions(h.dir)
	if h.noCgroups {
		o.Cgroups = "off"
	}
	return New(o), nil
}

func (h *harness) Template(name string) drivers.InstanceTemplate {
	return drivers.InstanceTemplate{
		Name:        name,
		BaseImage:   "sh",
		Command:     []string{"sh", "-c", driverstest.ConformanceScript(name)},
		Environment: map[string]string{"SUBBUS_CONFORMANCE": "1"},
		Metadata:    map[string]string{"suite": "conformance"},
	}
}

// ScriptTemplate is Template running script.
func (h *harness) ScriptTemplate(name, script string) drivers.InstanceTemplate {
	t := h.Template(name)
	t.Command = []string{"sh", "-c", script}
	return t
}

// StubbornTemplate is Template with a script that ignores SIGTERM.
func (h *harness) StubbornTemplate(name string) drivers.InstanceTemplate {
	t := h.Template(name)
	t.Command = []string{"sh", "-c", driverstest.StubbornScript(name)}
	return t
}

func (h *harness) Close() {}

var (
	_ driverstest.StubbornHarness = (*harness)(nil)
	_ driverstest.ScriptHarness   = (*harness)(nil)
)

// noEndpoint is the reason the Unreachable case does not apply.
const noEndpoint = "the process driver has no daemon or endpoint to be unreachable"

// testOptions are quick-polling options for tests. Processes run as the
// test's user, root included (TestRootRule covers the default).
func testOptions(dir string) Options {
	return Options{
		StateDir:         dir,
		DefaultUser:      "root",
		AllowRoot:        true,
		PollInterval:     config.Duration(50 * time.Millisecond),
		LogCheckInterval: config.Duration(100 * time.Millisecond),
		StartSettle:      config.Duration(100 * time.Millisecond),
	}
}

func TestConformance(t *testing.T) {
	caps := drivers.Capabilities{Exec: true, Logs: true, Clone: true, Events: true, LogTimes: true, LogOrder: true}
	o := testOptions(t.TempDir())
	o.setDefaults()
	caps.Limits = probeCgroups(o) != nil
	t.Logf("cgroup limits available: %v", caps.Limits)
	driverstest.RunConformanceTests(t, func(ctx context.Context, t *testing.T) (driverstest.Harness, error) {
		return &harness{dir: t.TempDir()}, nil
	},
		driverstest.WithCapabilities(caps),
		driverstest.WithManagerOptions(manager.Options{Host: "test", StopTimeout: 5 * time.Second}),
		driverstest.WithStopTimeout(5*time.Second),
		driverstest.WithSkip("Unreachable", noEndpoint),
	)
}

// TestConformanceWithoutCgroups runs the suite as on a machine whose
// cgroup file system is not writable: limits must then be undeclared and
// answer unsupported.
func TestConformanceWithoutCgroups(t *testing.T) {
	driverstest.RunConformanceTests(t, func(ctx context.Context, t *testing.T) (driverstest.Harness, error) {
		return &harness{dir: t.TempDir(), noCgroups: true}, nil
	},
		driverstest.WithCapabilities(drivers.Capabilities{Exec: true, Logs: true, Clone: true, Events: true, LogTimes: true, LogOrder: true}),
		driverstest.WithManagerOptions(manager.Options{Host: "test", StopTimeout: 5 * time.Second}),
		driverstest.WithStopTimeout(5*time.Second),
		driverstest.WithSkip("Unreachable", noEndpoint),
	)
}
