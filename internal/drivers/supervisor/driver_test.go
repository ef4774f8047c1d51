package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/procfs"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/messages"
)

// events collects what a Watch emits.
type events struct {
	mu  sync.Mutex
	evs []drivers.Event
}

func (e *events) emit(ev drivers.Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.evs = append(e.evs, ev)
}

// count counts the events of a type for instance.
func (e *events) count(instance string, typ drivers.EventType) int {
	n := 0
	for _, ev := range e.evs { // called from wait's match, under e.mu
		if ev.Instance == instance && ev.Type == typ {
			n++
		}
	}
	return n
}

// countLocked is count for callers outside wait.
func (e *events) countLocked(instance string, typ drivers.EventType) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.count(instance, typ)
}

// wait polls until an event for instance matches.
func (e *events) wait(t *testing.T, what, instance string, match func(drivers.Event) bool) drivers.Event {
	t.Helper()
	var found drivers.Event
	testenv.Eventually(t, 20*time.Second, func() error {
		e.mu.Lock()
		defer e.mu.Unlock()
		for _, ev := range e.evs {
			if ev.Instance == instance && match(ev) {
				found = ev
				return nil
			}
		}
		var seen []string
		for _, ev := range e.evs {
			if ev.Instance == instance {
				seen = append(seen, fmt.Sprintf("%s(%s)", ev.Type, ev.Details["native_state"]))
			}
		}
		return fmt.Errorf("no %s event for %s; seen %v", what, instance, seen)
	})
	return found
}

// watch runs d.Watch until the test ends.
func watch(t *testing.T, d *Driver) *events {
	t.Helper()
	var got events
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Watch(ctx, got.emit) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch: %v", err)
		}
	})
	return &got
}

func supervisorctl(t *testing.T, args ...string) {
	t.Helper()
	conf := filepath.Join(setupDir(), "supervisord.conf")
	out, err := exec.Command("supervisorctl", append([]string{"-c", conf}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("supervisorctl %v: %v: %s", args, err, out)
	}
}

// A hostile environment and command line cannot add a line to the program
// file, and supervisord hands every value to the program unchanged.
func TestHostileValuesReachTheProgramVerbatim(t *testing.T) {
	o := testOptions(t)
	d, ctx := newDriver(t, o)
	name := uniqueName("sbsv-hostile")
	tm, want := hostileTemplate(name)
	cleanupDelete(t, d, name)
	if _, err := d.Create(ctx, tm); err != nil {
		t.Fatalf("Create: %v", err)
	}
	data, err := os.ReadFile(d.programFile(name))
	if err != nil {
		t.Fatal(err)
	}
	checkProgramFile(t, string(data), name)
	cs, err := d.rpc.getAllConfigInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		if c.Name == "evil" || strings.Contains(c.Name, "evil") {
			t.Errorf("supervisord has a program %q", c.Name)
		}
	}
	if _, err := d.Start(ctx, name); err != nil {
		t.Fatalf("Start: %v", err)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		var got []string
		err := d.Logs(ctx, name, drivers.LogOptions{Lines: 100}, func(l drivers.LogLine) error {
			got = append(got, l.Line)
			return nil
		})
		if err != nil {
			return err
		}
		if !slices.Equal(got, want) {
			return fmt.Errorf("program printed\n%q\nwant\n%q", got, want)
		}
		return nil
	})

	// Rejected values never reach the programs directory.
	bad := tm
	bad.Name = uniqueName("sbsv-evil")
	bad.Environment = map[string]string{"X": "1\n[program:evil]\ncommand=/bin/false"}
	_, err = d.Create(ctx, bad)
	wantCode(t, "Create with a newline in the environment", err, drivers.InvalidArgument)
	if _, err := os.Stat(d.programFile(bad.Name)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a rejected create left %s behind (%v)", d.programFile(bad.Name), err)
	}

	// A definition supervisord itself rejects (an unknown user) is
	// invalid_argument, and nothing is left behind.
	bad = tm
	bad.Name = uniqueName("sbsv-nouser")
	bad.User = "subbus-no-such-user"
	_, err = d.Create(ctx, bad)
	wantCode(t, "Create with an unknown user", err, drivers.InvalidArgument)
	if _, err := os.Stat(d.programFile(bad.Name)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a rejected create left %s behind (%v)", d.programFile(bad.Name), err)
	}
	if _, err := d.Get(ctx, bad.Name); classify(err) != drivers.NotFound {
		t.Errorf("Get after a rejected create: %v, want not_found", err)
	}
}

