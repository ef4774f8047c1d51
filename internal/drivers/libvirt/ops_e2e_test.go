package libvirt_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/cli"
	"github.com/subbus/subbus/internal/cli/clitest"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/messages"
)

// TestLongOperationCancel: a graceful stop with a long grace of the tiny
// guest told to ignore ACPI and agent shutdowns (SUBBUS_IGNORE_STOP=1),
// begun with --no-wait through a worker, is cancelled with `subbus ops
// cancel`: the driver's shutdown wait ends and the operation ends
// cancelled at once, not after the grace. No destroy follows: the domain
// runs on (docs/fleet.md "Cancel").
func TestLongOperationCancel(t *testing.T) {
	f := startFleet(t)
	name := clitest.Unique("ec-lv-lo")
	removeAfter(t, name)
	f.OK("libvirt", "create", name, "--image", e2eBase, "--memory", "256", "--cpu", "1", "--env", "SUBBUS_IGNORE_STOP=1")
	f.OK("libvirt", "start", name)
	get := func() messages.Instance {
		t.Helper()
		var inst messages.Instance
		if err := json.Unmarshal([]byte(f.OK("libvirt", "get", name, "--json")), &inst); err != nil {
			t.Fatal(err)
		}
		return inst
	}

	var op messages.Operation
	if err := json.Unmarshal([]byte(f.OK("libvirt", "stop", name, "--timeout", "10m", "--no-wait", "--json")), &op); err != nil || op.ID == "" {
		t.Fatalf("stop --no-wait: %v %+v", err, op)
	}
	// The driver re-sends the shutdown request and waits out the grace.
	testenv.Eventually(t, 10*time.Second, func() error {
		if out := f.OK("ops", "get", op.ID); !strings.Contains(out, "running") {
			return fmt.Errorf("ops get:\n%s", out)
		}
		return nil
	})
	start := time.Now()
	f.OK("ops", "cancel", op.ID)
	r := f.Expect(cli.ExitTimeout, "ops", "wait", op.ID)
	if !strings.Contains(r.Stdout, "cancelled after") {
		t.Fatalf("ops wait:\n%s", r.Stdout)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("the cancel took %v: it did not end the driver's wait", took)
	}
	// No destroy followed the cancel: the domain still runs.
	if inst := get(); inst.State != drivers.StateRunning || inst.NativeState != "running" {
		t.Fatalf("after a cancelled stop: %s (%s), want running", inst.State, inst.NativeState)
	}
	f.OK("libvirt", "delete", name, "--force")
}
