package lxc_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/cli"
	"github.com/subbus/subbus/internal/cli/clitest"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/drivers/lxc"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/messages"
)

const e2eImage = "subbus-busybox"

// startWorker skips (fails in CI) without LXD and the test image, then
// starts a worker serving the lxc driver and the CLI pointed at it.
func startWorker(t *testing.T) *clitest.Fleet {
	t.Helper()
	// A generous probe: a busy LXD under CI load is slow, not absent.
	probe, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	d := lxc.New(lxc.DefaultOptions())
	err := d.Connect(probe)
	if err == nil {
		err = exec.Command("lxc", "image", "info", e2eImage).Run()
	}
	_ = d.Close()
	testenv.Require(t, "LXD with the "+e2eImage+" image", err, "bash scripts/setup/lxd.sh")

	host := clitest.Unique("e2e")
	return clitest.StartFleet(t, host, 120*time.Second, manager.New(lxc.New(lxc.DefaultOptions()), manager.Options{Host: host, CacheTTL: -1}))
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
	name, clone, netName := clitest.Unique("sbe2e"), clitest.Unique("sbe2e-clone"), clitest.Unique("sbe")
	removeAfter(t, name, clone)
	if out, err := exec.Command("lxc", "network", "create", netName, "ipv4.address=none", "ipv6.address=none",
		"ipv4.nat=false", "ipv6.nat=false").CombinedOutput(); err != nil {
		t.Fatalf("lxc network create: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("lxc", "network", "delete", netName).Run() })

	f.OK("lxc", "create", name, "--image", e2eImage, "--memory", "64", "--env", "GREETING=hi", "--label", "team=e2e")
	var inst messages.Instance
	if err := json.Unmarshal([]byte(f.OK("lxc", "get", name, "--json")), &inst); err != nil {
		t.Fatalf("get --json: %v", err)
	}
	if inst.State != drivers.StateStopped || !inst.Managed || inst.Limits.MemoryMB != 64 || inst.Metadata["team"] != "e2e" || inst.Image != e2eImage {
		t.Errorf("created instance %+v", inst)
	}
	f.Expect(cli.ExitAlreadyExists, "lxc", "create", name, "--image", e2eImage)
	if r := f.Run("lxc", "create", clitest.Unique("sbe2e-noimg"), "--image", "subbus-nope"); r.Code != cli.ExitNotFound || !strings.Contains(r.Stderr, "subbus-nope") {
		t.Errorf("create with a missing image exited %d (%s), want not_found naming the image", r.Code, r.Stderr)
	}
	f.OK("lxc", "start", name)

	if r := f.Run("lxc", "exec", name, "--", "sh", "-c", `echo "$GREETING"; echo oops >&2; exit 3`); r.Code != 3 || r.Stdout != "hi\n" || r.Stderr != "oops\n" {
		t.Errorf("exec: exit %d stdout %q stderr %q, want 3, \"hi\\n\", \"oops\\n\"", r.Code, r.Stdout, r.Stderr)
	}
	testenv.Eventually(t, 20*time.Second, func() error {
		if out := f.OK("lxc", "logs", name, "--lines", "50"); !strings.Contains(out, "subbus-conformance "+name) {
			return fmt.Errorf("logs: %q", out)
		}
		return nil
	})
	var u messages.ResourceUsage
	if err := json.Unmarshal([]byte(f.OK("lxc", "metrics", name, "--json")), &u); err != nil {
		t.Fatalf("metrics --json: %v", err)
	}
	if u.MemoryMB <= 0 || !u.Measured.Has(drivers.MeasureCPU|drivers.MeasureMemory) {
		t.Errorf("metrics %+v", u)
	}
	f.OK("lxc", "limits", "set", name, "--cpu", "1.5", "--memory", "128")
	var lim messages.ResourceLimits
	if err := json.Unmarshal([]byte(f.OK("lxc", "limits", "get", name, "--json")), &lim); err != nil || lim.CPUCores != 1.5 || lim.MemoryMB != 128 {
		t.Errorf("limits get: %+v (%v), want 1.5 cores and 128 MB", lim, err)
	}

	if out := f.OK("lxc", "network", "list"); !strings.Contains(out, netName) {
		t.Errorf("network list lacks %s: %q", netName, out)
	}
	f.OK("lxc", "network", "attach", name, netName)
	if err := json.Unmarshal([]byte(f.OK("lxc", "get", name, "--json")), &inst); err != nil || len(inst.Networks) != 1 || inst.Networks[0].NetworkName != netName {
		t.Errorf("after attach: %+v (%v)", inst.Networks, err)
	}
	f.OK("lxc", "network", "detach", name, netName)

	f.OK("lxc", "snapshot", "create", name, "s1")
	if out := f.OK("lxc", "snapshot", "list", name); !strings.Contains(out, "s1") {
		t.Errorf("snapshot list: %q", out)
	}
	f.OK("lxc", "clone", name, clone)
	if out := f.OK("lxc", "list"); !strings.Contains(out, name) || !strings.Contains(out, clone) {
		t.Errorf("list lacks %s or %s: %q", name, clone, out)
	}
	f.OK("lxc", "snapshot", "restore", name, "s1")
	f.OK("lxc", "restart", name, "--timeout", "5s")
	f.OK("lxc", "stop", name, "--timeout", "5s")
	if err := json.Unmarshal([]byte(f.OK("lxc", "get", name, "--json")), &inst); err != nil || inst.State != drivers.StateStopped {
		t.Errorf("after stop: %+v (%v)", inst, err)
	}
	f.OK("lxc", "snapshot", "delete", name, "s1")
	f.OK("lxc", "delete", name)
	f.OK("lxc", "start", clone)
	f.Expect(cli.ExitConflict, "lxc", "delete", clone)
	f.OK("lxc", "delete", clone, "--force")
	f.Expect(cli.ExitNotFound, "lxc", "get", name)
	if out := f.OK("lxc", "health"); !strings.Contains(out, "5.0") && !strings.Contains(out, "incus") {
		t.Errorf("health output: %s", out)
	}
}

// TestOutOfBandEventsInStream: `lxc stop` and `lxc delete` typed by hand
// reach SUBSTRATE_EVENTS through a running worker.
func TestOutOfBandEventsInStream(t *testing.T) {
	f := startWorker(t)
	name := clitest.Unique("sbe2e-oob")
	removeAfter(t, name)
	f.OK("lxc", "create", name, "--image", e2eImage)
	f.OK("lxc", "start", name)

	events := f.WatchEvents("lxc", name)
	if out, err := exec.Command("lxc", "stop", "--force", name).CombinedOutput(); err != nil {
		t.Fatalf("lxc stop: %v %s", err, out)
	}
	if ev := events.WaitNative(t, drivers.EventStopped, 30*time.Second); ev.Host != f.Host || ev.Driver != "lxc" || ev.State != drivers.StateStopped {
		t.Errorf("stopped event %+v", ev)
	}
	if out, err := exec.Command("lxc", "delete", name).CombinedOutput(); err != nil {
		t.Fatalf("lxc delete: %v %s", err, out)
	}
	events.WaitNative(t, drivers.EventVanished, 30*time.Second)
}

var tickLine = regexp.MustCompile(`(?m)^subbus-conformance tick (\d+)$`)

// ticks are the numbers of the test image's per-second console lines.
func ticks(out string) []int {
	var n []int
	for _, m := range tickLine.FindAllStringSubmatch(out, -1) {
		i, _ := strconv.Atoi(m[1])
		n = append(n, i)
	}
	return n
}

// TestEndToEndStreams: the streaming and stdin forms of the lxc commands,
// through a worker: logs --follow prints the console as it grows and ends
// cleanly when interrupted, metrics --watch samples repeatedly, and exec
// -i feeds standard input to the command.
func TestEndToEndStreams(t *testing.T) {
	f := startWorker(t)
	name := clitest.Unique("sbe2e-stream")
	removeAfter(t, name)
	f.OK("lxc", "create", name, "--image", e2eImage)
	f.OK("lxc", "start", name)
	var last int
	testenv.Eventually(t, 30*time.Second, func() error {
		n := ticks(f.OK("lxc", "logs", name, "--lines", "20"))
		if len(n) == 0 {
			return fmt.Errorf("no tick lines in the console of %s yet", name)
		}
		last = n[len(n)-1]
		return nil
	})

	t.Run("LogsFollow", func(t *testing.T) {
		r := clitest.RunUntil(t, f.URL, 60*time.Second, func(out string) error {
			n := ticks(out)
			if len(n) < 2 || n[len(n)-1] < last+2 {
				return fmt.Errorf("followed ticks %v; want new ones past %d", n, last+1)
			}
			return nil
		}, "lxc", "logs", name, "--lines", "1", "--follow")
		if r.Code != 0 {
			t.Errorf("logs --follow interrupted: exit %d, want 0 (stderr %s)", r.Code, r.Stderr)
		}
		n := ticks(r.Stdout)
		for i := 1; i < len(n); i++ {
			if n[i] != n[i-1]+1 {
				t.Errorf("followed ticks %v: a line lost or repeated", n)
				break
			}
		}
	})

	t.Run("MetricsWatch", func(t *testing.T) {
		samples := func(out string) []messages.ResourceUsage {
			var us []messages.ResourceUsage
			for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
				var u messages.ResourceUsage
				if json.Unmarshal([]byte(l), &u) == nil {
					us = append(us, u)
				}
			}
			return us
		}
		r := clitest.RunUntil(t, f.URL, 60*time.Second, func(out string) error {
			if n := len(samples(out)); n < 2 {
				return fmt.Errorf("%d samples so far: %q", n, out)
			}
			return nil
		}, "lxc", "metrics", name, "--watch", "--interval", "300ms", "--json")
		if r.Code != 0 {
			t.Errorf("metrics --watch interrupted: exit %d, want 0 (stderr %s)", r.Code, r.Stderr)
		}
		us := samples(r.Stdout)
		for _, u := range us {
			if u.MemoryMB <= 0 || !u.Measured.Has(drivers.MeasureCPU|drivers.MeasureMemory) {
				t.Errorf("sample %+v", u)
			}
		}
		if len(us) >= 2 && !us[1].Time.After(us[0].Time) {
			t.Errorf("samples at %v then %v: not two samples", us[0].Time, us[1].Time)
		}
	})

	t.Run("ExecStdin", func(t *testing.T) {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		input := "first line\nsecond line\n"
		go func() { _, _ = w.WriteString(input); _ = w.Close() }()
		saved := os.Stdin
		os.Stdin = r // the CLI reads the process's standard input
		t.Cleanup(func() { os.Stdin = saved; _ = r.Close() })
		res := f.Run("lxc", "exec", name, "-i", "--", "sh", "-c", "tr a-z A-Z; echo done >&2")
		if res.Code != 0 || res.Stdout != strings.ToUpper(input) || res.Stderr != "done\n" {
			t.Errorf("exec -i: exit %d stdout %q stderr %q, want 0, %q, \"done\\n\"", res.Code, res.Stdout, res.Stderr, strings.ToUpper(input))
		}
		os.Stdin = saved
		// Without -i the command gets no input (cat ends at once).
		if res := f.Run("lxc", "exec", name, "--", "cat"); res.Code != 0 || res.Stdout != "" {
			t.Errorf("exec without -i: exit %d stdout %q, want 0 and nothing", res.Code, res.Stdout)
		}
	})
}