// A program that keeps failing reaches FATAL, Start says so, the feed
// emits failed, and health lists it as an issue.
func TestCrashingProgramReachesFatal(t *testing.T) {
	o := testOptions(t)
	o.StartRetries = 0
	d, ctx := newDriver(t, o)
	got := watch(t, d)
	name := uniqueName("sbsv-crash")
	cleanupDelete(t, d, name)
	_, err := d.Create(ctx, drivers.InstanceTemplate{Name: name, Command: []string{"/bin/sh", "-c", "echo boom >&2; exit 3"}})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	got.wait(t, "appeared", name, func(ev drivers.Event) bool { return ev.Type == drivers.EventAppeared })
	began := time.Now()
	_, err = d.Start(ctx, name)
	// At the first failed attempt, not after supervisord's retries: code
	// exited, with the program's last lines.
	if classify(err) != drivers.Exited || !strings.Contains(err.Error(), "exited before start_secs") || !strings.Contains(err.Error(), "[stderr] boom") {
		t.Fatalf("Start of a crashing program: %v (code %s), want exited with its output", err, classify(err))
	}
	if took := time.Since(began); took > 3*time.Second {
		t.Errorf("Start of a crashing program answered after %v", took)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		inst, err := d.Get(ctx, name)
		if err == nil && (inst.State != drivers.StateError || inst.NativeState != "FATAL") {
			err = fmt.Errorf("Get: %s (%s), want error (FATAL)", inst.State, inst.NativeState)
		}
		return err
	})
	ev := got.wait(t, "failed", name, func(ev drivers.Event) bool {
		return ev.Type == drivers.EventFailed && ev.Details["native_state"] == "FATAL"
	})
	if ev.State != drivers.StateError || ev.Err == nil {
		t.Errorf("failed event %+v: want state error and an error", ev)
	}
	h, err := d.Health(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(h.Issues, func(s string) bool { return strings.Contains(s, name) && strings.Contains(s, "FATAL") }) {
		t.Errorf("health issues %q do not list %s as FATAL", h.Issues, name)
	}
	if h.Instances[drivers.StateError] == 0 {
		t.Errorf("health counts %v have no error instance", h.Instances)
	}
	var lines []drivers.LogLine
	if err := d.Logs(ctx, name, drivers.LogOptions{Lines: 5}, func(l drivers.LogLine) error { lines = append(lines, l); return nil }); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(lines, drivers.LogLine{Stream: "stderr", Line: "boom"}) {
		t.Errorf("logs %+v lack stderr line boom", lines)
	}
}

