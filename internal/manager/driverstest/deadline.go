package driverstest

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/testenv"
)

// StubbornHarness is implemented by harnesses that can make an instance
// which ignores a graceful stop (SIGTERM, ACPI shutdown, …). Without it
// the suite skips the StopDeadline case.
type StubbornHarness interface {
	// StubbornTemplate is like Harness.Template, except that the running
	// instance ignores every graceful stop request and only ends when
	// killed. StubbornScript(name) behaves so for shell-based templates.
	StubbornTemplate(name string) drivers.InstanceTemplate
}

// UnreachableHarness is implemented by harnesses of drivers that talk to
// a daemon or API endpoint. Without it the suite skips the Unreachable case.
type UnreachableHarness interface {
	// Unreachable returns a new, unconnected driver pointed at an endpoint
	// where nothing answers (a socket path that does not exist, a closed
	// port on 127.0.0.1, …).
	Unreachable(ctx context.Context) (drivers.Driver, error)
}

// StubbornScript is ConformanceScript, except that the shell and its
// children ignore SIGTERM and SIGINT (an ignored signal stays ignored
// across exec), so only a kill ends it.
func StubbornScript(name string) string {
	return `trap '' TERM INT; echo "subbus-conformance ` + name + `"; ` +
		`i=0; while :; do i=$((i+1)); echo "subbus-conformance tick $i"; sleep 1; done`
}

// stopDeadline is the caller deadline of the StopDeadline case, and
// stopDeadlineSlack how much later than it the call must have returned.
const (
	stopDeadline      = time.Second
	stopDeadlineSlack = 4 * time.Second
)

// testStopDeadline checks that a driver call gives up when its ctx ends:
// a graceful stop with a long timeout of an instance that ignores it,
// under a short caller deadline, fails with Timeout promptly.
func testStopDeadline(t *testing.T, e *env) {
	sh, ok := e.h.(StubbornHarness)
	if !ok {
		e.skipf("harness does not implement StubbornTemplate (driverstest.StubbornHarness)")
	}
	name := e.name("stubborn")
	e.t.Cleanup(func() { e.forceDelete(name) })
	_, err := e.m.Create(e.ctx(), sh.StubbornTemplate(name))
	e.must("Create(stubborn)", err)
	_, err = e.m.Start(e.ctx(), name)
	e.must("Start(stubborn)", err)
	e.waitState(name, drivers.StateRunning)
	// The instance must have installed its signal disposition before the
	// stop request: wait for a tick line when logs are readable.
	if e.outputInLogs() {
		testenv.Eventually(t, e.s.settle, func() error {
			var got logLines
			if err := e.m.Logs(e.ctx(), name, drivers.LogOptions{Lines: 100}, got.emit); err != nil {
				return err
			}
			if !slices.ContainsFunc(got.snapshot(), func(l drivers.LogLine) bool {
				return strings.HasPrefix(l.Line, "subbus-conformance tick")
			}) {
				return fmt.Errorf("%s has written no tick line yet", name)
			}
			return nil
		})
	}

	ctx, cancel := context.WithTimeout(context.Background(), stopDeadline)
	defer cancel()
	began := time.Now()
	_, err = e.m.Stop(ctx, name, drivers.StopOptions{Timeout: 30 * time.Second})
	took := time.Since(began)
	if err == nil {
		t.Fatalf("graceful Stop (timeout 30s) of an instance ignoring it returned success within a %v deadline (after %v)", stopDeadline, took)
	}
	e.wantCode("graceful Stop past the caller's deadline", err, drivers.Timeout)
	if took > stopDeadline+stopDeadlineSlack {
		t.Errorf("Stop returned %v after it started, deadline was %v", took, stopDeadline)
	}
	// The instance stays manageable: a force stop ends it.
	testenv.Eventually(t, e.s.settle, func() error {
		_, err := e.m.Stop(e.ctx(), name, drivers.StopOptions{Force: true})
		return err
	})
	e.waitState(name, drivers.StateStopped)
}

// testUnreachable checks that a driver whose endpoint does not answer
// reports Unavailable from Connect, or, when it connects lazily, from List.
func testUnreachable(t *testing.T, e *env) {
	uh, ok := e.h.(UnreachableHarness)
	if !ok {
		e.skipf("harness does not implement Unreachable (driverstest.UnreachableHarness)")
	}
	d, err := uh.Unreachable(e.ctx())
	e.must("Unreachable", err)
	// Through a manager, as every caller sees it: the driver's raw error
	// is classified by its ErrorCode.
	m := manager.New(d, manager.Options{RetryAttempts: 1, CacheTTL: -1})
	defer func() { _ = m.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := m.Connect(ctx); err != nil {
		e.wantCode("Connect to a dead endpoint", err, drivers.Unavailable)
		return
	}
	_, err = m.List(ctx)
	e.wantCode("List through a dead endpoint (Connect succeeded)", err, drivers.Unavailable)
}

// checkHealthUsage checks the substrate usage a Health reports, if any.
func checkHealthUsage(t *testing.T, h drivers.Health) {
	t.Helper()
	u := h.Usage
	if u == nil {
		return
	}
	if u.Measured == 0 {
		t.Errorf("Health.Usage is set but its Measured mask is empty: %+v", *u)
	}
	for _, v := range []struct {
		what string
		bad  bool
	}{
		{"cpu_percent", u.CPUPercent < 0},
		{"memory_mb", u.MemoryMB < 0},
		{"disk_gb", u.DiskGB < 0},
		{"disk_read_mbps", u.DiskReadMBps < 0},
		{"disk_write_mbps", u.DiskWriteMBps < 0},
		{"network_rx_mbps", u.NetworkRxMbps < 0},
		{"network_tx_mbps", u.NetworkTxMbps < 0},
	} {
		if v.bad {
			t.Errorf("Health.Usage: negative %s: %+v", v.what, *u)
		}
	}
	checkMask(t, *u)
}
