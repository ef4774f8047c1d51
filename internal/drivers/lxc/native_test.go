package lxc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/testenv"
)

// events collects what Watch emits.
type events struct {
	mu  sync.Mutex
	evs []drivers.Event
}

func (e *events) emit(ev drivers.Event) {
	e.mu.Lock()
	e.evs = append(e.evs, ev)
	e.mu.Unlock()
}

// wait polls until an event matches.
func (e *events) wait(t *testing.T, what string, match func(drivers.Event) bool) drivers.Event {
	t.Helper()
	var found drivers.Event
	testenv.Eventually(t, 20*time.Second, func() error {
		e.mu.Lock()
		defer e.mu.Unlock()
		for _, ev := range e.evs {
			if match(ev) {
				found = ev
				return nil
			}
		}
		return fmt.Errorf("no %s event among %d: %+v", what, len(e.evs), e.evs)
	})
	return found
}

// watch runs d.Watch until the test ends (or stop is called), checking
// that it returns nil when its ctx ends.
func watch(t *testing.T, d *Driver, evs *events) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Watch(ctx, evs.emit) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Watch returned %v after its ctx ended", err)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("Watch did not return after its ctx ended")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func lxcCLI(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command("lxc", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("lxc %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// TestManualStopIsAnEvent: `lxc stop` run by hand, outside subbus, shows
// up in the native feed.
func TestManualStopIsAnEvent(t *testing.T) {
	d := requireLXD(t)
	cases := []struct {
		name string
		args []string
	}{
		{"Forced", []string{"stop", "--force"}},
		// A graceful stop: LXD asks init to halt and reports the shutdown.
		{"Graceful", []string{"stop", "--timeout", "30"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var evs events
			watch(t, d, &evs)
			name := launch(t, d, nil)
			evs.wait(t, "started", func(ev drivers.Event) bool {
				return ev.Instance == name && ev.Type == drivers.EventStarted && ev.State == drivers.StateRunning
			})
			waitConsole(t, d, name, "subbus-conformance "+name) // init has set its traps
			lxcCLI(t, append(c.args, name)...)
			ev := evs.wait(t, "stopped", func(ev drivers.Event) bool {
				return ev.Instance == name && ev.Type == drivers.EventStopped
			})
			if ev.State != drivers.StateStopped || ev.Time.IsZero() || ev.Details["action"] == "" {
				t.Errorf("stop event %+v: want state stopped, a time and the LXD action", ev)
			}
			t.Logf("lxc %s: LXD action %s", strings.Join(c.args, " "), ev.Details["action"])
		})
	}
}

// requireCLI skips (fails in CI) without the lxc command, which the lxd
// package ships alongside the daemon.
func requireCLI(t *testing.T) {
	t.Helper()
	_, err := exec.LookPath("lxc")
	testenv.Require(t, "the lxc command", err, "apt-get install lxd (it ships the lxc client)")
}

// TestRenameOutside: `lxc rename` is the old name vanishing and the new
// one appearing.
func TestRenameOutside(t *testing.T) {
	d := requireLXD(t)
	var evs events
	watch(t, d, &evs)
	old, renamed := randName("sbt"), randName("sbt")
	t.Cleanup(func() {
		for _, n := range []string{old, renamed} {
			_, _ = d.Delete(context.Background(), n, drivers.DeleteOptions{Force: true})
		}
	})
	lxcCLI(t, "init", testImage, old)
	lxcCLI(t, "rename", old, renamed)
	evs.wait(t, "vanished", func(ev drivers.Event) bool { return ev.Instance == old && ev.Type == drivers.EventVanished })
	evs.wait(t, "appeared", func(ev drivers.Event) bool {
		return ev.Instance == renamed && ev.Type == drivers.EventAppeared && ev.State == drivers.StateStopped
	})
}

// TestResyncAfterReconnect: what happens while nobody watches is reported
// by the resync of the next Watch, since LXD replays nothing.
func TestResyncAfterReconnect(t *testing.T) {
	d := requireLXD(t)
	running := launch(t, d, nil)
	var first events
	stop := watch(t, d, &first)
	// The first connection records the baseline; wait until it has.
	testenv.Eventually(t, 10*time.Second, func() error {
		d.watchMu.Lock()
		defer d.watchMu.Unlock()
		if d.known == nil {
			return errors.New("no baseline yet")
		}
		return nil
	})
	stop()

	// Changes while not watching: one instance appears, one stops.
	appeared := randName("sbt")
	t.Cleanup(func() { _, _ = d.Delete(context.Background(), appeared, drivers.DeleteOptions{Force: true}) })
	lxcCLI(t, "init", testImage, appeared)
	lxcCLI(t, "stop", "--force", running)

	var second events
	stopSecond := watch(t, d, &second)
	second.wait(t, "appeared", func(ev drivers.Event) bool {
		return ev.Instance == appeared && ev.Type == drivers.EventAppeared && ev.Details["resync"] == "true"
	})
	second.wait(t, "state changed", func(ev drivers.Event) bool {
		return ev.Instance == running && ev.Type == drivers.EventStateChanged && ev.State == drivers.StateStopped
	})

	// And one vanishes while not watching.
	stopSecond()
	lxcCLI(t, "delete", appeared)
	var third events
	watch(t, d, &third)
	third.wait(t, "vanished", func(ev drivers.Event) bool {
		return ev.Instance == appeared && ev.Type == drivers.EventVanished
	})
}