// Changes made with supervisorctl by hand, and a crash, become events.
func TestChangesMadeOutsideBecomeEvents(t *testing.T) {
	o := testOptions(t)
	d, ctx := newDriver(t, o)
	got := watch(t, d)
	name := uniqueName("sbsv-outside")
	cleanupDelete(t, d, name)
	h := harness{opts: o}
	if _, err := d.Create(ctx, h.Template(name)); err != nil {
		t.Fatalf("Create: %v", err)
	}
	got.wait(t, "appeared", name, func(ev drivers.Event) bool { return ev.Type == drivers.EventAppeared })
	if _, err := d.Start(ctx, name); err != nil {
		t.Fatalf("Start: %v", err)
	}
	got.wait(t, "started", name, func(ev drivers.Event) bool { return ev.Type == drivers.EventStarted })

	supervisorctl(t, "stop", name)
	got.wait(t, "stopped", name, func(ev drivers.Event) bool {
		return ev.Type == drivers.EventStopped && ev.State == drivers.StateStopped
	})

	supervisorctl(t, "start", name)
	inst, err := d.Get(ctx, name)
	if err != nil || inst.State != drivers.StateRunning {
		t.Fatalf("after supervisorctl start: %+v, %v", inst, err)
	}
	got.wait(t, "second started", name, func(ev drivers.Event) bool {
		return ev.Type == drivers.EventStarted && got.count(name, drivers.EventStarted) >= 2
	})
	// A crash: supervisord restarts the program (autorestart=unexpected).
	p, err := d.rpc.getProcessInfo(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(p.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ev := got.wait(t, "failed", name, func(ev drivers.Event) bool { return ev.Type == drivers.EventFailed })
	if ev.Err == nil || ev.Details["from"] != "RUNNING" {
		t.Errorf("crash event %+v: want an error, from RUNNING", ev)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		i, err := d.Get(ctx, name)
		if err == nil && i.State != drivers.StateRunning {
			err = fmt.Errorf("state %s after the crash, want running again", i.State)
		}
		return err
	})

	// Removed by hand: vanished.
	supervisorctl(t, "stop", name)
	supervisorctl(t, "remove", name)
	got.wait(t, "vanished", name, func(ev drivers.Event) bool { return ev.Type == drivers.EventVanished })
}

// Programs defined in supervisord's own configuration are listed, started
// and stopped, but delete and clone refuse them.
func TestUnmanagedProgram(t *testing.T) {
	o := testOptions(t)
	d, ctx := newDriver(t, o)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if _, err := d.Start(ctx, nativeProgram); err != nil {
			t.Errorf("restarting %s: %v", nativeProgram, err)
		}
	})
	list, err := d.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(list, func(i drivers.Instance) bool { return i.Name == nativeProgram })
	if i < 0 {
		t.Fatalf("List does not show %s: %+v", nativeProgram, list)
	}
	if list[i].Managed {
		t.Errorf("%s is listed as managed", nativeProgram)
	}
	for _, force := range []bool{false, true} {
		_, err = d.Delete(ctx, nativeProgram, drivers.DeleteOptions{Force: force})
		wantCode(t, fmt.Sprintf("Delete(force=%v) of a program defined in supervisord.conf", force), err, drivers.Conflict)
		if !strings.Contains(err.Error(), "not created by subbus") {
			t.Errorf("Delete error %q does not say why", err)
		}
	}
	_, err = d.Clone(ctx, nativeProgram, uniqueName("sbsv-clone"))
	wantCode(t, "Clone of a program defined in supervisord.conf", err, drivers.Conflict)

	if _, err := d.Start(ctx, nativeProgram); err != nil {
		t.Fatalf("Start: %v", err)
	}
	changed, err := d.Stop(ctx, nativeProgram, drivers.StopOptions{Timeout: 5 * time.Second})
	if err != nil || !changed {
		t.Fatalf("Stop: changed=%v err=%v", changed, err)
	}
	changed, err = d.Start(ctx, nativeProgram)
	if err != nil || !changed {
		t.Fatalf("Start: changed=%v err=%v", changed, err)
	}
}

// The HTTP transport with basic auth works; a wrong password is
// permission_denied.
func TestHTTPTransport(t *testing.T) {
	o := testOptions(t)
	o.URL = httpURL()
	o.Username, o.Password = httpUser, httpPassword
	d, ctx := newDriver(t, o)
	h, err := d.Health(ctx)
	if err != nil {
		t.Fatalf("Health over HTTP: %v", err)
	}
	if !strings.HasPrefix(h.Version, "4.") || h.APIVersion == "" {
		t.Errorf("Health: version %q api %q", h.Version, h.APIVersion)
	}
	if _, err := d.Get(ctx, nativeProgram); err != nil {
		t.Errorf("Get over HTTP: %v", err)
	}
	for _, c := range []struct{ user, password string }{{httpUser, "wrong"}, {"", ""}} {
		o.Username, o.Password = c.user, c.password
		bad, err := New(o)
		if err != nil {
			t.Fatal(err)
		}
		wantCode(t, fmt.Sprintf("Connect as %q/%q", c.user, c.password), bad.Connect(ctx), drivers.PermissionDenied)
	}
}

