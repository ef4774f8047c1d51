package driverstest_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/config"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/drivers/process"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/manager/driverstest"
)

// broken is the process driver with one contract violation per method it
// overrides; the suite must catch each of them.
type broken struct {
	*process.Driver
}

// Start claims a change even when the instance already ran.
func (b broken) Start(ctx context.Context, name string) (bool, error) {
	_, err := b.Driver.Start(ctx, name)
	return true, err
}

// Delete refuses a forced delete of a missing instance.
func (b broken) Delete(ctx context.Context, name string, opts drivers.DeleteOptions) (bool, error) {
	if _, err := b.Driver.Get(ctx, name); err != nil {
		return false, err
	}
	return b.Driver.Delete(ctx, name, opts)
}

// Exec drops the request's environment.
func (b broken) Exec(ctx context.Context, name string, req drivers.ExecRequest, stdout, stderr drivers.Writer) (int, error) {
	req.Env = nil
	return b.Driver.Exec(ctx, name, req, stdout, stderr)
}

// Metrics reports a network rate it says it did not measure.
func (b broken) Metrics(ctx context.Context, name string) (drivers.ResourceUsage, error) {
	u, err := b.Driver.Metrics(ctx, name)
	u.NetworkRxMbps = 1
	return u, err
}

// Stop turns a graceful stop into a kill, so it "succeeds" at once on an
// instance that ignores SIGTERM instead of giving up at the caller's deadline.
func (b broken) Stop(ctx context.Context, name string, opts drivers.StopOptions) (bool, error) {
	opts.Force = true
	return b.Driver.Stop(ctx, name, opts)
}

// Health reports a usage without saying what it measured.
func (b broken) Health(ctx context.Context) (drivers.Health, error) {
	h, err := b.Driver.Health(ctx)
	h.Usage = &drivers.ResourceUsage{MemoryMB: 1}
	return h, err
}

// deadEndpoint is a driver whose endpoint cannot be reached, but which
// does not classify the failure.
type deadEndpoint struct{ *process.Driver }

func (deadEndpoint) Connect(ctx context.Context) error {
	return errors.New("dial unix /nonexistent.sock: connect: no such file or directory")
}

func (deadEndpoint) List(ctx context.Context) ([]drivers.Instance, error) {
	return nil, errors.New("not connected")
}

type brokenHarness struct{ dir string }

func (h brokenHarness) StubbornTemplate(name string) drivers.InstanceTemplate {
	t := h.Template(name)
	t.Command = []string{"sh", "-c", driverstest.StubbornScript(name)}
	return t
}

func (h brokenHarness) Unreachable(ctx context.Context) (drivers.Driver, error) {
	return deadEndpoint{process.New(process.Options{StateDir: h.dir, DefaultUser: "root", AllowRoot: true})}, nil
}

func (h brokenHarness) MakeDriver(ctx context.Context) (drivers.Driver, error) {
	return broken{process.New(process.Options{StateDir: h.dir, DefaultUser: "root", AllowRoot: true, PollInterval: config.Duration(50 * time.Millisecond)})}, nil
}

func (h brokenHarness) Template(name string) drivers.InstanceTemplate {
	return drivers.InstanceTemplate{
		Name: name, BaseImage: "sh",
		Command:     []string{"sh", "-c", driverstest.ConformanceScript(name)},
		Environment: map[string]string{"SUBBUS_CONFORMANCE": "1"},
	}
}

func (h brokenHarness) Close() {}

const helperEnv = "SUBBUS_DRIVERSTEST_BROKEN"

// TestBrokenDriverHelper runs the suite against the broken driver; it is
// run (and expected to fail) by TestSuiteCatchesViolations only.
func TestBrokenDriverHelper(t *testing.T) {
	if os.Getenv(helperEnv) == "" {
		t.Skip("helper for TestSuiteCatchesViolations")
	}
	driverstest.RunConformanceTests(t, func(ctx context.Context, t *testing.T) (driverstest.Harness, error) {
		return brokenHarness{dir: t.TempDir()}, nil
	}, driverstest.WithManagerOptions(manager.Options{Host: "test", StopTimeout: 5 * time.Second}),
		driverstest.WithStopTimeout(5*time.Second), driverstest.WithSettleTimeout(5*time.Second))
}

// TestSuiteCatchesViolations shows the suite is not vacuous: run against
// a driver with known contract violations, exactly the subtests covering
// them fail, and the ones next to them pass.
func TestSuiteCatchesViolations(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a part of the suite in a child process")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestBrokenDriverHelper$/^(RoundTrip|Idempotent|Missing|Exec|Metrics|Health|StopDeadline|Unreachable)$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("the suite passed a broken driver:\n%s", out)
	}
	failed := map[string]bool{}
	for _, m := range regexp.MustCompile(`--- FAIL: TestBrokenDriverHelper/(\S+)`).FindAllStringSubmatch(string(out), -1) {
		failed[m[1]] = true
	}
	// RoundTrip fails too: its cleanup force-deletes an instance it
	// already deleted, which the broken Delete refuses.
	want := []string{"Exec", "Exec/RequestEnv", "Health", "Idempotent", "Metrics", "Metrics/Stopped", "Missing", "Missing/ForceDelete", "RoundTrip", "StopDeadline", "Unreachable"}
	var got []string
	for k := range failed {
		got = append(got, k)
	}
	sort.Strings(got)
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("failed subtests %v, want %v; output:\n%s", got, want, out)
	}
	for _, ok := range []string{"Exec/Streams", "Exec/InstanceEnv", "Missing/Get", "Missing/Delete", "Metrics/Missing"} {
		if !strings.Contains(string(out), "--- PASS: TestBrokenDriverHelper/"+ok+" ") {
			t.Errorf("%s did not pass, though the broken driver does that part right:\n%s", ok, out)
		}
	}
}
