package supervisor_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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

// TestEndToEndCLI drives supervisord through a worker with the subbus
// supervisor commands, as a user would type them.
func TestEndToEndCLI(t *testing.T) {
	f := startWorker(t)
	name, clone := clitest.Unique("sbsv-e2e"), clitest.Unique("sbsv-e2e-clone")
	removeAfter(t, name, clone)

	f.OK("supervisor", "create", name, "--image", "/bin/sh", "--env", "GREETING=hi there", "--label", "team=e2e",
		"--workdir", "/tmp", "--", "/bin/sh", "-c", e2eScript)
	var inst messages.Instance
	if err := json.Unmarshal([]byte(f.OK("supervisor", "get", name, "--json")), &inst); err != nil {
		t.Fatalf("get --json: %v", err)
	}
	if inst.State != drivers.StateStopped || !inst.Managed || inst.Image != "/bin/sh" || inst.Metadata["team"] != "e2e" || inst.NativeState != "STOPPED" {
		t.Errorf("created program %+v", inst)
	}
	f.Expect(cli.ExitAlreadyExists, "supervisor", "create", name, "--image", "/bin/sh")
	if errs := f.Expect(cli.ExitNotFound, "supervisor", "create", clitest.Unique("sbsv-e2e-nocmd"), "--image", "/nonexistent/cmd").Stderr; !strings.Contains(errs, "/nonexistent/cmd") {
		t.Errorf("create with a missing command does not name it: %s", errs)
	}
	f.Expect(cli.ExitInvalidArgument, "supervisor", "create", clitest.Unique("sbsv-e2e-bad"), "--image", "/bin/sh", "--env", "X=a\n[program:evil]")
	// Every create flag docs/supervisor.md calls unsupported is refused,
	// and nothing is created.
	for _, flag := range [][]string{{"--cpu", "1"}, {"--memory", "64"}, {"--disk", "1"}, {"--volume", "/tmp:/mnt"}, {"--network", "net0"}} {
		n := clitest.Unique("sbsv-e2e-uns")
		f.Expect(cli.ExitUnsupported, append([]string{"supervisor", "create", n, "--image", "/bin/sh"}, flag...)...)
		f.Expect(cli.ExitNotFound, "supervisor", "get", n)
	}
	var caps messages.CapabilitiesResult
	if err := json.Unmarshal([]byte(f.OK("supervisor", "capabilities", "--json")), &caps); err != nil {
		t.Fatalf("capabilities --json: %v", err)
	}
	if want := (messages.Capabilities{Logs: true, Clone: true, Events: true}); caps.Driver != "supervisor" || caps.Capabilities != want {
		t.Errorf("capabilities %+v, want %+v", caps, want)
	}
	if out := f.OK("supervisor", "capabilities"); !strings.Contains(out, "Ops:") || !strings.Contains(out, "clone") {
		t.Errorf("capabilities output: %s", out)
	}
	f.OK("supervisor", "start", name)
	testenv.Eventually(t, 20*time.Second, func() error {
		if out := f.OK("supervisor", "logs", name, "--lines", "50"); !strings.Contains(out, "greeting=hi there") {
			return fmt.Errorf("logs: %q", out)
		}
		return nil
	})
	var u messages.ResourceUsage
	if err := json.Unmarshal([]byte(f.OK("supervisor", "metrics", name, "--json")), &u); err != nil {
		t.Fatalf("metrics --json: %v", err)
	}
	if u.MemoryMB <= 0 || !u.Measured.Has(drivers.MeasureCPU|drivers.MeasureMemory) || u.Measured.Has(drivers.MeasureNetwork) {
		t.Errorf("metrics %+v", u)
	}
	// exec exits 125 when the command could not be run at all (docs/cli.md).
	if errs := f.Expect(cli.ExitExecFailed, "supervisor", "exec", name, "--", "true").Stderr; !strings.Contains(errs, "unsupported") {
		t.Errorf("exec does not say unsupported: %s", errs)
	}
	f.Expect(cli.ExitUnsupported, "supervisor", "snapshot", "create", name, "s1")
	f.Expect(cli.ExitUnsupported, "supervisor", "limits", "get", name)
	f.Expect(cli.ExitUnsupported, "supervisor", "network", "list")

	f.OK("supervisor", "clone", name, clone)
	out := f.OK("supervisor", "list")
	for _, n := range []string{name, clone, "subbus-native"} {
		if !strings.Contains(out, n) {
			t.Errorf("list lacks %s: %q", n, out)
		}
	}
	f.OK("supervisor", "restart", name, "--timeout", "5s")
	f.Expect(cli.ExitConflict, "supervisor", "delete", name)
	f.OK("supervisor", "stop", name, "--timeout", "5s")
	if err := json.Unmarshal([]byte(f.OK("supervisor", "get", name, "--json")), &inst); err != nil || inst.State != drivers.StateStopped {
		t.Errorf("after stop: %+v (%v)", inst, err)
	}
	f.OK("supervisor", "delete", name)
	f.Expect(cli.ExitNotFound, "supervisor", "get", name)

	f.OK("supervisor", "start", clone)
	testenv.Eventually(t, 20*time.Second, func() error {
		if out := f.OK("supervisor", "logs", clone, "--lines", "50"); !strings.Contains(out, "greeting=hi there") {
			return fmt.Errorf("clone logs: %q", out)
		}
		return nil
	})
	f.OK("supervisor", "delete", clone, "--force")
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

// TestEndToEndFollowAndWatch: `logs --follow` streams each new line once,
// in order, until interrupted; `metrics --watch` prints a sample every
// interval until interrupted.
func TestEndToEndFollowAndWatch(t *testing.T) {
	f := startWorker(t)
	name := clitest.Unique("sbsv-e2e-follow")
	removeAfter(t, name)
	f.OK("supervisor", "create", name, "--image", "/bin/sh", "--", "/bin/sh", "-c",
		`trap 'exit 0' TERM; i=0; while :; do echo "line $i"; i=$((i+1)); sleep 0.2 & wait $!; done`)
	f.OK("supervisor", "start", name)

	var first int
	r := clitest.RunUntil(t, f.URL, 20*time.Second, func(out string) error {
		lines := strings.Fields(strings.ReplaceAll(out, "line ", ""))
		if len(lines) < 6 {
			return fmt.Errorf("%d lines followed so far: %q", len(lines), out)
		}
		// Consecutive numbers: no line skipped or printed twice between
		// the tail and the followed part.
		for i, l := range lines {
			n, err := strconv.Atoi(l)
			if err != nil {
				return fmt.Errorf("followed %q, not a line of the program", out)
			}
			if i == 0 {
				first = n
			} else if n != first+i {
				return fmt.Errorf("line %d is %d, want %d: %q", i, n, first+i, out)
			}
		}
		return nil
	}, "supervisor", "logs", name, "--follow", "--lines", "1")
	if r.Code != 0 {
		t.Fatalf("logs --follow ended with %d: %s", r.Code, r.Stderr)
	}
	if first == 0 {
		t.Errorf("logs --follow --lines 1 began with the program's first line, not its last")
	}

	r = clitest.RunUntil(t, f.URL, 20*time.Second, func(out string) error {
		if n := strings.Count(out, "\n"); n < 3 {
			return fmt.Errorf("%d samples so far", n)
		}
		return nil
	}, "supervisor", "metrics", name, "--watch", "--interval", "300ms", "--json")
	if r.Code != 0 {
		t.Fatalf("metrics --watch ended with %d: %s", r.Code, r.Stderr)
	}
	var prev messages.ResourceUsage
	for i, line := range strings.Split(strings.TrimSpace(r.Stdout), "\n") {
		var u messages.ResourceUsage
		if err := json.Unmarshal([]byte(line), &u); err != nil {
			t.Fatalf("sample %d %q: %v", i, line, err)
		}
		if u.MemoryMB <= 0 || !u.Measured.Has(drivers.MeasureCPU|drivers.MeasureMemory) {
			t.Errorf("sample %d: %+v", i, u)
		}
		if i > 0 && (!u.Time.After(prev.Time) || u.Counters.CPUTimeNs < prev.Counters.CPUTimeNs) {
			t.Errorf("sample %d (%v, cpu %d ns) does not follow sample %d (%v, cpu %d ns)",
				i, u.Time, u.Counters.CPUTimeNs, i-1, prev.Time, prev.Counters.CPUTimeNs)
		}
		prev = u
	}
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