// throwaway is a supervisord the test starts on its own socket.
type throwaway struct {
	conf string
	cmd  *exec.Cmd
}

func startThrowaway(t *testing.T, dir string) *throwaway {
	t.Helper()
	s := &throwaway{conf: filepath.Join(dir, "supervisord.conf")}
	if _, err := os.Stat(s.conf); err != nil {
		if err := os.MkdirAll(filepath.Join(dir, "programs"), 0o755); err != nil {
			t.Fatal(err)
		}
		conf := fmt.Sprintf(`[unix_http_server]
file=%[1]s/s.sock
[supervisord]
logfile=%[1]s/supervisord.log
pidfile=%[1]s/supervisord.pid
childlogdir=%[1]s
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[include]
files = %[1]s/programs/*.conf
`, dir)
		if err := os.WriteFile(s.conf, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s.cmd = exec.Command("supervisord", "-n", "-c", s.conf)
	// Only a missing supervisord binary gets here (testOptions already
	// found the test daemon): a skip, and a failure in CI.
	testenv.Require(t, "the supervisord binary", s.cmd.Start(), howToStart)
	t.Cleanup(s.stop)
	return s
}

func (s *throwaway) stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	_ = s.cmd.Wait()
	s.cmd = nil
}

// A supervisord that is down gives unavailable and trips the manager's
// breaker; once it is back the breaker closes.
func TestDownSupervisordTripsBreaker(t *testing.T) {
	testOptions(t) // skips when supervisord is not installed/set up
	dir := t.TempDir()
	sv := startThrowaway(t, dir)
	o := DefaultOptions()
	o.URL = "unix://" + filepath.Join(dir, "s.sock")
	o.ProgramsDir = filepath.Join(dir, "programs")
	o.LogDir = dir
	d, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return d.Connect(ctx)
	})
	m := manager.New(d, manager.Options{
		BreakerFailures: 2, BreakerOpenTimeout: 300 * time.Millisecond,
		RetryAttempts: 1, CacheTTL: -1,
	})
	t.Cleanup(func() { _ = m.Close() })
	var mu sync.Mutex
	var breaker []drivers.EventType
	unsub := m.Subscribe(func(ev messages.Event) {
		mu.Lock()
		defer mu.Unlock()
		breaker = append(breaker, ev.Type)
	})
	t.Cleanup(unsub)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := m.Connect(ctx); err != nil {
		t.Fatalf("Connect: %v", err)
	}
	if _, err := m.List(ctx); err != nil {
		t.Fatalf("List: %v", err)
	}

	sv.stop()
	for i := 0; i < 2; i++ {
		_, err := m.List(ctx)
		if !errors.Is(err, drivers.ErrUnavailable) {
			t.Fatalf("List with supervisord down: %v (code %s), want unavailable", err, classify(err))
		}
	}
	if s := m.BreakerState(); s != "open" {
		t.Fatalf("breaker %s after 2 unavailable calls, want open", s)
	}
	_, err = m.Health(ctx)
	if !errors.Is(err, drivers.ErrUnavailable) {
		t.Errorf("Health with the breaker open: %v, want unavailable", err)
	}

	startThrowaway(t, dir)
	testenv.Eventually(t, 20*time.Second, func() error {
		_, err := m.List(ctx)
		if err == nil && m.BreakerState() != "closed" {
			err = fmt.Errorf("breaker %s", m.BreakerState())
		}
		return err
	})
	mu.Lock()
	defer mu.Unlock()
	if !slices.Contains(breaker, drivers.EventBreakerOpened) || !slices.Contains(breaker, drivers.EventBreakerClosed) {
		t.Errorf("breaker events %v, want breaker_opened and breaker_closed", breaker)
	}
}

