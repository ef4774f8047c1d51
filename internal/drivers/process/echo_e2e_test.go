package process_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/config"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/drivers/process"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/manager/driverstest"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/messages"
)

// A start of a command that dies within start_settle is one failed event
// through the manager, linked to the request id and carrying the exit
// status and last output (the driver's own failed for that exit is its
// echo, dropped and counted); a crash after a successful start, even
// within the echo window, is one native failed event.
func TestEarlyExitIsReportedOnce(t *testing.T) {
	d := process.New(process.Options{StateDir: t.TempDir(), Cgroups: "off", DefaultUser: "root", AllowRoot: true,
		StartSettle: config.Duration(time.Second)})
	m := manager.New(d, manager.Options{Host: "h1", CacheTTL: -1, EchoWindow: 3 * time.Second})
	got := &driverstest.Events{}
	m.Subscribe(got.Add)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := m.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	create := func(name, script string) {
		t.Helper()
		if _, err := m.Create(ctx, drivers.InstanceTemplate{Name: name, Command: []string{"/bin/sh", "-c", script}}); err != nil {
			t.Fatalf("Create %s: %v", name, err)
		}
	}

	create("dies", "echo 'boom: no config' >&2; exit 3")
	create("crashes", "sleep 1.5; exit 4")
	_, err := m.Start(drivers.WithRequestID(ctx, "req-dies"), "dies")
	if drivers.CodeOf(err) != drivers.Exited {
		t.Fatalf("Start of a command that dies at once: %v, want exited", err)
	}
	// The driver's own failed has reached the manager once it is counted.
	testenv.Eventually(t, 10*time.Second, func() error {
		if n := m.Stats().Events["native_echo_suppressed"]; n < 2 { // its started and its failed
			return fmt.Errorf("native_echo_suppressed = %d: the driver's events not all seen yet", n)
		}
		return nil
	})
	if _, err := m.Start(drivers.WithRequestID(ctx, "req-crashes"), "crashes"); err != nil {
		t.Fatalf("Start of a command that lives past start_settle: %v", err)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		if n := len(got.Failed("crashes")); n == 0 {
			return fmt.Errorf("no failed event for the later crash")
		}
		return nil
	})

	f := got.Failed("dies")
	if len(f) != 1 {
		t.Fatalf("early exit: %d failed events, want exactly 1: %+v", len(f), f)
	}
	if e := f[0]; e.Source != messages.SourceManager || e.RequestID != "req-dies" || e.Error == nil ||
		e.Error.Code != drivers.Exited ||
		!strings.Contains(e.Error.Detail, "exited (status 3)") || !strings.Contains(e.Error.Detail, "boom: no config") {
		t.Errorf("early exit's failed event: %+v (error %+v), want the manager's, linked to req-dies, with status and output", e, e.Error)
	}
	f = got.Failed("crashes")
	if len(f) != 1 || f[0].Source != messages.SourceNative || f[0].RequestID != "" || f[0].Details["exit_code"] != "4" {
		t.Errorf("later crash: %+v, want one native failed event with exit_code 4", f)
	}
	if n := m.Stats().Events["native_echo_suppressed"]; n != 3 { // the started and failed of "dies", the started of "crashes"
		t.Errorf("native_echo_suppressed = %d, want 3", n)
	}
}