// TestExecOutputFilesRemoved: the recorded output files are deleted after
// they are read, so exec leaves nothing in the instance's logs.
func TestExecOutputFilesRemoved(t *testing.T) {
	d := requireLXD(t)
	name := launch(t, d, nil)
	var out, errb strings.Builder
	code, err := d.Exec(context.Background(), name, drivers.ExecRequest{
		Command: []string{"sh", "-c", `id -u; echo "$A" >&2; pwd`},
		Env:     map[string]string{"A": "from env"},
		WorkDir: "/tmp",
		User:    "nobody",
	}, &out, &errb)
	if err != nil || code != 0 {
		t.Fatalf("Exec = %d, %v (stderr %q)", code, err, errb.String())
	}
	if out.String() != "65534\n/tmp\n" || errb.String() != "from env\n" {
		t.Errorf("stdout %q stderr %q", out.String(), errb.String())
	}
	c, _, _ := d.conn()
	var logs []string
	if _, err := c.query(context.Background(), http.MethodGet, "/1.0/instances/"+name+"/logs", nil, &logs); err != nil {
		t.Fatal(err)
	}
	for _, l := range logs {
		if strings.Contains(l, "exec") {
			t.Errorf("exec output file left behind: %s", l)
		}
	}
	_, err = d.Exec(context.Background(), name, drivers.ExecRequest{Command: []string{"true"}, User: "nosuchuser"}, &out, &errb)
	if classify(err) != drivers.InvalidArgument {
		t.Errorf("exec as a missing user: %v, want invalid_argument", err)
	}
}

