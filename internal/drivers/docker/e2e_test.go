package docker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/cli"
	"github.com/subbus/subbus/internal/cli/clitest"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/drivers/docker"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/testenv"
)

const e2eImage = "subbus-test/busybox:latest"

// fleet is a worker serving the docker driver and the CLI pointed at it;
// url, subbus and randHex keep the names docker_bench_test.go uses.
type fleet struct {
	*clitest.Fleet
	url string
}

// subbus runs the CLI and returns what it printed and its exit status.
func (f fleet) subbus(args ...string) (stdout, stderr string, status int) {
	r := f.Run(args...)
	return r.Stdout, r.Stderr, r.Code
}

// randHex is a random suffix for names that must not collide.
func randHex() string { return strings.TrimPrefix(clitest.Unique(""), "-") }

// startFleet skips (fails in CI) without dockerd and the test image, then
// starts the fleet.
func startFleet(t testing.TB) fleet {
	t.Helper()
	d := docker.New(docker.Options{})
	probe, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := d.Connect(probe)
	if err == nil {
		err = exec.Command("docker", "image", "inspect", e2eImage).Run()
	}
	testenv.Require(t, "dockerd", err, "bash scripts/setup/docker.sh")
	_ = d.Close()

	host := clitest.Unique("e2e")
	d = docker.New(docker.Options{HostID: host})
	f := clitest.StartFleet(t, host, 60*time.Second, manager.New(d, manager.Options{Host: host, CacheTTL: -1}))
	return fleet{Fleet: f, url: f.URL}
}

func cleanup(t *testing.T, names ...string) {
	t.Cleanup(func() {
		for _, n := range names {
			_ = exec.Command("docker", "rm", "-f", n).Run()
			out, _ := exec.Command("docker", "images", "-q", "--filter", "label=io.subbus.snapshot.instance="+n).Output()
			for _, id := range strings.Fields(string(out)) {
				_ = exec.Command("docker", "rmi", "-f", id).Run()
			}
			out, _ = exec.Command("docker", "images", "-q", "--filter", "label=io.subbus.clone.of="+n).Output()
			for _, id := range strings.Fields(string(out)) {
				_ = exec.Command("docker", "rmi", "-f", id).Run()
			}
		}
	})
}

// TestEndToEndCLI drives the docker driver through a worker with the
// subbus commands a user would type.
func TestEndToEndCLI(t *testing.T) {
	f := startFleet(t)
	name, clone := clitest.Unique("sbdk-e2e"), clitest.Unique("sbdk-e2e-clone")
	cleanup(t, name, clone)
	script := `trap 'exit 0' TERM; echo "hello from ` + name + `"; while :; do sleep 1 & wait $!; done`

	f.OK("docker", "create", name, "--image", e2eImage, "--memory", "64", "--env", "GREETING=hi", "--label", "team=e2e", "--", "sh", "-c", script)
	var inst drivers.Instance
	if err := json.Unmarshal([]byte(f.OK("docker", "get", name, "--json")), &inst); err != nil {
		t.Fatalf("get --json: %v", err)
	}
	if inst.State != drivers.StateStopped || !inst.Managed || inst.Limits.MemoryMB != 64 || inst.Metadata["team"] != "e2e" {
		t.Errorf("created instance %+v", inst)
	}
	f.Expect(cli.ExitAlreadyExists, "docker", "create", name, "--image", e2eImage)
	if r := f.Run("docker", "create", clitest.Unique("sbdk-e2e-noimg"), "--image", "subbus-test/nope:1"); r.Code != cli.ExitNotFound || !strings.Contains(r.Stderr, "subbus-test/nope:1") {
		t.Errorf("create with a missing image exited %d (%s), want not_found naming the image", r.Code, r.Stderr)
	}
	f.OK("docker", "start", name)

	if r := f.Run("docker", "exec", name, "--", "sh", "-c", `echo "$GREETING"; echo oops >&2; exit 3`); r.Code != 3 || r.Stdout != "hi\n" || r.Stderr != "oops\n" {
		t.Errorf("exec: exit %d stdout %q stderr %q, want 3, \"hi\\n\", \"oops\\n\"", r.Code, r.Stdout, r.Stderr)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		if out := f.OK("docker", "logs", name, "--lines", "5"); !strings.Contains(out, "hello from "+name) {
			return fmt.Errorf("logs: %q", out)
		}
		return nil
	})
	var u drivers.ResourceUsage
	if err := json.Unmarshal([]byte(f.OK("docker", "metrics", name, "--json")), &u); err != nil {
		t.Fatalf("metrics --json: %v", err)
	}
	if u.MemoryMB <= 0 || !u.Measured.Has(drivers.MeasureCPU|drivers.MeasureMemory) {
		t.Errorf("metrics %+v", u)
	}

	f.OK("docker", "snapshot", "create", name, "s1")
	if out := f.OK("docker", "snapshot", "list", name); !strings.Contains(out, "s1") {
		t.Errorf("snapshot list: %q", out)
	}
	f.OK("docker", "clone", name, clone)
	if out := f.OK("docker", "list"); !strings.Contains(out, name) || !strings.Contains(out, clone) {
		t.Errorf("list lacks %s or %s: %q", name, clone, out)
	}
	f.OK("docker", "snapshot", "restore", name, "s1")
	f.OK("docker", "stop", name, "--timeout", "5s")
	if err := json.Unmarshal([]byte(f.OK("docker", "get", name, "--json")), &inst); err != nil || inst.State != drivers.StateStopped {
		t.Errorf("after stop: %+v (%v)", inst, err)
	}
	f.OK("docker", "snapshot", "delete", name, "s1")
	f.OK("docker", "delete", name)
	f.OK("docker", "delete", clone, "--force")
	f.Expect(cli.ExitNotFound, "docker", "get", name)
	if out := f.OK("docker", "health"); !strings.Contains(out, "20.10") && !strings.Contains(out, "1.4") {
		t.Logf("health output: %s", out)
	}
}

// TestOutOfBandEventsInStream: docker stop and docker rm made with the
// docker CLI reach SUBSTRATE_EVENTS through a running worker.
func TestOutOfBandEventsInStream(t *testing.T) {
	f := startFleet(t)
	name := clitest.Unique("sbdk-e2e-oob")
	cleanup(t, name)
	f.OK("docker", "create", name, "--image", e2eImage, "--", "sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done")
	f.OK("docker", "start", name)

	events := f.WatchEvents("docker", name)
	out, err := exec.Command("docker", "stop", "-t", "5", name).CombinedOutput()
	if err != nil {
		t.Fatalf("docker stop: %v %s", err, out)
	}
	if ev := events.WaitNative(t, drivers.EventStopped, 20*time.Second); ev.Host != f.Host || ev.Driver != "docker" || ev.State != drivers.StateStopped {
		t.Errorf("stopped event %+v", ev)
	}
	out, err = exec.Command("docker", "rm", name).CombinedOutput()
	if err != nil {
		t.Fatalf("docker rm: %v %s", err, out)
	}
	events.WaitNative(t, drivers.EventVanished, 20*time.Second)
}