// Logs holding terminal escapes (control characters XML forbids) and
// multi-byte characters split by a tail's start are read all the same.
func TestLogsWithControlAndMultibyteCharacters(t *testing.T) {
	o := testOptions(t)
	d, ctx := newDriver(t, o)
	name := uniqueName("sbsv-utf8")
	cleanupDelete(t, d, name)
	// 70000 bytes of "é" then a line with escapes: the 64 KiB tail starts
	// at an odd offset, inside a character.
	script := `awk 'BEGIN { for (i = 0; i < 35000; i++) printf "\303\251"; printf "\n\033[1mlast\033[0m line\n" }'; ` +
		`while :; do printf 'tick \303\251 \033[0m\n'; sleep 0.3; done`
	if _, err := d.Create(ctx, drivers.InstanceTemplate{Name: name, Command: []string{"/bin/sh", "-c", script}}); err != nil {
		t.Fatalf("Create: %v", err)
	}
	if _, err := d.Start(ctx, name); err != nil {
		t.Fatalf("Start: %v", err)
	}
	long := strings.Repeat("é", 35000)
	testenv.Eventually(t, 10*time.Second, func() error {
		var got []string
		err := d.Logs(ctx, name, drivers.LogOptions{Lines: 1000}, func(l drivers.LogLine) error {
			got = append(got, l.Line)
			return nil
		})
		if err != nil {
			return err
		}
		if len(got) < 3 || got[0] != long || got[1] != "\uFFFD[1mlast\uFFFD[0m line" {
			return fmt.Errorf("%d lines; first two %.40q", len(got), got[:min(2, len(got))])
		}
		return nil
	})
	var got []drivers.LogLine
	if err := d.Logs(ctx, name, drivers.LogOptions{Lines: 1}, func(l drivers.LogLine) error { got = append(got, l); return nil }); err != nil {
		t.Fatalf("Logs(Lines: 1): %v", err)
	}
	if len(got) != 1 || got[0].Line != "tick é \uFFFD[0m" {
		t.Errorf("Logs(Lines: 1) = %+v", got)
	}
	fctx, cancel := context.WithCancel(ctx)
	var mu sync.Mutex
	var followed []string
	done := make(chan error, 1)
	go func() {
		done <- d.Logs(fctx, name, drivers.LogOptions{Lines: 1, Follow: true}, func(l drivers.LogLine) error {
			mu.Lock()
			defer mu.Unlock()
			followed = append(followed, l.Line)
			return nil
		})
	}()
	testenv.Eventually(t, 10*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(followed) < 4 {
			return fmt.Errorf("%d lines followed", len(followed))
		}
		for _, l := range followed {
			if l != "tick é \uFFFD[0m" {
				return fmt.Errorf("followed line %q", l)
			}
		}
		return nil
	})
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Logs(Follow): %v", err)
	}
}

