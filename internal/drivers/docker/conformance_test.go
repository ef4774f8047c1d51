package docker

import (
	"context"
	"testing"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/drivers/driverstest"
)

type harness struct{ network string }

func (h *harness) MakeDriver(ctx context.Context) (drivers.Driver, error) {
	return New(Options{HostID: "conformance"}), nil
}

func (h *harness) Template(name string) drivers.InstanceTemplate {
	return busybox(name, driverstest.ConformanceScript(name))
}

func (h *harness) Network() string { return h.network }

func (h *harness) Close() {}

// TestConformance runs the shared suite against the real dockerd.
func TestConformance(t *testing.T) {
	requireDocker(t)
	net := sharedNetwork(t)
	driverstest.RunConformanceTests(t,
		func(ctx context.Context, t *testing.T) (driverstest.Harness, error) {
			return &harness{network: net}, nil
		},
		driverstest.WithNamePrefix(testPrefix+"-ct"),
		driverstest.WithCapabilities(drivers.Capabilities{Exec: true, Logs: true, Limits: true, Snapshots: true, Clone: true, Networks: true, Events: true}),
	)
}