func TestHealth(t *testing.T) {
	d := requireLXD(t)
	h, err := d.Health(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !h.Healthy || h.Version == "" || h.APIVersion != "1.0" {
		t.Errorf("health %+v", h)
	}
	for _, k := range []string{"server", "api_extensions", "storage_pools", "host_cpus", "host_memory_mib"} {
		if h.Details[k] == "" || h.Details[k] == "0" {
			t.Errorf("health detail %s = %q", k, h.Details[k])
		}
	}
}

func TestUnreachable(t *testing.T) {
	d := New(Options{Socket: t.TempDir() + "/none.socket"})
	err := d.Connect(context.Background())
	if code := d.ErrorCode(err); code != drivers.Unavailable {
		t.Errorf("Connect to a missing socket: %v (code %s), want unavailable", err, code)
	}
	if _, err := d.List(context.Background()); classify(err) != drivers.Unavailable {
		t.Errorf("List before Connect: %v, want unavailable", err)
	}
}

func TestErrorCode(t *testing.T) {
	cases := []struct {
		err  error
		want drivers.Code
	}{
		{&apiError{Status: 404, Msg: "Instance not found"}, drivers.NotFound},
		{&apiError{Status: 409, Msg: "exists"}, drivers.AlreadyExists},
		{&apiError{Status: 400, Msg: "Instance is running"}, drivers.Conflict},
		{&apiError{Status: 400, Msg: "Invalid instance name"}, drivers.InvalidArgument},
		{&apiError{Status: 403, Msg: "not authorized"}, drivers.PermissionDenied},
		{&apiError{Status: 412, Msg: "ETag doesn't match"}, drivers.Conflict},
		{&apiError{Status: 500, Msg: "boom"}, drivers.Internal},
		{&opError{Desc: "Creating instance", Msg: `Add instance info to the database: This "instances" entry already exists`}, drivers.AlreadyExists},
		{&opError{Desc: "Starting instance", Msg: "The instance is already running"}, drivers.Conflict},
		{&opError{Desc: "x", Msg: "disk full"}, drivers.Internal},
		{&connError{Err: errors.New("dial unix: connection refused")}, drivers.Unavailable},
		{fmt.Errorf("wrapped: %w", context.DeadlineExceeded), drivers.Timeout},
		{drivers.Errorf(drivers.Unsupported, "nope"), drivers.Unsupported},
		{errors.New("other"), drivers.Internal},
	}
	for _, c := range cases {
		if got := classify(c.err); got != c.want {
			t.Errorf("classify(%v) = %s, want %s", c.err, got, c.want)
		}
	}
}

func TestFollower(t *testing.T) {
	var f follower
	steps := []struct {
		content string
		want    []string
	}{
		{"a\r\nb\r\npart", []string{"a", "b"}},
		{"a\r\nb\r\npartial\r\nc\n", []string{"partial", "c"}},
		{"a\r\nb\r\npartial\r\nc\n", nil},
		// the ring dropped its head: the tail already emitted is found again
		{"partial\r\nc\nd\n", []string{"d"}},
		// restarted: nothing emitted before is there
		{"new\n", []string{"new"}},
	}
	for i, s := range steps {
		got := f.next([]byte(s.content))
		if strings.Join(got, "|") != strings.Join(s.want, "|") {
			t.Errorf("step %d: %q, want %q", i, got, s.want)
		}
	}
}

func TestLimitsConfig(t *testing.T) {
	cases := []struct {
		in   drivers.ResourceLimits
		cfg  map[string]string
		back drivers.ResourceLimits
		code drivers.Code
	}{
		{drivers.ResourceLimits{CPUCores: 2, MemoryMB: 512, PIDs: 100},
			map[string]string{"limits.cpu": "2", "limits.cpu.allowance": "", "limits.memory": "512MiB", "limits.processes": "100"},
			drivers.ResourceLimits{CPUCores: 2, MemoryMB: 512, PIDs: 100}, 0},
		{drivers.ResourceLimits{CPUCores: 1.5},
			map[string]string{"limits.cpu": "2", "limits.cpu.allowance": "150ms/100ms"},
			drivers.ResourceLimits{CPUCores: 1.5}, 0},
		{drivers.ResourceLimits{DiskGB: 1}, nil, drivers.ResourceLimits{}, drivers.Unsupported},
		{drivers.ResourceLimits{NetworkMbps: 10}, nil, drivers.ResourceLimits{}, drivers.Unsupported},
	}
	for _, c := range cases {
		cfg, err := limitsConfig(c.in)
		if c.code != 0 {
			if classify(err) != c.code {
				t.Errorf("limitsConfig(%+v) = %v, want %s", c.in, err, c.code)
			}
			continue
		}
		if fmt.Sprint(cfg) != fmt.Sprint(c.cfg) {
			t.Errorf("limitsConfig(%+v) = %v, want %v", c.in, cfg, c.cfg)
		}
		if back := limitsOf(cfg); back != c.back {
			t.Errorf("limitsOf(%v) = %+v, want %+v", cfg, back, c.back)
		}
	}
	if got := limitsOf(map[string]string{"limits.cpu": "0-1,3", "limits.memory": "1GiB"}); got.CPUCores != 3 || got.MemoryMB != 1024 {
		t.Errorf("limitsOf(cpu set, 1GiB) = %+v", got)
	}
}

func TestLifecycleEventMapping(t *testing.T) {
	var le lifecycleEvent
	le.Type = "lifecycle"
	le.Timestamp = time.Unix(100, 0)
	le.Metadata.Action = "instance-snapshot-created"
	le.Metadata.Source = "/1.0/instances/web1/snapshots/s1?project=p"
	ev, ok := toEvent(le)
	if !ok || ev.Instance != "web1" || ev.Type != drivers.EventSnapshotCreated || ev.Details["snapshot"] != "s1" {
		t.Errorf("snapshot event: %+v %v", ev, ok)
	}
	le.Metadata.Action = "network-created"
	le.Metadata.Source = "/1.0/networks/br0"
	if _, ok := toEvent(le); ok {
		t.Errorf("a network event mapped to an instance event")
	}
}

// TestMetricsAll: one recursion=2 request samples every instance, with
// rates from the second sample on.
func TestMetricsAll(t *testing.T) {
	d := requireLXD(t)
	running := launch(t, d, nil)
	ctx := context.Background()
	first, err := d.MetricsAll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	u, ok := first[running]
	if !ok || u.MemoryMB <= 0 || u.Counters.CPUTimeNs == 0 || !u.Measured.Has(drivers.MeasureCPU|drivers.MeasureMemory) {
		t.Fatalf("MetricsAll[%s] = %+v (present %v)", running, u, ok)
	}
	// Busy the container, then sample again: CPU% comes from the delta.
	if _, err := d.Exec(ctx, running, drivers.ExecRequest{Command: []string{"sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"}}, io.Discard, io.Discard); err != nil {
		t.Fatal(err)
	}
	second, err := d.MetricsAll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if u2 := second[running]; u2.CPUPercent <= 0 || u2.Counters.CPUTimeNs <= u.Counters.CPUTimeNs {
		t.Errorf("second sample %+v after a busy loop, first %+v", u2, u)
	}
}