// Stop escalates to SIGKILL by itself: a program that ignores SIGTERM,
// with supervisord's own escalation (stopwaitsecs) far away, is stopped
// within the stop timeout, or at once with Force, and its processes are
// gone, children included.
func TestStopEscalatesToKill(t *testing.T) {
	o := testOptions(t)
	o.StopWaitSecs = 30 // supervisord would wait 30 s before its own SIGKILL
	d, ctx := newDriver(t, o)
	// The child sleep ignores TERM too (an ignored signal stays ignored
	// across exec) and outlives the shell unless its group is killed.
	const script = `trap '' TERM; sleep 600 & while :; do sleep 1; done`
	for _, c := range []struct {
		name   string
		opts   drivers.StopOptions
		within time.Duration
	}{
		{"timeout", drivers.StopOptions{Timeout: time.Second}, 3 * time.Second},
		{"force", drivers.StopOptions{Force: true, Timeout: 20 * time.Second}, 1500 * time.Millisecond},
	} {
		t.Run(c.name, func(t *testing.T) {
			name := uniqueName("sbsv-noterm")
			cleanupDelete(t, d, name)
			if _, err := d.Create(ctx, drivers.InstanceTemplate{Name: name, Command: []string{"/bin/sh", "-c", script}}); err != nil {
				t.Fatalf("Create: %v", err)
			}
			if _, err := d.Start(ctx, name); err != nil {
				t.Fatalf("Start: %v", err)
			}
			p, err := d.rpc.getProcessInfo(ctx, name)
			if err != nil || p.PID <= 0 {
				t.Fatalf("process info %+v, %v", p, err)
			}
			var group []int
			testenv.Eventually(t, 5*time.Second, func() error {
				if group = processGroup(p.PID); len(group) < 3 {
					return fmt.Errorf("process group %d is %v, want the shell and two sleeps", p.PID, group)
				}
				return nil
			})
			begin := time.Now()
			changed, err := d.Stop(ctx, name, c.opts)
			took := time.Since(begin)
			if err != nil || !changed {
				t.Fatalf("Stop: changed=%v err=%v", changed, err)
			}
			if took > c.within {
				t.Errorf("Stop took %v, want under %v", took, c.within)
			}
			inst, err := d.Get(ctx, name)
			if err != nil || inst.State != drivers.StateStopped {
				t.Errorf("after Stop: %+v, %v", inst, err)
			}
			if left := processGroup(p.PID); len(left) > 0 {
				t.Errorf("processes %v of the program are still there after Stop", left)
			}
		})
	}
}

// processGroup lists the live (not zombie) processes of process group pgid.
func processGroup(pgid int) []int {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	var pids []int
	for _, dir := range dirs {
		pid, err := strconv.Atoi(filepath.Base(dir))
		if err != nil {
			continue
		}
		if s, err := procfs.ReadStat(pid); err == nil && s.PGrp == pgid && s.State != 'Z' {
			pids = append(pids, pid)
		}
	}
	return pids
}

