package docker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/subbus/subbus/client"
	"github.com/subbus/subbus/internal/cli"
	"github.com/subbus/subbus/internal/cli/clitest"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/drivers/docker"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/messages"
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

// internalNetwork creates an internal network (no NAT, no route out) for
// one test, removed at its end (after the containers the test removes in
// cleanups registered later).
func internalNetwork(t testing.TB) string {
	t.Helper()
	name := clitest.Unique("sbdk-e2e-net")
	if out, err := exec.Command("docker", "network", "create", "--internal", "--label", "io.subbus.test=true", name).CombinedOutput(); err != nil {
		t.Fatalf("docker network create --internal %s: %v %s", name, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("docker", "network", "rm", name).Run() })
	return name
}

// networksOf is what `docker inspect` says container name is attached to.
func networksOf(t testing.TB, name string) []string {
	t.Helper()
	out, err := exec.Command("docker", "inspect", "-f", "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}", name).CombinedOutput()
	if err != nil {
		t.Fatalf("docker inspect %s: %v %s", name, err, out)
	}
	return strings.Fields(string(out))
}

// withStdin runs fn with os.Stdin reading input (the CLI's exec -i reads
// os.Stdin), then puts the real one back. Tests using it must not be
// parallel.
func withStdin(t *testing.T, input string, fn func()) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		_, _ = io.WriteString(w, input)
		_ = w.Close()
	}()
	saved := os.Stdin
	os.Stdin = r
	defer func() {
		os.Stdin = saved
		_ = r.Close()
	}()
	fn()
}

