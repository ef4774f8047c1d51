package supervisor_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/subbus/subbus/internal/cli"
	"github.com/subbus/subbus/internal/config"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/drivers/supervisor"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/messages"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/internal/worker"
)

// e2eDir is the test supervisord's directory (scripts/setup/supervisor.sh).
func e2eDir() string {
	base := os.Getenv("SUBBUS_SETUP_DIR")
	if base == "" {
		base = "/var/lib/subbus-test"
	}
	return filepath.Join(base, "supervisor")
}

func e2eOptions() supervisor.Options {
	o := supervisor.DefaultOptions()
	o.URL = os.Getenv("SUBBUS_SUPERVISOR_URL")
	if o.URL == "" {
		o.URL = "unix://" + filepath.Join(e2eDir(), "supervisor.sock")
	}
	o.ProgramsDir = filepath.Join(e2eDir(), "programs")
	o.LogDir = filepath.Join(e2eDir(), "log")
	o.PollInterval = config.Duration(250 * time.Millisecond)
	return o
}

// e2e is a worker serving the supervisor driver on an embedded
// nats-server, and the subbus CLI run in-process against it.
type e2e struct {
	t    *testing.T
	url  string
	host string
}

func startWorker(t *testing.T) *e2e {
	t.Helper()
	d, err := supervisor.New(e2eOptions())
	if err != nil {
		t.Fatal(err)
	}
	probe, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	testenv.Require(t, "supervisord", d.Connect(probe), "bash scripts/setup/supervisor.sh")

	host := "e2e" + hexID()
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
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
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

func (f *e2e) want(code int, args ...string) string {
	f.t.Helper()
	out, errs, st := f.run(args...)
	if st != code {
		f.t.Errorf("subbus %s: exit %d (%s%s), want %d", strings.Join(args, " "), st, errs, out, code)
	}
	return errs
}

func hexID() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// removeAfter deletes programs with a fresh driver when the test ends,
// whatever happened.
func removeAfter(t *testing.T, names ...string) {
	t.Cleanup(func() {
		d, err := supervisor.New(e2eOptions())
		if err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, n := range names {
			_, _ = d.Delete(ctx, n, drivers.DeleteOptions{Force: true})
		}
	})
}

const e2eScript = `trap 'exit 0' TERM; echo "greeting=$GREETING"; while :; do echo tick; sleep 1 & wait $!; done`

// TestEndToEndCLI drives supervisord through a worker with the subbus
// supervisor commands, as a user would type them.
func TestEndToEndCLI(t *testing.T) {
	f := startWorker(t)
	name, clone := "sbsv-e2e-"+hexID(), "sbsv-e2e-clone-"+hexID()
	removeAfter(t, name, clone)

	f.ok("supervisor", "create", name, "--image", "/bin/sh", "--env", "GREETING=hi there", "--label", "team=e2e",
		"--workdir", "/tmp", "--", "/bin/sh", "-c", e2eScript)
	var inst drivers.Instance
	if err := json.Unmarshal([]byte(f.ok("supervisor", "get", name, "--json")), &inst); err != nil {
		t.Fatalf("get --json: %v", err)
	}
	if inst.State != drivers.StateStopped || !inst.Managed || inst.Image != "/bin/sh" || inst.Metadata["team"] != "e2e" || inst.NativeState != "STOPPED" {
		t.Errorf("created program %+v", inst)
	}
	f.want(cli.ExitAlreadyExists, "supervisor", "create", name, "--image", "/bin/sh")
	if errs := f.want(cli.ExitNotFound, "supervisor", "create", "sbsv-e2e-nocmd-"+hexID(), "--image", "/nonexistent/cmd"); !strings.Contains(errs, "/nonexistent/cmd") {
		t.Errorf("create with a missing command does not name it: %s", errs)
	}
	f.want(cli.ExitInvalidArgument, "supervisor", "create", "sbsv-e2e-bad-"+hexID(), "--image", "/bin/sh", "--env", "X=a\n[program:evil]")
	f.want(cli.ExitUnsupported, "supervisor", "create", "sbsv-e2e-lim-"+hexID(), "--image", "/bin/sh", "--memory", "64")

	f.ok("supervisor", "start", name)
	testenv.Eventually(t, 20*time.Second, func() error {
		if out := f.ok("supervisor", "logs", name, "--lines", "50"); !strings.Contains(out, "greeting=hi there") {
			return fmt.Errorf("logs: %q", out)
		}
		return nil
	})
	var u drivers.ResourceUsage
	if err := json.Unmarshal([]byte(f.ok("supervisor", "metrics", name, "--json")), &u); err != nil {
		t.Fatalf("metrics --json: %v", err)
	}
	if u.MemoryMB <= 0 || !u.Measured.Has(drivers.MeasureCPU|drivers.MeasureMemory) || u.Measured.Has(drivers.MeasureNetwork) {
		t.Errorf("metrics %+v", u)
	}
	// exec exits 125 when the command could not be run at all (docs/cli.md).
	if errs := f.want(cli.ExitExecFailed, "supervisor", "exec", name, "--", "true"); !strings.Contains(errs, "unsupported") {
		t.Errorf("exec does not say unsupported: %s", errs)
	}
	f.want(cli.ExitUnsupported, "supervisor", "snapshot", "create", name, "s1")

	f.ok("supervisor", "clone", name, clone)
	out := f.ok("supervisor", "list")
	for _, n := range []string{name, clone, "subbus-native"} {
		if !strings.Contains(out, n) {
			t.Errorf("list lacks %s: %q", n, out)
		}
	}
	f.ok("supervisor", "restart", name, "--timeout", "5s")
	f.want(cli.ExitConflict, "supervisor", "delete", name)
	f.ok("supervisor", "stop", name, "--timeout", "5s")
	if err := json.Unmarshal([]byte(f.ok("supervisor", "get", name, "--json")), &inst); err != nil || inst.State != drivers.StateStopped {
		t.Errorf("after stop: %+v (%v)", inst, err)
	}
	f.ok("supervisor", "delete", name)
	f.want(cli.ExitNotFound, "supervisor", "get", name)

	f.ok("supervisor", "start", clone)
	testenv.Eventually(t, 20*time.Second, func() error {
		if out := f.ok("supervisor", "logs", clone, "--lines", "50"); !strings.Contains(out, "greeting=hi there") {
			return fmt.Errorf("clone logs: %q", out)
		}
		return nil
	})
	f.ok("supervisor", "delete", clone, "--force")
	if errs := f.want(cli.ExitConflict, "supervisor", "delete", "subbus-native", "--force"); !strings.Contains(errs, "not created by subbus") {
		t.Errorf("delete of subbus-native does not say why: %s", errs)
	}
	if out := f.ok("supervisor", "health"); !strings.Contains(out, "4.2") {
		t.Errorf("health output: %s", out)
	}
}

// TestOutOfBandEventsInStream: `supervisorctl stop` typed by hand, and a
// program removed by hand, reach SUBSTRATE_EVENTS through a running worker.
func TestOutOfBandEventsInStream(t *testing.T) {
	f := startWorker(t)
	name := "sbsv-e2e-oob-" + hexID()
	removeAfter(t, name)
	f.ok("supervisor", "create", name, "--image", "/bin/sh", "--", "/bin/sh", "-c", e2eScript)
	f.ok("supervisor", "start", name)

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
		FilterSubjects: []string{messages.EventSubject("supervisor", f.host, name, "*")},
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
				return fmt.Errorf("no native %s event for %s yet (have %v)", typ, name, seen)
			}
			return nil
		})
		return seen[typ]
	}
	ctl := func(args ...string) {
		t.Helper()
		conf := filepath.Join(e2eDir(), "supervisord.conf")
		if out, err := exec.Command("supervisorctl", append([]string{"-c", conf}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("supervisorctl %v: %v %s", args, err, out)
		}
	}
	ctl("stop", name)
	if ev := waitFor(drivers.EventStopped); ev.Host != f.host || ev.Driver != "supervisor" || ev.State != drivers.StateStopped {
		t.Errorf("stopped event %+v", ev)
	}
	ctl("remove", name)
	waitFor(drivers.EventVanished)
}
