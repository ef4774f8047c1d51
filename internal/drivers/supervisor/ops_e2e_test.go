package supervisor_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/cli"
	"github.com/subbus/subbus/internal/cli/clitest"
	"github.com/subbus/subbus/internal/drivers/supervisor"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/messages"
)

// TestLongOperationCancel: a stop with a long grace of a program that
// ignores SIGTERM, begun with --no-wait through a worker, is cancelled
// with `subbus ops cancel`: the driver's grace wait ends and the operation
// ends cancelled at once, not after the grace. subbus sends no kill: the
// program runs on, STOPPING in supervisord, until supervisord's own
// stopwaitsecs (stop_wait_secs) runs out and supervisord kills it
// (docs/fleet.md "Cancel").
func TestLongOperationCancel(t *testing.T) {
	o := e2eOptions()
	o.StopWaitSecs = 8
	d, err := supervisor.New(o)
	if err != nil {
		t.Fatal(err)
	}
	probe, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	testenv.Require(t, "supervisord", d.Connect(probe), "bash scripts/setup/supervisor.sh")
	host := clitest.Unique("e2e")
	f := clitest.StartFleet(t, host, 60*time.Second, manager.New(d, manager.Options{Host: host, CacheTTL: -1}))

	name := clitest.Unique("ec-sv-lo")
	removeAfter(t, name)
	f.OK("supervisor", "create", name, "--image", "/bin/sh", "--",
		"/bin/sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done")
	f.OK("supervisor", "start", name)
	get := func() messages.Instance {
		t.Helper()
		var inst messages.Instance
		if err := json.Unmarshal([]byte(f.OK("supervisor", "get", name, "--json")), &inst); err != nil {
			t.Fatal(err)
		}
		return inst
	}
	pid := get().PID
	if pid <= 0 {
		t.Fatalf("no pid for the running program: %+v", get())
	}

	var op messages.Operation
	if err := json.Unmarshal([]byte(f.OK("supervisor", "stop", name, "--timeout", "10m", "--no-wait", "--json")), &op); err != nil || op.ID == "" {
		t.Fatalf("stop --no-wait: %v %+v", err, op)
	}
	// The driver waits out the grace of a program that ignores SIGTERM.
	testenv.Eventually(t, 10*time.Second, func() error {
		if s := get().NativeState; s != "STOPPING" {
			return fmt.Errorf("program is %s, want STOPPING", s)
		}
		return nil
	})
	if out := f.OK("ops", "get", op.ID); !strings.Contains(out, "running") {
		t.Fatalf("ops get:\n%s", out)
	}
	start := time.Now()
	f.OK("ops", "cancel", op.ID)
	r := f.Expect(cli.ExitTimeout, "ops", "wait", op.ID)
	if !strings.Contains(r.Stdout, "cancelled after") {
		t.Fatalf("ops wait:\n%s", r.Stdout)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("the cancel took %v: it did not end the driver's wait", took)
	}
	// No kill followed the cancel: the same process still runs.
	if inst := get(); inst.NativeState != "STOPPING" || inst.PID != pid {
		t.Fatalf("after a cancelled stop: %s pid %d, want STOPPING pid %d (not killed)", inst.NativeState, inst.PID, pid)
	}
	// supervisord's own stopwaitsecs still ends it.
	testenv.Eventually(t, 20*time.Second, func() error {
		if s := get().NativeState; s != "STOPPED" {
			return fmt.Errorf("program is %s, want STOPPED once stop_wait_secs ran out", s)
		}
		return nil
	})
}
