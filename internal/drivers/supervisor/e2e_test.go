package supervisor_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/cli"
	"github.com/subbus/subbus/internal/cli/clitest"
	"github.com/subbus/subbus/internal/config"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/drivers/supervisor"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/messages"
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

// startWorker skips (fails in CI) without the test supervisord, then
// starts a worker serving the supervisor driver and the CLI pointed at it.
func startWorker(t *testing.T) *clitest.Fleet {
	t.Helper()
	d, err := supervisor.New(e2eOptions())
	if err != nil {
		t.Fatal(err)
	}
	probe, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	testenv.Require(t, "supervisord", d.Connect(probe), "bash scripts/setup/supervisor.sh")

	host := clitest.Unique("e2e")
	return clitest.StartFleet(t, host, 60*time.Second, manager.New(d, manager.Options{Host: host, CacheTTL: -1}))
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

// TestEndToEndSupervisorSpecifics: what only supervisord has, through the
// CLI (the commands themselves, the same on every driver, are the session
// of internal/e2etest): a program definition cannot be injected through
// the environment; every create flag docs/supervisor.md calls unsupported
// is refused and creates nothing; a program subbus did not create
// (subbus-native, from scripts/setup/supervisor.sh) is listed but not
// deleted; health names supervisord's version.
func TestEndToEndSupervisorSpecifics(t *testing.T) {
	f := startWorker(t)
	name := clitest.Unique("sbsv-e2e-bad")
	removeAfter(t, name)
	f.Expect(cli.ExitInvalidArgument, "supervisor", "create", name, "--image", "/bin/sh", "--env", "X=a\n[program:evil]")
	for _, flag := range [][]string{{"--cpu", "1"}, {"--memory", "64"}, {"--disk", "1"}, {"--volume", "/tmp:/mnt"}, {"--network", "net0"}} {
		f.Expect(cli.ExitUnsupported, append([]string{"supervisor", "create", name, "--image", "/bin/sh"}, flag...)...)
		f.Expect(cli.ExitNotFound, "supervisor", "get", name)
	}
	if out := f.OK("supervisor", "list"); !strings.Contains(out, "subbus-native") {
		t.Errorf("list lacks subbus-native: %q", out)
	}
	if errs := f.Expect(cli.ExitConflict, "supervisor", "delete", "subbus-native", "--force").Stderr; !strings.Contains(errs, "not created by subbus") {
		t.Errorf("delete of subbus-native does not say why: %s", errs)
	}
	if out := f.OK("supervisor", "health"); !strings.Contains(out, "4.2") {
		t.Errorf("health output: %s", out)
	}
}

// TestOutOfBandEventsInStream: `supervisorctl stop` typed by hand, and a
// program removed by hand, reach SUBSTRATE_EVENTS through a running worker.
func TestOutOfBandEventsInStream(t *testing.T) {
	f := startWorker(t)
	name := clitest.Unique("sbsv-e2e-oob")
	removeAfter(t, name)
	f.OK("supervisor", "create", name, "--image", "/bin/sh", "--", "/bin/sh", "-c", e2eScript)
	f.OK("supervisor", "start", name)

	events := f.WatchEvents("supervisor", name)
	ctl := func(args ...string) {
		t.Helper()
		conf := filepath.Join(e2eDir(), "supervisord.conf")
		if out, err := exec.Command("supervisorctl", append([]string{"-c", conf}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("supervisorctl %v: %v %s", args, err, out)
		}
	}
	ctl("stop", name)
	if ev := events.WaitNative(t, drivers.EventStopped, 30*time.Second); ev.Host != f.Host || ev.Driver != "supervisor" || ev.State != drivers.StateStopped {
		t.Errorf("stopped event %+v", ev)
	}
	ctl("remove", name)
	events.WaitNative(t, drivers.EventVanished, 30*time.Second)
}

// TestEndToEndForceStopAndRunAs: a program that ignores SIGTERM, with
// supervisord's own SIGKILL 30 s away, is stopped by `stop --timeout 1s`
// and by `stop --force` within seconds; `create --run-as` runs the
// program as that user.
func TestEndToEndForceStopAndRunAs(t *testing.T) {
	o := e2eOptions()
	o.StopWaitSecs = 30
	d, err := supervisor.New(o)
	if err != nil {
		t.Fatal(err)
	}
	probe, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	testenv.Require(t, "supervisord", d.Connect(probe), "bash scripts/setup/supervisor.sh")
	host := clitest.Unique("e2e")
	f := clitest.StartFleet(t, host, 60*time.Second, manager.New(d, manager.Options{Host: host, CacheTTL: -1}))

	name := clitest.Unique("sbsv-e2e-noterm")
	removeAfter(t, name)
	f.OK("supervisor", "create", name, "--image", "/bin/sh", "--run-as", "nobody", "--",
		"/bin/sh", "-c", `trap '' TERM; echo "user=$(id -un)"; while :; do sleep 1; done`)
	for _, c := range []struct {
		flags  []string
		within time.Duration
	}{
		{[]string{"--timeout", "1s"}, 4 * time.Second},
		{[]string{"--force"}, 2 * time.Second},
	} {
		f.OK("supervisor", "start", name)
		begin := time.Now()
		f.OK(append([]string{"supervisor", "stop", name}, c.flags...)...)
		if took := time.Since(begin); took > c.within {
			t.Errorf("stop %v of a program ignoring SIGTERM took %v, want under %v", c.flags, took, c.within)
		}
		var inst messages.Instance
		if err := json.Unmarshal([]byte(f.OK("supervisor", "get", name, "--json")), &inst); err != nil || inst.State != drivers.StateStopped {
			t.Errorf("after stop %v: %+v (%v)", c.flags, inst, err)
		}
	}
	// restart --force kills the old process at once and starts a new one,
	// which greets again.
	f.OK("supervisor", "start", name)
	starts := func() int { return strings.Count(f.OK("supervisor", "logs", name, "--lines", "100"), "user=nobody") }
	before := starts()
	begin := time.Now()
	f.OK("supervisor", "restart", name, "--force")
	if took := time.Since(begin); took > 4*time.Second { // startsecs is 1 s
		t.Errorf("restart --force of a program ignoring SIGTERM took %v", took)
	}
	var inst messages.Instance
	if err := json.Unmarshal([]byte(f.OK("supervisor", "get", name, "--json")), &inst); err != nil || inst.State != drivers.StateRunning {
		t.Errorf("after restart --force: %+v (%v)", inst, err)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		if n := starts(); n != before+1 {
			return fmt.Errorf("the program greeted %d times after restart --force, %d before", n, before)
		}
		return nil
	})
	if out := f.OK("supervisor", "logs", name, "--lines", "100"); strings.Contains(out, "user=") && strings.Count(out, "user=") != strings.Count(out, "user=nobody") {
		t.Errorf("create --run-as nobody: the program printed %q", out)
	}
}
