package docker_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/subbus/subbus/internal/cli"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/drivers/docker"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/messages"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/internal/worker"
)

const e2eImage = "subbus-test/busybox:latest"

// fleet is a running worker serving the docker driver on an embedded
// nats-server, and the subbus CLI pointed at it.
type fleet struct {
	t    testing.TB
	url  string
	host string
}

func startFleet(t testing.TB) *fleet {
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

	host := "e2e" + randHex()
	d = docker.New(docker.Options{HostID: host})
	w, err := worker.New(context.Background(), worker.Options{
		Host:          host,
		Managers:      []*manager.Manager{manager.New(d, manager.Options{Host: host, CacheTTL: -1})},
		ManageStreams: true,
		Embedded:      worker.EmbeddedOptions{Listen: "127.0.0.1:-1", DataDir: t.TempDir()},
		Logger:        zerolog.Nop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		stop()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("worker did not stop")
		}
	})
	select {
	case <-w.Ready():
	case err := <-done:
		t.Fatalf("worker stopped: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("worker not ready")
	}
	return &fleet{t: t, url: w.ClientURL(), host: host}
}

// subbus runs the CLI in-process; flags go before any "--".
func (f *fleet) subbus(args ...string) (stdout, stderr string, status int) {
	f.t.Helper()
	i := len(args)
	for j, a := range args {
		if a == "--" {
			i = j
			break
		}
	}
	full := append(append(append([]string{}, args[:i]...), "--server", f.url), args[i:]...)
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	status = cli.Run(ctx, full, &out, &errb)
	return out.String(), errb.String(), status
}

// ok runs the CLI and fails the test unless it exits 0.
func (f *fleet) ok(args ...string) string {
	f.t.Helper()
	out, errs, st := f.subbus(args...)
	if st != 0 {
		f.t.Fatalf("subbus %s: exit %d: %s%s", strings.Join(args, " "), st, errs, out)
	}
	return out
}

func randHex() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
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
	name, clone := "sbdk-e2e-"+randHex(), "sbdk-e2e-clone-"+randHex()
	cleanup(t, name, clone)
	script := `trap 'exit 0' TERM; echo "hello from ` + name + `"; while :; do sleep 1 & wait $!; done`

	f.ok("docker", "create", name, "--image", e2eImage, "--memory", "64", "--env", "GREETING=hi", "--label", "team=e2e", "--", "sh", "-c", script)
	var inst drivers.Instance
	if err := json.Unmarshal([]byte(f.ok("docker", "get", name, "--json")), &inst); err != nil {
		t.Fatalf("get --json: %v", err)
	}
	if inst.State != drivers.StateStopped || !inst.Managed || inst.Limits.MemoryMB != 64 || inst.Metadata["team"] != "e2e" {
		t.Errorf("created instance %+v", inst)
	}
	if _, _, st := f.subbus("docker", "create", name, "--image", e2eImage); st != cli.ExitAlreadyExists {
		t.Errorf("second create exited %d, want %d (already_exists)", st, cli.ExitAlreadyExists)
	}
	if _, errs, st := f.subbus("docker", "create", "sbdk-e2e-noimg-"+randHex(), "--image", "subbus-test/nope:1"); st != cli.ExitNotFound || !strings.Contains(errs, "subbus-test/nope:1") {
		t.Errorf("create with a missing image exited %d (%s), want not_found naming the image", st, errs)
	}
	f.ok("docker", "start", name)

	out, errs, st := f.subbus("docker", "exec", name, "--", "sh", "-c", `echo "$GREETING"; echo oops >&2; exit 3`)
	if st != 3 || out != "hi\n" || errs != "oops\n" {
		t.Errorf("exec: exit %d stdout %q stderr %q, want 3, \"hi\\n\", \"oops\\n\"", st, out, errs)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		if out := f.ok("docker", "logs", name, "--lines", "5"); !strings.Contains(out, "hello from "+name) {
			return fmt.Errorf("logs: %q", out)
		}
		return nil
	})
	var u drivers.ResourceUsage
	if err := json.Unmarshal([]byte(f.ok("docker", "metrics", name, "--json")), &u); err != nil {
		t.Fatalf("metrics --json: %v", err)
	}
	if u.MemoryMB <= 0 || !u.Measured.Has(drivers.MeasureCPU|drivers.MeasureMemory) {
		t.Errorf("metrics %+v", u)
	}

	f.ok("docker", "snapshot", "create", name, "s1")
	if out := f.ok("docker", "snapshot", "list", name); !strings.Contains(out, "s1") {
		t.Errorf("snapshot list: %q", out)
	}
	f.ok("docker", "clone", name, clone)
	if out := f.ok("docker", "list"); !strings.Contains(out, name) || !strings.Contains(out, clone) {
		t.Errorf("list lacks %s or %s: %q", name, clone, out)
	}
	f.ok("docker", "snapshot", "restore", name, "s1")
	f.ok("docker", "stop", name, "--timeout", "5s")
	if err := json.Unmarshal([]byte(f.ok("docker", "get", name, "--json")), &inst); err != nil || inst.State != drivers.StateStopped {
		t.Errorf("after stop: %+v (%v)", inst, err)
	}
	f.ok("docker", "snapshot", "delete", name, "s1")
	f.ok("docker", "delete", name)
	f.ok("docker", "delete", clone, "--force")
	if _, _, st := f.subbus("docker", "get", name); st != cli.ExitNotFound {
		t.Errorf("get after delete exited %d, want %d", st, cli.ExitNotFound)
	}
	if out := f.ok("docker", "health"); !strings.Contains(out, "20.10") && !strings.Contains(out, "1.4") {
		t.Logf("health output: %s", out)
	}
}

// TestOutOfBandEventsInStream: docker stop and docker rm made with the
// docker CLI reach SUBSTRATE_EVENTS through a running worker.
func TestOutOfBandEventsInStream(t *testing.T) {
	f := startFleet(t)
	name := "sbdk-e2e-oob-" + randHex()
	cleanup(t, name)
	f.ok("docker", "create", name, "--image", e2eImage, "--", "sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done")
	f.ok("docker", "start", name)

	nc, err := nats.Connect(f.url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cons, err := js.OrderedConsumer(ctx, messages.EventsStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{messages.EventSubject("docker", f.host, name, "*")},
	})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]drivers.Event{}
	waitFor := func(typ drivers.EventType) drivers.Event {
		t.Helper()
		testenv.Eventually(t, 20*time.Second, func() error {
			batch, err := cons.FetchNoWait(100)
			if err != nil {
				return err
			}
			for m := range batch.Messages() {
				var ce messages.CloudEvent
				if err := json.Unmarshal(m.Data(), &ce); err == nil && ce.Data.Source == drivers.SourceNative {
					seen[string(ce.Data.Type)] = ce.Data
				}
			}
			if _, ok := seen[string(typ)]; !ok {
				return fmt.Errorf("no native %s event for %s yet (have %v)", typ, name, keys(seen))
			}
			return nil
		})
		return seen[string(typ)]
	}
	out, err := exec.Command("docker", "stop", "-t", "5", name).CombinedOutput()
	if err != nil {
		t.Fatalf("docker stop: %v %s", err, out)
	}
	if ev := waitFor(drivers.EventStopped); ev.Host != f.host || ev.Driver != "docker" || ev.State != drivers.StateStopped {
		t.Errorf("stopped event %+v", ev)
	}
	out, err = exec.Command("docker", "rm", name).CombinedOutput()
	if err != nil {
		t.Fatalf("docker rm: %v %s", err, out)
	}
	waitFor(drivers.EventVanished)
}

func keys(m map[string]drivers.Event) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