// TestEndToEndCLI drives the docker driver through a worker with every
// `subbus docker` command docs/docker.md lists, as a user would type them.
func TestEndToEndCLI(t *testing.T) {
	f := startFleet(t)
	home, extra := internalNetwork(t), internalNetwork(t)
	name, clone := clitest.Unique("sbdk-e2e"), clitest.Unique("sbdk-e2e-clone")
	cleanup(t, name, clone)
	script := `trap 'exit 0' TERM; echo "hello from ` + name + `"; while :; do echo tick; sleep 1 & wait $!; done`

	f.OK("docker", "create", name, "--image", e2eImage, "--memory", "64", "--env", "GREETING=hi", "--label", "team=e2e",
		"--network", home, "--", "sh", "-c", script)
	if nets := networksOf(t, name); len(nets) != 1 || nets[0] != home {
		t.Fatalf("created on networks %v, want only the internal %s", nets, home)
	}
	var inst messages.Instance
	if err := json.Unmarshal([]byte(f.OK("docker", "get", name, "--json")), &inst); err != nil {
		t.Fatalf("get --json: %v", err)
	}
	if inst.State != drivers.StateStopped || !inst.Managed || inst.Limits.MemoryMB != 64 || inst.Metadata["team"] != "e2e" {
		t.Errorf("created instance %+v", inst)
	}
	f.Expect(cli.ExitAlreadyExists, "docker", "create", name, "--image", e2eImage, "--network", home)
	if r := f.Run("docker", "create", clitest.Unique("sbdk-e2e-noimg"), "--image", "subbus-test/nope:1", "--network", home); r.Code != cli.ExitNotFound || !strings.Contains(r.Stderr, "subbus-test/nope:1") {
		t.Errorf("create with a missing image exited %d (%s), want not_found naming the image", r.Code, r.Stderr)
	}
	f.OK("docker", "start", name)

	if r := f.Run("docker", "exec", name, "--", "sh", "-c", `echo "$GREETING"; echo oops >&2; exit 3`); r.Code != 3 || r.Stdout != "hi\n" || r.Stderr != "oops\n" {
		t.Errorf("exec: exit %d stdout %q stderr %q, want 3, \"hi\\n\", \"oops\\n\"", r.Code, r.Stdout, r.Stderr)
	}
	withStdin(t, "line one\nline two\n", func() {
		if r := f.Run("docker", "exec", name, "-i", "--", "sh", "-c", "wc -l; exit 5"); r.Code != 5 || strings.TrimSpace(r.Stdout) != "2" {
			t.Errorf("exec -i: exit %d stdout %q stderr %q, want 5 and the 2 lines of stdin counted", r.Code, r.Stdout, r.Stderr)
		}
	})
	testenv.Eventually(t, 10*time.Second, func() error {
		if out := f.OK("docker", "logs", name, "--lines", "5"); !strings.Contains(out, "tick") {
			return fmt.Errorf("logs: %q", out)
		}
		return nil
	})
	// --follow --lines 1: three ticks means at least two arrived after
	// the command started, so it follows rather than only printing history.
	clitest.RunUntil(t, f.url, 20*time.Second, func(out string) error {
		if strings.Count(out, "tick\n") < 3 {
			return fmt.Errorf("followed so far: %q", out)
		}
		return nil
	}, "docker", "logs", name, "--lines", "1", "--follow").Want(t, 0, "logs --follow, interrupted")

	var u messages.ResourceUsage
	if err := json.Unmarshal([]byte(f.OK("docker", "metrics", name, "--json")), &u); err != nil {
		t.Fatalf("metrics --json: %v", err)
	}
	if u.MemoryMB <= 0 || !u.Measured.Has(drivers.MeasureCPU|drivers.MeasureMemory) {
		t.Errorf("metrics %+v", u)
	}
	// --watch: the header and two samples, then interrupted.
	clitest.RunUntil(t, f.url, 20*time.Second, func(out string) error {
		if strings.Count(out, "\n") < 3 {
			return fmt.Errorf("watched so far: %q", out)
		}
		return nil
	}, "docker", "metrics", name, "--watch", "--interval", "200ms").Want(t, 0, "metrics --watch, interrupted")

	var lim messages.ResourceLimits
	if err := json.Unmarshal([]byte(f.OK("docker", "limits", "get", name, "--json")), &lim); err != nil || lim != (messages.ResourceLimits{MemoryMB: 64}) {
		t.Errorf("limits get: %+v (%v), want memory 64", lim, err)
	}
	if out := f.OK("docker", "limits", "set", name, "--memory", "96", "--pids", "40"); !strings.Contains(out, "96") {
		t.Errorf("limits set printed %q", out)
	}
	if got := dockerInspect(t, name, "{{.HostConfig.Memory}} {{.HostConfig.PidsLimit}}"); got != fmt.Sprintf("%d 40", 96<<20) {
		t.Errorf("after limits set, docker says memory/pids %q", got)
	}
	if err := json.Unmarshal([]byte(f.OK("docker", "limits", "get", name, "--json")), &lim); err != nil || lim != (messages.ResourceLimits{MemoryMB: 96, PIDs: 40}) {
		t.Errorf("limits get after set: %+v (%v)", lim, err)
	}
	f.Expect(cli.ExitUsage, "docker", "limits", "set", name)

	var nets []messages.Network
	if err := json.Unmarshal([]byte(f.OK("docker", "network", "list", "--json")), &nets); err != nil {
		t.Fatalf("network list --json: %v", err)
	}
	if !slices.ContainsFunc(nets, func(n messages.Network) bool { return n.Name == extra && n.Internal }) {
		t.Errorf("network list lacks the internal %s: %+v", extra, nets)
	}
	f.OK("docker", "network", "attach", name, extra)
	if got := networksOf(t, name); !slices.Contains(got, extra) || !slices.Contains(got, home) {
		t.Errorf("after attach: networks %v, want %s and %s", got, home, extra)
	}
	f.OK("docker", "network", "detach", name, extra)
	if got := networksOf(t, name); slices.Contains(got, extra) {
		t.Errorf("after detach: networks %v still have %s", got, extra)
	}
	f.Expect(cli.ExitNotFound, "docker", "network", "detach", name, extra)

	// restart runs the command again: a second greeting in the logs.
	f.OK("docker", "restart", name, "--timeout", "5s")
	testenv.Eventually(t, 15*time.Second, func() error {
		if out := f.OK("docker", "logs", name, "--lines", "1000"); strings.Count(out, "hello from "+name) != 2 {
			return fmt.Errorf("logs after restart: %q, want two greetings", out)
		}
		return nil
	})
	if err := json.Unmarshal([]byte(f.OK("docker", "get", name, "--json")), &inst); err != nil || inst.State != drivers.StateRunning {
		t.Errorf("after restart: %+v (%v), want running", inst, err)
	}

	f.OK("docker", "snapshot", "create", name, "s1")
	if out := f.OK("docker", "snapshot", "list", name); !strings.Contains(out, "s1") {
		t.Errorf("snapshot list: %q", out)
	}
	f.OK("docker", "clone", name, clone)
	if got := networksOf(t, clone); len(got) != 1 || got[0] != home {
		t.Errorf("clone on networks %v, want only the internal %s", got, home)
	}
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
	want := dockerInspectVersion(t)
	if out := f.OK("docker", "health"); !strings.Contains(out, want) {
		t.Errorf("health output lacks the engine version %s: %s", want, out)
	}
}

