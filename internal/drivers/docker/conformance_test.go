package docker

import (
	"context"
	"testing"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/manager/driverstest"
)

// harness creates the suite's instances on the internal home network and
// offers the internal attach network for the Networks checks.
type harness struct{ home, network string }

func (h *harness) MakeDriver(ctx context.Context) (drivers.Driver, error) {
	return New(Options{HostID: "conformance"}), nil
}

func (h *harness) Template(name string) drivers.InstanceTemplate {
	return drivers.InstanceTemplate{
		Name:        name,
		BaseImage:   TestImage,
		Command:     []string{"sh", "-c", driverstest.ConformanceScript(name)},
		Environment: map[string]string{"SUBBUS_CONFORMANCE": "1"},
		Networks:    []drivers.NetworkConfig{{NetworkName: h.home}},
	}
}

func (h *harness) Network() string { return h.network }

// ScriptTemplate is Template running script.
func (h *harness) ScriptTemplate(name, script string) drivers.InstanceTemplate {
	t := h.Template(name)
	t.Command = []string{"sh", "-c", script}
	return t
}

// StubbornTemplate: the container's shell ignores SIGTERM, so only a kill ends it.
func (h *harness) StubbornTemplate(name string) drivers.InstanceTemplate {
	t := h.Template(name)
	t.Command = []string{"sh", "-c", driverstest.StubbornScript(name)}
	return t
}

// Unreachable points the driver at a socket where no daemon listens.
func (h *harness) Unreachable(ctx context.Context) (drivers.Driver, error) {
	return New(Options{Host: "unix:///nonexistent/subbus-test/docker.sock", HostID: "conformance"}), nil
}

func (h *harness) Close() {}

// TestConformance runs the shared suite against the real dockerd.
func TestConformance(t *testing.T) {
	requireDocker(t)
	home, net := homeNetwork(t), sharedNetwork(t)
	driverstest.RunConformanceTests(t,
		func(ctx context.Context, t *testing.T) (driverstest.Harness, error) {
			return &harness{home: home, network: net}, nil
		},
		driverstest.WithNamePrefix(testPrefix+"-ct"),
		driverstest.WithCapabilities(drivers.Capabilities{Exec: true, Logs: true, Limits: true, Snapshots: true, Clone: true, Networks: true, Events: true,
			LogTimes: true, LogOrder: true}),
	)
}
