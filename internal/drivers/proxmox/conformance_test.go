package proxmox

import (
	"context"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/manager/driverstest"
	"github.com/subbus/subbus/internal/pvesim"
)

// harness runs each conformance subtest against its own simulator; on
// Close it checks that every request the driver sent was valid for PVE 9.
type harness struct {
	t    *testing.T
	kind string
	env  *simEnv
}

func (h *harness) MakeDriver(ctx context.Context) (drivers.Driver, error) {
	return New(h.env.options()), nil
}

// Template makes a VM booting the seeded ISO, or a container from the
// seeded Alpine template.
func (h *harness) Template(name string) drivers.InstanceTemplate {
	t := drivers.InstanceTemplate{Name: name, Metadata: map[string]string{"kind": h.kind, "suite": "conformance"},
		Resources: drivers.ResourceLimits{CPUCores: 1, MemoryMB: 512}}
	if h.kind == kindLXC {
		t.BaseImage = testVZTmpl
	} else {
		t.BaseImage = testISO
	}
	return t
}

func (h *harness) Unreachable(ctx context.Context) (drivers.Driver, error) {
	o := h.env.options()
	o.URL = "https://" + closedAddr(h.t)
	return New(o), nil
}

// Network is the internal bridge vmbr1: guests the template makes get their
// default NIC on vmbr0 (proxmox.bridge).
func (h *harness) Network() string { return "vmbr1" }

func (h *harness) Close() { h.env.checkRequests(h.t) }

func runConformance(t *testing.T, kind string, opts ...driverstest.Option) {
	all := drivers.Capabilities{Exec: true, Logs: true, Limits: true, Snapshots: true, Clone: true, Networks: true, Events: true,
		LogTimes: true, LogOrder: true}
	loadSchema(t)
	base := []driverstest.Option{
		driverstest.WithCapabilities(all),
		driverstest.WithNamePrefix("px-" + kind),
		driverstest.WithOperationTimeout(30 * time.Second),
		driverstest.WithSettleTimeout(15 * time.Second),
		driverstest.WithStopTimeout(5 * time.Second),
		driverstest.WithLogsNotOutput("logs are the guest's PVE task logs, not its console (PVE has no API for that)"),
		driverstest.WithSkip("StopDeadline", "a template cannot make a guest that ignores shutdown; TestStopDeadline does it on the simulator"),
	}
	driverstest.RunConformanceTests(t, func(ctx context.Context, t *testing.T) (driverstest.Harness, error) {
		env := startSim(t, pvesim.Options{Agent: testAgent, Delays: pvesim.Delays{AgentStart: -1}})
		return &harness{t: t, kind: kind, env: env}, nil
	}, append(base, opts...)...)
}

func TestConformanceQEMU(t *testing.T) {
	runConformance(t, kindQemu,
		driverstest.WithSkip("Exec/InstanceEnv", "a VM has no instance environment: templates cannot set one (environment is unsupported)"))
}

func TestConformanceLXC(t *testing.T) {
	runConformance(t, kindLXC,
		driverstest.WithSkip("Exec", "the PVE API has no exec for LXC containers: exec answers unsupported (TestExecLXCUnsupported)"))
}