// TestStreamedExecThroughBus: exec output crosses the bus as it is
// produced, not when the command ends: the chunk with "a" arrives well
// before the final chunk of `echo a; sleep 3; echo b`.
func TestStreamedExecThroughBus(t *testing.T) {
	f := startFleet(t)
	home := internalNetwork(t)
	name := clitest.Unique("sbdk-e2e-stream")
	cleanup(t, name)
	f.OK("docker", "create", name, "--image", e2eImage, "--network", home, "--", "sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done")
	f.OK("docker", "start", name)

	nc, err := nats.Connect(f.url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	cl := client.New(nc, 30*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var gotA, gotB, final time.Time
	var exit *int
	req := messages.ExecRequest{Name: name, Stream: true, Command: []string{"sh", "-c", "echo a; sleep 3; echo b"}}
	err = cl.Stream(ctx, "docker", f.Host, messages.OpExec, req, func(ch messages.Chunk) error {
		now := time.Now()
		switch {
		case ch.Final:
			final, exit = now, ch.ExitCode
		case strings.Contains(string(ch.Data), "a") && gotA.IsZero():
			gotA = now
			if strings.Contains(string(ch.Data), "b") {
				gotB = now
			}
		case strings.Contains(string(ch.Data), "b"):
			gotB = now
		}
		return nil
	})
	if err != nil {
		t.Fatalf("streamed exec: %v", err)
	}
	if gotA.IsZero() || gotB.IsZero() || final.IsZero() || exit == nil || *exit != 0 {
		t.Fatalf("chunks: a at %v, b at %v, final at %v, exit %v", gotA, gotB, final, exit)
	}
	if lead := final.Sub(gotA); lead < 2*time.Second {
		t.Errorf("the chunk with a arrived only %v before the final chunk, want > 2s (output is buffered, not streamed)", lead)
	}
	if gotB.Before(gotA) {
		t.Errorf("b (%v) arrived before a (%v)", gotB, gotA)
	}
}

func dockerInspect(t testing.TB, name, format string) string {
	t.Helper()
	out, err := exec.Command("docker", "inspect", "-f", format, name).CombinedOutput()
	if err != nil {
		t.Fatalf("docker inspect %s: %v %s", name, err, out)
	}
	return strings.TrimSpace(string(out))
}

func dockerInspectVersion(t testing.TB) string {
	t.Helper()
	out, err := exec.Command("docker", "version", "-f", "{{.Server.Version}}").CombinedOutput()
	if err != nil {
		t.Fatalf("docker version: %v %s", err, out)
	}
	return strings.TrimSpace(string(out))
}

// TestOutOfBandEventsInStream: docker stop and docker rm made with the
// docker CLI reach SUBSTRATE_EVENTS through a running worker.
func TestOutOfBandEventsInStream(t *testing.T) {
	f := startFleet(t)
	name := clitest.Unique("sbdk-e2e-oob")
	cleanup(t, name)
	f.OK("docker", "create", name, "--image", e2eImage, "--network", internalNetwork(t), "--", "sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done")
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
