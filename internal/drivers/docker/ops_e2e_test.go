package docker_test

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/cli"
	"github.com/subbus/subbus/internal/cli/clitest"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/messages"
)

// TestLongOperationCancel: a stop with a long grace of a container that
// ignores SIGTERM, begun with --no-wait through a worker, is cancelled
// with `subbus ops cancel`: the cancel reaches dockerd through the op's
// context (the stop request is aborted) and the operation ends cancelled
// at once, not after the grace. What remains is what dockerd makes of an
// aborted stop (docs/docker.md "Long operations").
func TestLongOperationCancel(t *testing.T) {
	f := startFleet(t)
	home := internalNetwork(t)
	name := clitest.Unique("sbdk-lo")
	cleanup(t, name)
	f.OK("docker", "create", name, "--image", e2eImage, "--network", home, "--",
		"sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done")
	f.OK("docker", "start", name)
	testenv.Eventually(t, 30*time.Second, func() error {
		if out := f.Run("docker", "logs", name).Stdout; !strings.Contains(out, "ready") {
			return fmt.Errorf("not ready: %q", out)
		}
		return nil
	})

	var o messages.Operation
	if err := json.Unmarshal([]byte(f.OK("docker", "stop", name, "--timeout", "10m", "--no-wait", "--json")), &o); err != nil || o.ID == "" {
		t.Fatalf("stop --no-wait: %v %+v", err, o)
	}
	// dockerd is waiting for the grace period: the op runs.
	time.Sleep(500 * time.Millisecond)
	if out := f.OK("ops", "get", o.ID); !strings.Contains(out, "running") {
		t.Fatalf("ops get:\n%s", out)
	}
	start := time.Now()
	f.OK("ops", "cancel", o.ID)
	r := f.Expect(cli.ExitTimeout, "ops", "wait", o.ID)
	if !strings.Contains(r.Stdout, "cancelled after") {
		t.Fatalf("ops wait:\n%s", r.Stdout)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("the cancel took %v: it did not reach dockerd", d)
	}
	state, err := exec.Command("docker", "inspect", "-f", "{{.State.Status}}", name).Output()
	if err != nil {
		t.Fatal(err)
	}
	// The stop was abandoned before its grace ran out: dockerd did not
	// kill the container, which goes on running; the driver can still act
	// on it.
	if s := strings.TrimSpace(string(state)); s != "running" {
		t.Fatalf("container state %q after a cancelled stop, want running", s)
	}
	f.OK("docker", "delete", name, "--force")
}
