package lxc_test

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
	"github.com/subbus/subbus/internal/drivers/lxc"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/messages"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/internal/worker"
)

const e2eImage = "subbus-busybox"

// e2e is a worker serving the lxc driver on an embedded nats-server, and
// the subbus CLI run in-process against it.
type e2e struct {
	t    *testing.T
	url  string
	host string
}

func startWorker(t *testing.T) *e2e {
	t.Helper()
	probe, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d := lxc.New(lxc.DefaultOptions())
	err := d.Connect(probe)
	if err == nil {
		err = exec.Command("lxc", "image", "info", e2eImage).Run()
	}
	_ = d.Close()
	testenv.Require(t, "LXD with the "+e2eImage+" image", err, "bash scripts/setup/lxd.sh")

	host := "e2e" + hexID()
	w, err := worker.New(context.Background(), worker.Options{
		Host:          host,
		Managers:      []*manager.Manager{manager.New(lxc.New(lxc.DefaultOptions()), manager.Options{Host: host, CacheTTL: -1})},
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
	return &e2e{t: t, url: w.ClientURL(), host: host}
}

// run runs `subbus args…` in-process (the server flag goes before "--").
func (f *e2e) run(args ...string) (string, string, int) {
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
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	st := cli.Run(ctx, full, &out, &errb)
	return out.String(), errb.String(), st
}

func (f *e2e) ok(args ...string) string {
	f.t.Helper()
	out, errs, st := f.run(args...)
	if st != 0 {
		f.t.Fatalf("subbus %s: exit %d: %s%s", strings.Join(args, " "), st, errs, out)
	}
	return out
}

func hexID() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// removeAfter force-deletes instances (and a network) with the lxc CLI
// when the test ends, whatever happened.
func removeAfter(t *testing.T, names ...string) {
	t.Cleanup(func() {
		for _, n := range names {
			_ = exec.Command("lxc", "delete", "--force", n).Run()
		}
	})
}

// TestEndToEndCLI drives LXD through a worker with the subbus lxc
// commands, as a user would type them.
func TestEndToEndCLI(t *testing.T) {
	f := startWorker(t)
	name, clone, netName := "sbe2e-"+hexID(), "sbe2e-clone-"+hexID(), "sbe"+hexID()
	removeAfter(t, name, clone)
	if out, err := exec.Command("lxc", "network", "create", netName, "ipv4.address=none", "ipv6.address=none",
		"ipv4.nat=false", "ipv6.nat=false").CombinedOutput(); err != nil {
		t.Fatalf("lxc network create: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("lxc", "network", "delete", netName).Run() })

	f.ok("lxc", "create", name, "--image", e2eImage, "--memory", "64", "--env", "GREETING=hi", "--label", "team=e2e")
	var inst drivers.Instance
	if err := json.Unmarshal([]byte(f.ok("lxc", "get", name, "--json")), &inst); err != nil {
		t.Fatalf("get --json: %v", err)
	}
	if inst.State != drivers.StateStopped || !inst.Managed || inst.Limits.MemoryMB != 64 || inst.Metadata["team"] != "e2e" || inst.Image != e2eImage {
		t.Errorf("created instance %+v", inst)
	}
	if _, _, st := f.run("lxc", "create", name, "--image", e2eImage); st != cli.ExitAlreadyExists {
		t.Errorf("second create exited %d, want %d (already_exists)", st, cli.ExitAlreadyExists)
	}
	if _, errs, st := f.run("lxc", "create", "sbe2e-noimg-"+hexID(), "--image", "subbus-nope"); st != cli.ExitNotFound || !strings.Contains(errs, "subbus-nope") {
		t.Errorf("create with a missing image exited %d (%s), want not_found naming the image", st, errs)
	}
	f.ok("lxc", "start", name)

	out, errs, st := f.run("lxc", "exec", name, "--", "sh", "-c", `echo "$GREETING"; echo oops >&2; exit 3`)
	if st != 3 || out != "hi\n" || errs != "oops\n" {
		t.Errorf("exec: exit %d stdout %q stderr %q, want 3, \"hi\\n\", \"oops\\n\"", st, out, errs)
	}
	testenv.Eventually(t, 20*time.Second, func() error {
		if out := f.ok("lxc", "logs", name, "--lines", "50"); !strings.Contains(out, "subbus-conformance "+name) {
			return fmt.Errorf("logs: %q", out)
		}
		return nil
	})
	var u drivers.ResourceUsage
	if err := json.Unmarshal([]byte(f.ok("lxc", "metrics", name, "--json")), &u); err != nil {
		t.Fatalf("metrics --json: %v", err)
	}
	if u.MemoryMB <= 0 || !u.Measured.Has(drivers.MeasureCPU|drivers.MeasureMemory) {
		t.Errorf("metrics %+v", u)
	}
	f.ok("lxc", "limits", "set", name, "--cpu", "1.5", "--memory", "128")
	var lim drivers.ResourceLimits
	if err := json.Unmarshal([]byte(f.ok("lxc", "limits", "get", name, "--json")), &lim); err != nil || lim.CPUCores != 1.5 || lim.MemoryMB != 128 {
		t.Errorf("limits get: %+v (%v), want 1.5 cores and 128 MB", lim, err)
	}

	if out := f.ok("lxc", "network", "list"); !strings.Contains(out, netName) {
		t.Errorf("network list lacks %s: %q", netName, out)
	}
	f.ok("lxc", "network", "attach", name, netName)
	if err := json.Unmarshal([]byte(f.ok("lxc", "get", name, "--json")), &inst); err != nil || len(inst.Networks) != 1 || inst.Networks[0].NetworkName != netName {
		t.Errorf("after attach: %+v (%v)", inst.Networks, err)
	}
	f.ok("lxc", "network", "detach", name, netName)

	f.ok("lxc", "snapshot", "create", name, "s1")
	if out := f.ok("lxc", "snapshot", "list", name); !strings.Contains(out, "s1") {
		t.Errorf("snapshot list: %q", out)
	}
	f.ok("lxc", "clone", name, clone)
	if out := f.ok("lxc", "list"); !strings.Contains(out, name) || !strings.Contains(out, clone) {
		t.Errorf("list lacks %s or %s: %q", name, clone, out)
	}
	f.ok("lxc", "snapshot", "restore", name, "s1")
	f.ok("lxc", "restart", name, "--timeout", "5s")
	f.ok("lxc", "stop", name, "--timeout", "5s")
	if err := json.Unmarshal([]byte(f.ok("lxc", "get", name, "--json")), &inst); err != nil || inst.State != drivers.StateStopped {
		t.Errorf("after stop: %+v (%v)", inst, err)
	}
	f.ok("lxc", "snapshot", "delete", name, "s1")
	f.ok("lxc", "delete", name)
	f.ok("lxc", "start", clone)
	if _, _, st := f.run("lxc", "delete", clone); st != cli.ExitConflict {
		t.Errorf("delete of a running clone exited %d, want %d (conflict)", st, cli.ExitConflict)
	}
	f.ok("lxc", "delete", clone, "--force")
	if _, _, st := f.run("lxc", "get", name); st != cli.ExitNotFound {
		t.Errorf("get after delete exited %d, want %d", st, cli.ExitNotFound)
	}
	if out := f.ok("lxc", "health"); !strings.Contains(out, "5.0") && !strings.Contains(out, "incus") {
		t.Errorf("health output: %s", out)
	}
}

// TestOutOfBandEventsInStream: `lxc stop` and `lxc delete` typed by hand
// reach SUBSTRATE_EVENTS through a running worker.
func TestOutOfBandEventsInStream(t *testing.T) {
	f := startWorker(t)
	name := "sbe2e-oob-" + hexID()
	removeAfter(t, name)
	f.ok("lxc", "create", name, "--image", e2eImage)
	f.ok("lxc", "start", name)

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
		FilterSubjects: []string{messages.EventSubject("lxc", f.host, name, "*")},
	})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[drivers.EventType]drivers.Event{}
	waitFor := func(typ drivers.EventType) drivers.Event {
		t.Helper()
		testenv.Eventually(t, 30*time.Second, func() error {
			batch, err := cons.FetchNoWait(100)
			if err != nil {
				return err
			}
			for m := range batch.Messages() {
				var ce messages.CloudEvent
				if err := json.Unmarshal(m.Data(), &ce); err == nil && ce.Data.Source == drivers.SourceNative {
					seen[ce.Data.Type] = ce.Data
				}
			}
			if _, ok := seen[typ]; !ok {
				return fmt.Errorf("no native %s event for %s yet (have %d types)", typ, name, len(seen))
			}
			return nil
		})
		return seen[typ]
	}
	if out, err := exec.Command("lxc", "stop", "--force", name).CombinedOutput(); err != nil {
		t.Fatalf("lxc stop: %v %s", err, out)
	}
	if ev := waitFor(drivers.EventStopped); ev.Host != f.host || ev.Driver != "lxc" || ev.State != drivers.StateStopped {
		t.Errorf("stopped event %+v", ev)
	}
	if out, err := exec.Command("lxc", "delete", name).CombinedOutput(); err != nil {
		t.Fatalf("lxc delete: %v %s", err, out)
	}
	waitFor(drivers.EventVanished)
}
