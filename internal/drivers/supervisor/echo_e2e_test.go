package supervisor_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/cli/clitest"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/drivers/supervisor"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/manager/driverstest"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/messages"
)

// A start of a program that dies before start_secs (BACKOFF, then FATAL
// with start_retries 0) is one failed event through the manager, linked
// to the request id and carrying the program's output (the feed's failed
// for BACKOFF/FATAL are its echo); a program that crashes after a
// successful start is one native failed event.
func TestFailedStartIsReportedOnce(t *testing.T) {
	o := e2eOptions()
	o.StartRetries = 0
	o.Autorestart = "false"
	d, err := supervisor.New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	probe, pcancel := context.WithTimeout(ctx, 5*time.Second)
	defer pcancel()
	testenv.Require(t, "supervisord", d.Connect(probe), "bash scripts/setup/supervisor.sh")
	m := manager.New(d, manager.Options{Host: "h1", CacheTTL: -1, EchoWindow: 3 * time.Second})
	got := &driverstest.Events{}
	m.Subscribe(got.Add)
	if err := m.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	dies, crashes := clitest.Unique("ec-sv-dies"), clitest.Unique("ec-sv-crashes")
	removeAfter(t, dies, crashes)
	for name, script := range map[string]string{dies: "echo 'boom: no config' >&2; exit 3", crashes: "sleep 2; exit 4"} {
		if _, err := m.Create(ctx, drivers.InstanceTemplate{Name: name, Command: []string{"/bin/sh", "-c", script}}); err != nil {
			t.Fatalf("Create %s: %v", name, err)
		}
	}

	_, err = m.Start(drivers.WithRequestID(ctx, "req-dies"), dies)
	if drivers.CodeOf(err) != drivers.Exited {
		t.Fatalf("Start of a program that dies at once: %v, want exited", err)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		inst, err := d.Get(ctx, dies)
		if err == nil && inst.NativeState != "FATAL" {
			err = fmt.Errorf("%s is %s, want FATAL", dies, inst.NativeState)
		}
		return err
	})
	if _, err := m.Start(drivers.WithRequestID(ctx, "req-crashes"), crashes); err != nil {
		t.Fatalf("Start of a program that lives past start_secs: %v", err)
	}
	// The feed reports in order: once the later crash is in, everything
	// about the failed start has been seen.
	testenv.Eventually(t, 15*time.Second, func() error {
		if len(got.Failed(crashes)) == 0 {
			return fmt.Errorf("no failed event for the later crash")
		}
		return nil
	})

	f := got.Failed(dies)
	if len(f) != 1 {
		t.Fatalf("failed start: %d failed events, want exactly 1: %+v", len(f), f)
	}
	if e := f[0]; e.Source != messages.SourceManager || e.RequestID != "req-dies" || e.Error == nil ||
		e.Error.Code != drivers.Exited || !strings.Contains(e.Error.Detail, "boom: no config") {
		t.Errorf("failed start's event: %+v (error %+v), want the manager's, linked to req-dies, with the output", e, e.Error)
	}
	f = got.Failed(crashes)
	if len(f) != 1 || f[0].Source != messages.SourceNative || f[0].RequestID != "" {
		t.Errorf("later crash: %+v, want one native failed event", f)
	}
	if n := m.Stats().Events["native_echo_suppressed"]; n < 1 {
		t.Errorf("native_echo_suppressed = %d, want the feed's failed of the failed start counted", n)
	}
}