// A restart made through subbus (stop then start, under the manager's
// lock) is not a crash: the feed sees a new pid without a stop in between,
// and used to report "failed ... exited without being stopped and
// supervisord restarted it" for every restart. A crash right after is
// still one.
func TestRestartThroughSubbusIsNotACrash(t *testing.T) {
	o := testOptions(t)
	d, ctx := newDriver(t, o)
	got := watch(t, d)
	m := manager.New(d, manager.Options{CacheTTL: -1})
	if err := m.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	var mu sync.Mutex
	var published []messages.Event
	m.Subscribe(func(ev messages.Event) { mu.Lock(); published = append(published, ev); mu.Unlock() })
	name := uniqueName("sbsv-restart")
	cleanupDelete(t, d, name)
	t.Cleanup(func() { _, _ = d.Stop(context.Background(), name, drivers.StopOptions{Force: true}) })
	if _, err := m.Create(ctx, harness{opts: o}.Template(name)); err != nil {
		t.Fatalf("Create: %v", err)
	}
	if _, err := m.Start(ctx, name); err != nil {
		t.Fatalf("Start: %v", err)
	}
	got.wait(t, "started", name, func(ev drivers.Event) bool { return ev.Type == drivers.EventStarted })
	for i := range 3 {
		before := got.countLocked(name, drivers.EventStarted)
		if err := m.Restart(ctx, name, drivers.StopOptions{Timeout: 5 * time.Second}); err != nil {
			t.Fatalf("Restart %d: %v", i, err)
		}
		// The feed has seen the new process once it reports it started.
		got.wait(t, "started after restart", name, func(ev drivers.Event) bool {
			return ev.Type == drivers.EventStarted && got.count(name, drivers.EventStarted) > before
		})
	}
	got.mu.Lock()
	for _, ev := range got.evs {
		if ev.Instance == name && ev.Type == drivers.EventFailed {
			t.Errorf("restart through subbus seen as %+v", ev)
		}
	}
	got.mu.Unlock()
	mu.Lock()
	restarted := 0
	for _, ev := range published {
		if ev.Instance == name && ev.Type == drivers.EventFailed {
			t.Errorf("manager published %+v for a restart", ev)
		}
		if ev.Instance == name && ev.Type == drivers.EventRestarted {
			restarted++
		}
	}
	mu.Unlock()
	if restarted != 3 {
		t.Errorf("%d restarted events, want 3", restarted)
	}
	// A crash is still a crash.
	p, err := d.rpc.getProcessInfo(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(p.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	got.wait(t, "failed after a crash", name, func(ev drivers.Event) bool { return ev.Type == drivers.EventFailed })
}

// create --image X -- ARGS: the command is the whole command line on every
// driver; --image is optional with a command, and must name its program.
func TestCommandIsTheWholeCommandLine(t *testing.T) {
	o := testOptions(t)
	d, ctx := newDriver(t, o)
	cases := []struct {
		desc string
		tmpl drivers.InstanceTemplate
		code drivers.Code // 0: created
	}{
		{"command only", drivers.InstanceTemplate{Command: []string{"sleep", "30"}}, 0},
		{"same executable by PATH", drivers.InstanceTemplate{BaseImage: "/bin/sh", Command: []string{"sh", "-c", "sleep 30"}}, 0},
		{"arguments meant for the image", drivers.InstanceTemplate{BaseImage: "/bin/sh", Command: []string{"-c", "sleep 30"}}, drivers.InvalidArgument},
		{"another program", drivers.InstanceTemplate{BaseImage: "/bin/true", Command: []string{"sleep", "30"}}, drivers.InvalidArgument},
	}
	for _, c := range cases {
		t.Run(c.desc, func(t *testing.T) {
			c.tmpl.Name = uniqueName("sbsv-cmd")
			cleanupDelete(t, d, c.tmpl.Name)
			_, err := d.Create(ctx, c.tmpl)
			if c.code == 0 {
				if err != nil {
					t.Fatalf("Create: %v", err)
				}
				return
			}
			wantCode(t, "Create", err, c.code)
			if _, err := d.Get(ctx, c.tmpl.Name); err == nil {
				t.Errorf("a refused create left %s behind", c.tmpl.Name)
			}
		})
	}
}

// With supervisord's retries (start_retries 3, about 6 s until FATAL),
// Start still answers exited at the first failed attempt, naming the
// retries, with the program's last lines (a program that exits 0 before
// start_secs failed to start too, for supervisord).
func TestStartOfAFailingProgramAnswersAtOnce(t *testing.T) {
	o := testOptions(t)
	o.StartRetries = 3
	d, ctx := newDriver(t, o)
	cases := []struct {
		name    string
		command []string
		says    []string
	}{
		{"crash", []string{"/bin/sh", "-c", "echo 'config missing' >&2; exit 2"}, []string{"BACKOFF", "[stderr] config missing"}},
		{"quick-success", []string{"/bin/sh", "-c", "echo done"}, []string{"exited before start_secs", "[stdout] done"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			name := uniqueName("sbsv-" + c.name)
			cleanupDelete(t, d, name)
			if _, err := d.Create(ctx, drivers.InstanceTemplate{Name: name, Command: c.command}); err != nil {
				t.Fatalf("Create: %v", err)
			}
			began := time.Now()
			_, err := d.Start(ctx, name)
			if classify(err) != drivers.Exited {
				t.Fatalf("Start: %v (code %s), want exited", err, classify(err))
			}
			if took := time.Since(began); took > 3*time.Second {
				t.Errorf("Start answered after %v, want at the first failed attempt", took)
			}
			for _, s := range c.says {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
		})
	}
}
