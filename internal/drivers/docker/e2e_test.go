package docker_test

import (
	"context"
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

// TestCLIAgreesWithDocker: what subbus says it did, `docker inspect`
// sees. (The commands themselves, the same on every driver, are the
// session of internal/e2etest.) Created on the internal network only,
// limits set on the running container, a network attached and detached;
// exec -i feeds standard input; health names the engine's version.
func TestCLIAgreesWithDocker(t *testing.T) {
	f := startFleet(t)
	home, extra := internalNetwork(t), internalNetwork(t)
	name := clitest.Unique("sbdk-e2e")
	cleanup(t, name)
	f.OK("docker", "create", name, "--image", e2eImage, "--memory", "64", "--network", home, "--",
		"sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done")
	if nets := networksOf(t, name); len(nets) != 1 || nets[0] != home {
		t.Fatalf("created on networks %v, want only the internal %s", nets, home)
	}
	f.OK("docker", "start", name)
	f.OK("docker", "limits", "set", name, "--memory", "96", "--pids", "40")
	if got := dockerInspect(t, name, "{{.HostConfig.Memory}} {{.HostConfig.PidsLimit}}"); got != fmt.Sprintf("%d 40", 96<<20) {
		t.Errorf("after limits set, docker says memory/pids %q", got)
	}
	f.OK("docker", "network", "attach", name, extra)
	if got := networksOf(t, name); !slices.Contains(got, extra) || !slices.Contains(got, home) {
		t.Errorf("after attach: networks %v, want %s and %s", got, home, extra)
	}
	f.OK("docker", "network", "detach", name, extra)
	if got := networksOf(t, name); slices.Contains(got, extra) {
		t.Errorf("after detach: networks %v still have %s", got, extra)
	}
	withStdin(t, "line one\nline two\n", func() {
		if r := f.Run("docker", "exec", name, "-i", "--", "sh", "-c", "wc -l; exit 5"); r.Code != 5 || strings.TrimSpace(r.Stdout) != "2" {
			t.Errorf("exec -i: exit %d stdout %q stderr %q, want 5 and the 2 lines of stdin counted", r.Code, r.Stdout, r.Stderr)
		}
	})
	if want, out := dockerInspectVersion(t), f.OK("docker", "health"); !strings.Contains(out, want) {
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
