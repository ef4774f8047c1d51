package process

import (
	"context"
	"encoding/json"
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

	"github.com/subbus/subbus/internal/config"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/procfs"
	"github.com/subbus/subbus/internal/testenv"
)

const settle = 10 * time.Second

func tctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// newManager connects a manager over a new driver on dir; it is closed
// (without stopping instances) at the end of the test unless closed before.
func newManager(t *testing.T, o Options) (*manager.Manager, *Driver) {
	t.Helper()
	d := New(o)
	m := manager.New(d, manager.Options{Host: "test", StopTimeout: 5 * time.Second})
	if err := m.Connect(tctx(t)); err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m, d
}

// ticker is a template for an instance printing a numbered line every 100ms.
func ticker(name string) drivers.InstanceTemplate {
	return drivers.InstanceTemplate{
		Name: name, BaseImage: "sh",
		Command: []string{"sh", "-c", `trap 'exit 0' TERM; i=0; while :; do i=$((i+1)); echo "line $i"; sleep 0.1; done`},
	}
}

// killGroupAtEnd makes sure a test never leaves a process behind.
func killGroupAtEnd(t *testing.T, pid int) {
	t.Cleanup(func() { _ = syscall.Kill(-pid, syscall.SIGKILL) })
}

func pidOf(t *testing.T, d *Driver, name string) (int, uint64) {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	in, ok := d.insts[name]
	if !ok {
		t.Fatalf("%s not loaded", name)
	}
	return in.rec.Pid, in.rec.StartTicks
}

// lastLine returns the number in the last "line N" output of name.
func lastLine(ctx context.Context, m *manager.Manager, name string) (int, error) {
	var last string
	err := m.Logs(ctx, name, drivers.LogOptions{Lines: 1}, func(l drivers.LogLine) error { last = l.Line; return nil })
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(strings.TrimPrefix(last, "line "))
	if err != nil {
		return 0, fmt.Errorf("last line %q: %v", last, err)
	}
	return n, nil
}

// TestRestartReadopts is the worker-restart story: a manager over the
// driver starts instances and is closed; a new driver and manager on the
// same state directory re-adopt them, still running with the same pid,
// their logs still growing and readable, their metrics still sampled, and
// they can be stopped. A recorded pid whose start time differs is not
// adopted.
func TestRestartReadopts(t *testing.T) {
	dir := t.TempDir()
	o := testOptions(dir)
	m1, d1 := newManager(t, o)
	names := []string{"keep-a", "keep-b"}
	pids := map[string]int{}
	lines := map[string]int{}
	cpuBefore := map[string]uint64{}
	for _, n := range names {
		if _, err := m1.Create(tctx(t), ticker(n)); err != nil {
			t.Fatal(err)
		}
		if _, err := m1.Start(tctx(t), n); err != nil {
			t.Fatal(err)
		}
		pid, _ := pidOf(t, d1, n)
		killGroupAtEnd(t, pid)
		pids[n] = pid
	}
	for _, n := range names {
		testenv.Eventually(t, settle, func() error {
			l, err := lastLine(tctx(t), m1, n)
			if err == nil && l < 3 {
				err = fmt.Errorf("%s at line %d", n, l)
			}
			lines[n] = l
			return err
		})
		u, err := m1.Metrics(tctx(t), n)
		if err != nil {
			t.Fatal(err)
		}
		cpuBefore[n] = u.Counters.CPUTimeNs
	}
	// A third instance records a pid whose start time will not match.
	if _, err := m1.Create(tctx(t), ticker("reused")); err != nil {
		t.Fatal(err)
	}
	if err := m1.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for _, n := range names {
		if !aliveAny(pids[n]) {
			t.Fatalf("%s (pid %d) died when the manager closed", n, pids[n])
		}
	}
	// Fake the third record: "running" as this test process with a wrong
	// start time, as after a pid reuse.
	self, err := procfs.ReadStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	forgeRunning(t, dir, "reused", os.Getpid(), self.StartTicks+1, procfs.BootID())

	m2, d2 := newManager(t, o)
	for _, n := range names {
		inst, err := m2.Get(tctx(t), n)
		if err != nil {
			t.Fatal(err)
		}
		if inst.State != drivers.StateRunning {
			t.Fatalf("%s re-adopted as %s (%s), want running", n, inst.State, inst.NativeState)
		}
		if pid, _ := pidOf(t, d2, n); pid != pids[n] {
			t.Errorf("%s: pid %d after re-adoption, was %d", n, pid, pids[n])
		}
		// Logs keep growing and are readable through the new manager.
		testenv.Eventually(t, settle, func() error {
			l, err := lastLine(tctx(t), m2, n)
			if err == nil && l <= lines[n]+3 {
				err = fmt.Errorf("%s still at line %d (was %d before the restart)", n, l, lines[n])
			}
			return err
		})
		// Metrics continue: measured, memory in use, CPU time still
		// counted from the same process, and rates from a second sample.
		for i := 0; i < 2; i++ {
			u, err := m2.Metrics(tctx(t), n)
			if err != nil {
				t.Fatal(err)
			}
			if !u.Measured.Has(drivers.MeasureCPU|drivers.MeasureMemory) || u.MemoryMB <= 0 ||
				u.Counters.CPUTimeNs < cpuBefore[n] || u.CPUPercent < 0 {
				t.Errorf("%s: metrics after re-adoption %+v (cpu time before %d)", n, u, cpuBefore[n])
			}
		}
	}
	reused, err := m2.Get(tctx(t), "reused")
	if err != nil {
		t.Fatal(err)
	}
	if reused.State == drivers.StateRunning {
		t.Fatalf("a pid with another start time was adopted: %+v", reused)
	}
	if changed, err := m2.Stop(tctx(t), "reused", drivers.StopOptions{Force: true}); err != nil || changed {
		t.Fatalf("Stop of the not-adopted instance: changed=%v err=%v, want false, nil", changed, err)
	}

	// A re-adopted process (not a child of this driver) stops gracefully,
	// and one killed from outside is seen through /proc.
	if changed, err := m2.Stop(tctx(t), "keep-a", drivers.StopOptions{Timeout: 5 * time.Second}); err != nil || !changed {
		t.Fatalf("Stop of a re-adopted instance: changed=%v err=%v", changed, err)
	}
	if inst, _ := m2.Get(tctx(t), "keep-a"); inst.State != drivers.StateStopped {
		t.Errorf("keep-a after stop: %s", inst.State)
	}
	if aliveAny(pids["keep-a"]) {
		t.Errorf("keep-a (pid %d) still alive after Stop", pids["keep-a"])
	}
	if err := syscall.Kill(pids["keep-b"], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, settle, func() error {
		inst, err := m2.Get(tctx(t), "keep-b")
		if err == nil && inst.State == drivers.StateRunning {
			err = errors.New("keep-b still running after kill")
		}
		return err
	})
	// And it can be started again, as a child of the new driver.
	if _, err := m2.Start(tctx(t), "keep-b"); err != nil {
		t.Fatal(err)
	}
	pid, _ := pidOf(t, d2, "keep-b")
	killGroupAtEnd(t, pid)
	if _, err := m2.Delete(tctx(t), "keep-b", drivers.DeleteOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
}

// aliveAny reports whether pid exists and is not a zombie.
func aliveAny(pid int) bool {
	s, err := procfs.ReadStat(pid)
	return err == nil && s.State != 'Z'
}

// forgeRunning rewrites the state file of name to claim it runs as pid.
func forgeRunning(t *testing.T, dir, name string, pid int, ticks uint64, boot string) {
	t.Helper()
	p := filepath.Join(dir, "instances", name, "instance.json")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	r.State, r.Pid, r.StartTicks, r.BootID = drivers.StateRunning, pid, ticks, boot
	b, _ = json.Marshal(&r)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestPidReuseGuard: a recorded pid that now belongs to another process
// (another start time, or another boot) is never adopted, signalled or
// killed.
func TestPidReuseGuard(t *testing.T) {
	other := exec.Command("sleep", "30")
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = other.Process.Kill(); _ = other.Wait() })
	st, err := procfs.ReadStat(other.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		ticks uint64
		boot  string
		adopt bool
	}{
		{"same", st.StartTicks, procfs.BootID(), true},
		{"other-start", st.StartTicks + 1, procfs.BootID(), false},
		{"other-boot", st.StartTicks, "not-this-boot", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			o := testOptions(dir)
			d := New(o)
			if err := d.Connect(tctx(t)); err != nil {
				t.Fatal(err)
			}
			if _, err := d.Create(tctx(t), ticker("victim")); err != nil {
				t.Fatal(err)
			}
			_ = d.Close()
			forgeRunning(t, dir, "victim", other.Process.Pid, c.ticks, c.boot)
			d = New(o)
			if err := d.Connect(tctx(t)); err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			inst, err := d.Get(tctx(t), "victim")
			if err != nil {
				t.Fatal(err)
			}
			if got := inst.State == drivers.StateRunning; got != c.adopt {
				t.Fatalf("adopted=%v (%s, %q), want %v", got, inst.State, inst.NativeState, c.adopt)
			}
			if c.adopt {
				return // the "same" case shows the guard is not vacuous
			}
			if _, err := d.Stop(tctx(t), "victim", drivers.StopOptions{Force: true}); err != nil {
				t.Fatal(err)
			}
			if _, err := d.Delete(tctx(t), "victim", drivers.DeleteOptions{Force: true}); err != nil {
				t.Fatal(err)
			}
			if !aliveAny(other.Process.Pid) {
				t.Fatalf("the unrelated process %d was killed", other.Process.Pid)
			}
		})
	}
}

// TestLogRotationBound: output is rotated at log_max_bytes while it is
// written, keeping log_keep old files; tail and follow keep working across
// rotations.
func TestLogRotationBound(t *testing.T) {
	dir := t.TempDir()
	o := testOptions(dir)
	o.LogMaxBytes = 4 << 10
	o.LogKeep = 2
	m, d := newManager(t, o)
	tmpl := drivers.InstanceTemplate{Name: "chatty", BaseImage: "sh", Command: []string{"sh", "-c",
		`i=0; while :; do i=$((i+1)); echo "line $i ......................................................"; sleep 0.005; done`}}
	if _, err := m.Create(tctx(t), tmpl); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var followed []int
	fctx, stopFollow := context.WithCancel(tctx(t))
	defer stopFollow()
	followDone := make(chan error, 1)
	if _, err := m.Start(tctx(t), "chatty"); err != nil {
		t.Fatal(err)
	}
	pid, _ := pidOf(t, d, "chatty")
	killGroupAtEnd(t, pid)
	go func() {
		followDone <- m.Logs(fctx, "chatty", drivers.LogOptions{Lines: 1, Follow: true}, func(l drivers.LogLine) error {
			f := strings.Fields(l.Line)
			if len(f) >= 2 {
				if n, err := strconv.Atoi(f[1]); err == nil {
					mu.Lock()
					followed = append(followed, n)
					mu.Unlock()
				}
			}
			return nil
		})
	}()
	instDir := filepath.Join(dir, "instances", "chatty")
	// Wait for several rotations: generation 2 exists and the follower saw
	// lines from well past it.
	testenv.Eventually(t, 20*time.Second, func() error {
		if _, err := os.Stat(filepath.Join(instDir, "stdout.log.2")); err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		if len(followed) < 400 {
			return fmt.Errorf("followed %d lines", len(followed))
		}
		return nil
	})
	// Bound: never more than log_keep old files, each at most log_max_bytes.
	entries, _ := os.ReadDir(instDir)
	slack := int64(0)
	for _, e := range entries {
		if e.Name() == "stdout.log.3" {
			t.Errorf("more than log_keep=2 rotated files: %s", e.Name())
		}
		if fi, err := e.Info(); err == nil && strings.HasPrefix(e.Name(), "stdout.log") && fi.Size() > o.LogMaxBytes+slack {
			t.Errorf("%s is %d bytes, bound %d+%d", e.Name(), fi.Size(), o.LogMaxBytes, slack)
		}
	}
	// Tail across generations gives exactly the lines asked, consecutive.
	var tail []int
	err := m.Logs(tctx(t), "chatty", drivers.LogOptions{Lines: 80}, func(l drivers.LogLine) error {
		f := strings.Fields(l.Line)
		if len(f) >= 2 {
			n, _ := strconv.Atoi(f[1])
			tail = append(tail, n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(tail) != 80 {
		t.Fatalf("tail of 80 gave %d lines", len(tail))
	}
	stopFollow()
	if err := <-followDone; err != nil {
		t.Fatalf("follow: %v", err)
	}
	// Followed lines are increasing: rotation never replays old output.
	mu.Lock()
	defer mu.Unlock()
	for i := 1; i < len(followed); i++ {
		if followed[i] <= followed[i-1] {
			t.Fatalf("followed line %d after %d", followed[i], followed[i-1])
		}
	}
	if _, err := m.Delete(tctx(t), "chatty", drivers.DeleteOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
}

// TestExitEvents: a process that exits by itself or is killed from
// outside is reported in the native feed and in its state.
func TestExitEvents(t *testing.T) {
	d := New(testOptions(t.TempDir()))
	if err := d.Connect(tctx(t)); err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var mu sync.Mutex
	var evs []drivers.Event
	wctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- d.Watch(wctx, func(ev drivers.Event) { mu.Lock(); evs = append(evs, ev); mu.Unlock() })
	}()
	defer func() { stop(); <-done }()
	cases := []struct {
		name   string
		script string
		kill   bool
		typ    drivers.EventType
		state  drivers.State
		detail [2]string
	}{
		{"clean-exit", "exit 0", false, drivers.EventStopped, drivers.StateStopped, [2]string{"exit_code", "0"}},
		{"fail-exit", "exit 3", false, drivers.EventFailed, drivers.StateError, [2]string{"exit_code", "3"}},
		{"killed", "sleep 30", true, drivers.EventFailed, drivers.StateError, [2]string{"signal", "SIGKILL"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tmpl := drivers.InstanceTemplate{Name: c.name, BaseImage: "sh", Command: []string{"sh", "-c", "sleep 0.6; " + c.script}}
			if _, err := d.Create(tctx(t), tmpl); err != nil {
				t.Fatal(err)
			}
			if _, err := d.Start(tctx(t), c.name); err != nil {
				t.Fatal(err)
			}
			pid, _ := pidOf(t, d, c.name)
			killGroupAtEnd(t, pid)
			if c.kill {
				if err := exec.Command("kill", "-9", strconv.Itoa(pid)).Run(); err != nil {
					t.Fatal(err)
				}
			}
			testenv.Eventually(t, settle, func() error {
				mu.Lock()
				defer mu.Unlock()
				for _, ev := range evs {
					if ev.Instance == c.name && ev.Type == c.typ && ev.State == c.state && ev.Details[c.detail[0]] == c.detail[1] {
						return nil
					}
				}
				return fmt.Errorf("no %s/%s event for %s in %+v", c.typ, c.state, c.name, evs)
			})
			inst, err := d.Get(tctx(t), c.name)
			if err != nil || inst.State != c.state {
				t.Fatalf("state %s (%q) err %v, want %s", inst.State, inst.NativeState, err, c.state)
			}
			// The state is persisted.
			b, err := os.ReadFile(d.recordPath(c.name))
			if err != nil {
				t.Fatal(err)
			}
			var r record
			if err := json.Unmarshal(b, &r); err != nil || r.State != c.state || r.Pid != 0 {
				t.Errorf("state file: %+v (err %v), want state %s and no pid", r, err, c.state)
			}
		})
	}
}

// TestHostileNames: names that could escape the state directory are
// rejected by the driver itself, not only by the manager.
func TestHostileNames(t *testing.T) {
	dir := t.TempDir()
	d := New(testOptions(filepath.Join(dir, "state")))
	if err := d.Connect(tctx(t)); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a/b", "..", ".", "../escape", "a\nb", "", "x/../../y", "a\x00b", strings.Repeat("n", 64)} {
		tmpl := ticker(name)
		_, err := d.Create(tctx(t), tmpl)
		if classify(err) != drivers.InvalidArgument {
			t.Errorf("Create(%q): %v, want invalid_argument", name, err)
		}
		_, err = d.Get(tctx(t), name)
		if classify(err) != drivers.InvalidArgument {
			t.Errorf("Get(%q): %v, want invalid_argument", name, err)
		}
		_, err = d.Delete(tctx(t), name, drivers.DeleteOptions{Force: true})
		if classify(err) != drivers.InvalidArgument {
			t.Errorf("Delete(%q): %v, want invalid_argument", name, err)
		}
		_, err = d.Clone(tctx(t), "nope", name)
		if classify(err) != drivers.InvalidArgument {
			t.Errorf("Clone(nope, %q): %v, want invalid_argument", name, err)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("something was written outside the state directory: %v", entries)
	}
	_ = d.Close()
	// A stray directory with a bad name in the state dir is reported, not loaded.
	if err := os.Mkdir(filepath.Join(dir, "state", "instances", "bad name"), 0o700); err != nil {
		t.Fatal(err)
	}
	d2 := New(testOptions(filepath.Join(dir, "state")))
	if err := d2.Connect(tctx(t)); err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	h, err := d2.Health(tctx(t))
	if err != nil || len(h.Issues) == 0 {
		t.Errorf("Health = %+v, %v; want an issue about the stray directory", h, err)
	}
}

// TestCreateErrors: the executable is checked at create, naming it.
func TestCreateErrors(t *testing.T) {
	d := New(testOptions(t.TempDir()))
	if err := d.Connect(tctx(t)); err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	notExec := filepath.Join(t.TempDir(), "plain")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		tmpl drivers.InstanceTemplate
		code drivers.Code
		says string
	}{
		{"missing-path", drivers.InstanceTemplate{BaseImage: "subbus-no-such-binary"}, drivers.NotFound, "subbus-no-such-binary"},
		{"missing-abs", drivers.InstanceTemplate{BaseImage: "/nonexistent/bin/x"}, drivers.NotFound, "/nonexistent/bin/x"},
		{"not-executable", drivers.InstanceTemplate{BaseImage: notExec}, drivers.PermissionDenied, notExec},
		{"no-command", drivers.InstanceTemplate{}, drivers.InvalidArgument, "command"},
		{"relative-workdir", drivers.InstanceTemplate{BaseImage: "sh", WorkDir: "tmp"}, drivers.InvalidArgument, "workdir"},
		{"missing-workdir", drivers.InstanceTemplate{BaseImage: "sh", WorkDir: "/nonexistent-dir"}, drivers.NotFound, "workdir"},
		{"networks", drivers.InstanceTemplate{BaseImage: "sh", Networks: []drivers.NetworkConfig{{NetworkName: "n"}}}, drivers.Unsupported, "networks"},
		{"volumes", drivers.InstanceTemplate{BaseImage: "sh", Volumes: []drivers.Volume{{Source: "/a", Target: "/b"}}}, drivers.Unsupported, "volumes"},
		{"disk-limit", drivers.InstanceTemplate{BaseImage: "sh", Resources: drivers.ResourceLimits{DiskGB: 1}}, drivers.Unsupported, "disk"},
		{"missing-user", drivers.InstanceTemplate{BaseImage: "sh", User: "subbus-no-such-user"}, drivers.NotFound, "user"},
		// The command is the whole command line: words meant as arguments
		// to base_image, or a command naming another program, contradict it.
		{"args-for-image", drivers.InstanceTemplate{BaseImage: "/bin/sh", Command: []string{"-c", "true"}}, drivers.InvalidArgument, "different executables"},
		{"image-vs-command", drivers.InstanceTemplate{BaseImage: "/bin/true", Command: []string{"sleep", "1"}}, drivers.InvalidArgument, "different executables"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.tmpl.Name = c.name
			_, err := d.Create(tctx(t), c.tmpl)
			if classify(err) != c.code || !strings.Contains(err.Error(), c.says) {
				t.Fatalf("Create: %v (code %s), want %s naming %q", err, classify(err), c.code, c.says)
			}
			if _, err := d.Get(tctx(t), c.name); classify(err) != drivers.NotFound {
				t.Errorf("a failed create left %q behind: %v", c.name, err)
			}
		})
	}
	// An executable removed after create: Start is NotFound naming it.
	bin := filepath.Join(t.TempDir(), "prog")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Create(tctx(t), drivers.InstanceTemplate{Name: "gone", BaseImage: bin}); err != nil {
		t.Fatal(err)
	}
	_ = os.Remove(bin)
	_, err := d.Start(tctx(t), "gone")
	if classify(err) != drivers.NotFound || !strings.Contains(err.Error(), bin) {
		t.Fatalf("Start with the executable gone: %v, want not_found naming it", err)
	}
}

func TestErrorCode(t *testing.T) {
	d := New(Options{StateDir: t.TempDir(), DefaultUser: "root", AllowRoot: true})
	cases := []struct {
		err  error
		want drivers.Code
	}{
		{fmt.Errorf("x: %w", os.ErrNotExist), drivers.NotFound},
		{&os.PathError{Op: "open", Path: "/x", Err: syscall.ENOENT}, drivers.NotFound},
		{&os.PathError{Op: "open", Path: "/x", Err: syscall.EACCES}, drivers.PermissionDenied},
		{&os.PathError{Op: "kill", Path: "", Err: syscall.EPERM}, drivers.PermissionDenied},
		{&exec.Error{Name: "x", Err: exec.ErrNotFound}, drivers.NotFound},
		{syscall.ESRCH, drivers.NotFound},
		{syscall.EBUSY, drivers.Conflict},
		{syscall.ENOSPC, drivers.Unavailable},
		{context.DeadlineExceeded, drivers.Timeout},
		{errors.New("odd"), drivers.Internal},
		{drivers.Errorf(drivers.Conflict, "classified"), drivers.Conflict},
	}
	for _, c := range cases {
		// Classify is how the manager reads the code: Errorf's codes and
		// context errors first, then the driver's ErrorCode.
		if got := drivers.Classify(d, c.err); got != c.want {
			t.Errorf("Classify(%v) = %s, want %s", c.err, got, c.want)
		}
	}
}

func TestFromConfig(t *testing.T) {
	cfg, err := config.Parse([]byte("process:\n  state_dir: /tmp/x\n  log_max_bytes: 1024\n  log_keep: 5\n  stop_timeout: 3s\n"))
	if err != nil {
		t.Fatal(err)
	}
	dr, err := FromConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	o := dr.(*Driver).Options()
	if o.StateDir != "/tmp/x" || o.LogMaxBytes != 1024 || o.LogKeep != 5 || time.Duration(o.StopTimeout) != 3*time.Second {
		t.Errorf("options %+v", o)
	}
	for _, bad := range []struct{ yaml, key string }{
		{"process:\n  state_dri: /x\n", "state_dri"},
		{"process:\n  cgroups: maybe\n", "process.cgroups"},
	} {
		cfg, err := config.Parse([]byte(bad.yaml))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := FromConfig(cfg); err == nil || !strings.Contains(err.Error(), bad.key) {
			t.Errorf("FromConfig(%q) = %v, want an error naming %s", bad.yaml, err, bad.key)
		}
	}
	empty, _ := config.Parse(nil)
	dr, err = FromConfig(empty)
	if err != nil || dr.(*Driver).Options().StateDir != DefaultStateDir() {
		t.Errorf("defaults: %v %+v", err, dr)
	}
}

// TestCgroupLimits checks that limits land in the cgroup the processes
// (and exec'd commands) run in. It needs a writable cgroup file system.
func TestCgroupLimits(t *testing.T) {
	o := testOptions(t.TempDir())
	d := New(o)
	if d.cgroupsOnce() == nil {
		testenv.Require(t, "a writable cgroup file system", errors.New("not writable here"), "run as root on a host with cgroups")
	}
	m, d2 := newManager(t, o)
	tmpl := ticker("limited")
	tmpl.Resources = drivers.ResourceLimits{MemoryMB: 64, PIDs: 50}
	if _, err := m.Create(tctx(t), tmpl); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Start(tctx(t), "limited"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = m.Delete(context.Background(), "limited", drivers.DeleteOptions{Force: true}) })
	pid, _ := pidOf(t, d2, "limited")
	killGroupAtEnd(t, pid)
	d2.mu.Lock()
	id := d2.insts["limited"].rec.ID
	d2.mu.Unlock()
	cg := d2.cg
	memFile := "memory.limit_in_bytes"
	if cg.v2 {
		memFile = "memory.max"
	}
	read := func(ctl, file string) string {
		b, err := os.ReadFile(filepath.Join(cg.dir(ctl, id), file))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	if got := read("memory", memFile); got != strconv.Itoa(64<<20) {
		t.Errorf("%s = %s, want %d", memFile, got, 64<<20)
	}
	if !containsPid(cg.pids(id), pid) {
		t.Errorf("pid %d not in its cgroup (%v)", pid, cg.pids(id))
	}
	// Raising the limit on the running instance applies at once.
	if _, err := m.SetLimits(tctx(t), "limited", drivers.ResourceLimits{MemoryMB: 128, CPUCores: 0.5}); err != nil {
		t.Fatal(err)
	}
	if got := read("memory", memFile); got != strconv.Itoa(128<<20) {
		t.Errorf("%s = %s after SetLimits, want %d", memFile, got, 128<<20)
	}
	if cg.ctrls["cpu"] && !cg.v2 {
		if got := read("cpu", "cpu.cfs_quota_us"); got != "50000" {
			t.Errorf("cpu.cfs_quota_us = %s, want 50000", got)
		}
	}
	// Exec runs inside the instance's cgroup.
	res, err := m.Exec(tctx(t), "limited", drivers.ExecRequest{Command: []string{"cat", "/proc/self/cgroup"}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(res.Stdout), id) {
		t.Errorf("exec is not in the instance cgroup %s:\n%s", id, res.Stdout)
	}
	// Delete removes the cgroup.
	if _, err := m.Delete(tctx(t), "limited", drivers.DeleteOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(cg.dir("memory", id)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cgroup %s left after delete: %v", cg.dir("memory", id), err)
	}
	// Limits the driver cannot enforce are unsupported, naming the field.
	_, err = m.SetLimits(tctx(t), "nope", drivers.ResourceLimits{NetworkMbps: 10})
	if classify(err) != drivers.Unsupported && classify(err) != drivers.NotFound {
		t.Errorf("SetLimits(network): %v", err)
	}
	if _, err := m.Create(tctx(t), ticker("n2")); err != nil {
		t.Fatal(err)
	}
	_, err = m.SetLimits(tctx(t), "n2", drivers.ResourceLimits{NetworkMbps: 10})
	if classify(err) != drivers.Unsupported || !strings.Contains(err.Error(), "network_mbps") {
		t.Errorf("SetLimits(network_mbps): %v, want unsupported naming the field", err)
	}
}

func containsPid(l []int, p int) bool {
	for _, x := range l {
		if x == p {
			return true
		}
	}
	return false
}

// TestStateDirLock: two drivers never manage the same state directory at
// once; the second may connect once the first has closed.
func TestStateDirLock(t *testing.T) {
	o := testOptions(t.TempDir())
	d1 := New(o)
	if err := d1.Connect(tctx(t)); err != nil {
		t.Fatal(err)
	}
	d2 := New(o)
	err := d2.Connect(tctx(t))
	if classify(err) != drivers.Unavailable || !strings.Contains(err.Error(), strconv.Itoa(os.Getpid())) {
		t.Fatalf("second Connect: %v, want unavailable naming the holder's pid", err)
	}
	if err := d1.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d2.Connect(tctx(t)); err != nil {
		t.Fatalf("Connect after the first closed: %v", err)
	}
	_ = d2.Close()
}

// TestTailLargeFile: the tail of a file larger than one read chunk is
// exact, with and without an unfinished last line, across generations.
func TestTailLargeFile(t *testing.T) {
	d := New(testOptions(t.TempDir()))
	dir := d.instanceDir("big")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	var old, cur strings.Builder
	for i := 1; i <= 30000; i++ {
		fmt.Fprintf(&old, "old %d\n", i)
	}
	for i := 1; i <= 20000; i++ {
		fmt.Fprintf(&cur, "line %d\n", i)
	}
	cur.WriteString("partial")
	if err := os.WriteFile(d.logPath("big", "stdout", 1), []byte(old.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(d.logPath("big", "stdout", 0), []byte(cur.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	size := int64(cur.Len())
	cases := []struct {
		n        int
		complete bool
		first    string
		last     string
		offset   int64
	}{
		{5, false, "line 19997", "partial", size},
		{5, true, "line 19996", "line 20000", size - int64(len("partial"))},
		{20002, true, "old 29999", "line 20000", size - int64(len("partial"))},
		{60000, false, "old 1", "partial", size},
	}
	for _, c := range cases {
		st, err := d.tail("big", "stdout", c.n, c.complete)
		if err != nil {
			t.Fatal(err)
		}
		wantLen := c.n
		if c.n == 60000 {
			wantLen = 50001
		}
		if len(st.lines) != wantLen || st.lines[0].Line != c.first || st.lines[len(st.lines)-1].Line != c.last || st.offset != c.offset {
			t.Errorf("tail(%d, %v) = %d lines %q…%q offset %d; want %d lines %q…%q offset %d", c.n, c.complete,
				len(st.lines), st.lines[0].Line, st.lines[len(st.lines)-1].Line, st.offset, wantLen, c.first, c.last, c.offset)
		}
	}
}

// TestLimitsUnsupportedWithoutCgroups: with no usable cgroups, a template
// asking for limits is unsupported, naming why, and nothing is created.
func TestLimitsUnsupportedWithoutCgroups(t *testing.T) {
	o := testOptions(t.TempDir())
	o.Cgroups = "off"
	d := New(o)
	if err := d.Connect(tctx(t)); err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.Capabilities().Limits {
		t.Fatal("limits declared with cgroups off")
	}
	tmpl := ticker("limited")
	tmpl.Resources.MemoryMB = 64
	_, err := d.Create(tctx(t), tmpl)
	if classify(err) != drivers.Unsupported || !strings.Contains(err.Error(), "cgroup") {
		t.Fatalf("Create with limits: %v, want unsupported naming cgroups", err)
	}
	if _, err := d.Get(tctx(t), "limited"); classify(err) != drivers.NotFound {
		t.Fatalf("the failed create left an instance: %v", err)
	}
	h, err := d.Health(tctx(t))
	if err != nil || h.Details["cgroups"] != "unsupported" {
		t.Errorf("Health = %+v, %v; want details.cgroups=unsupported", h, err)
	}
}

// connected returns a connected driver on a fresh state directory.
func connected(t *testing.T) *Driver {
	t.Helper()
	d := New(testOptions(t.TempDir()))
	if err := d.Connect(tctx(t)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

// groupAlive reports whether any process of process group pgid is alive.
func groupAlive(pgid int) bool {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if s, err := procfs.ReadStat(pid); err == nil && s.PGrp == pgid && s.State != 'Z' {
			return true
		}
	}
	return false
}

// TestStopEscalates: a process that ignores SIGTERM is killed after the
// timeout, with its whole process group.
func TestStopEscalates(t *testing.T) {
	d := connected(t)
	tmpl := drivers.InstanceTemplate{Name: "stubborn", BaseImage: "sh",
		Command: []string{"sh", "-c", `trap '' TERM; echo trapped; while :; do sleep 0.1; done`}}
	if _, err := d.Create(tctx(t), tmpl); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Start(tctx(t), "stubborn"); err != nil {
		t.Fatal(err)
	}
	// Stop only once the shell ignores SIGTERM: on a loaded machine it may
	// not have run its trap yet when Start returns.
	testenv.Eventually(t, 10*time.Second, func() error {
		trapped := false
		err := d.Logs(tctx(t), "stubborn", drivers.LogOptions{Lines: 10}, func(l drivers.LogLine) error {
			trapped = trapped || l.Line == "trapped"
			return nil
		})
		if err == nil && !trapped {
			err = errors.New("the shell has not set its trap yet")
		}
		return err
	})
	pid, _ := pidOf(t, d, "stubborn")
	killGroupAtEnd(t, pid)
	began := time.Now()
	changed, err := d.Stop(tctx(t), "stubborn", drivers.StopOptions{Timeout: 300 * time.Millisecond})
	if err != nil || !changed {
		t.Fatalf("Stop: %v %v", changed, err)
	}
	if took := time.Since(began); took < 300*time.Millisecond {
		t.Errorf("Stop returned after %v, before the timeout: SIGTERM was not ignored?", took)
	}
	inst, _ := d.Get(tctx(t), "stubborn")
	if inst.State != drivers.StateStopped {
		t.Errorf("state %s (%s), want stopped", inst.State, inst.NativeState)
	}
	testenv.Eventually(t, settle, func() error { // SIGKILL takes effect asynchronously
		if groupAlive(pid) {
			return fmt.Errorf("process group %d still has live processes after Stop", pid)
		}
		return nil
	})
}

// TestExecCancel: when ctx ends, the exec'd command and its children are
// killed and Exec returns a timeout; a background child holding the
// output open does not hang Exec.
func TestExecCancel(t *testing.T) {
	d := connected(t)
	if _, err := d.Create(tctx(t), ticker("ex")); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Start(tctx(t), "ex"); err != nil {
		t.Fatal(err)
	}
	pid, _ := pidOf(t, d, "ex")
	killGroupAtEnd(t, pid)
	defer d.Delete(context.Background(), "ex", drivers.DeleteOptions{Force: true})

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var out strings.Builder
	began := time.Now()
	_, err := d.Exec(ctx, "ex", drivers.ExecRequest{Command: []string{"sh", "-c", "echo $$; sleep 30"}}, &out, &strings.Builder{})
	if classify(err) != drivers.Timeout {
		t.Fatalf("Exec past its deadline: %v, want timeout", err)
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Errorf("Exec took %v after its deadline", took)
	}
	execPid, _ := strconv.Atoi(strings.TrimSpace(out.String()))
	testenv.Eventually(t, settle, func() error {
		if execPid > 0 && groupAlive(execPid) {
			return fmt.Errorf("exec group %d still alive", execPid)
		}
		return nil
	})

	// A background child keeping stdout open: Exec returns after the
	// command exits (plus the wait delay), with its exit code.
	began = time.Now()
	code, err := d.Exec(tctx(t), "ex", drivers.ExecRequest{Command: []string{"sh", "-c", "sleep 30 & exit 7"}}, &strings.Builder{}, &strings.Builder{})
	if err != nil || code != 7 {
		t.Fatalf("Exec with a background child: code %d err %v, want 7", code, err)
	}
	if took := time.Since(began); took > execWaitDelay+5*time.Second {
		t.Errorf("Exec with a background child took %v", took)
	}
}

// TestConcurrentOperations hammers one instance with every operation at
// once, directly on the driver (no manager lock), for the race detector
// and for consistency: it ends in a state Get and the state file agree on.
func TestConcurrentOperations(t *testing.T) {
	d := connected(t)
	if _, err := d.Create(tctx(t), ticker("busy")); err != nil {
		t.Fatal(err)
	}
	ctx := tctx(t)
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 15; i++ {
				switch (w + i) % 5 {
				case 0:
					_, _ = d.Start(ctx, "busy")
				case 1:
					_, _ = d.Stop(ctx, "busy", drivers.StopOptions{Timeout: time.Second})
				case 2:
					_, _ = d.Metrics(ctx, "busy")
				case 3:
					_ = d.Logs(ctx, "busy", drivers.LogOptions{Lines: 3}, func(drivers.LogLine) error { return nil })
				case 4:
					_, _ = d.List(ctx)
					_, _ = d.Health(ctx)
				}
			}
		}(w)
	}
	wg.Wait()
	_, _ = d.Stop(ctx, "busy", drivers.StopOptions{Force: true})
	inst, err := d.Get(ctx, "busy")
	if err != nil || inst.State != drivers.StateStopped {
		t.Fatalf("after the storm: %+v %v, want stopped", inst, err)
	}
	b, _ := os.ReadFile(d.recordPath("busy"))
	var r record
	if err := json.Unmarshal(b, &r); err != nil || r.State != drivers.StateStopped || r.Pid != 0 {
		t.Errorf("state file after the storm: %+v %v", r, err)
	}
}

// TestHelperWorker is not a test: TestWorkerCrash runs the test binary
// with SUBBUS_PROCESS_HELPER_DIR set, and then this plays a worker that
// starts an instance and dies by SIGKILL without closing anything.
func TestHelperWorker(t *testing.T) {
	dir := os.Getenv("SUBBUS_PROCESS_HELPER_DIR")
	if dir == "" {
		t.Skip("helper process for TestWorkerCrash")
	}
	d := New(testOptions(dir))
	ctx := context.Background()
	if err := d.Connect(ctx); err != nil {
		fmt.Println("helper:", err)
		os.Exit(2)
	}
	if _, err := d.Create(ctx, ticker("survivor")); err != nil {
		fmt.Println("helper:", err)
		os.Exit(2)
	}
	if _, err := d.Start(ctx, "survivor"); err != nil {
		fmt.Println("helper:", err)
		os.Exit(2)
	}
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {}
}

// TestWorkerCrash: a worker process that dies (SIGKILL, no Close) leaves
// its instances running, their output held in their pipes while no worker
// runs; a new worker re-adopts them, loses none of their output and can
// stop them.
func TestWorkerCrash(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperWorker$", "-test.count=1")
	cmd.Env = append(os.Environ(), "SUBBUS_PROCESS_HELPER_DIR="+dir)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("helper worker: %v, want death by SIGKILL; output:\n%s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(dir, "instances", "survivor", "instance.json"))
	if err != nil {
		t.Fatal(err)
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil || r.State != drivers.StateRunning || r.Pid == 0 {
		t.Fatalf("state left by the dead worker: %+v %v", r, err)
	}
	killGroupAtEnd(t, r.Pid)
	if !procfs.Alive(r.Pid, r.StartTicks) {
		t.Fatalf("the instance (pid %d) died with its worker", r.Pid)
	}
	// While no worker runs, output waits in the pipe the instance holds
	// (it is not killed by EPIPE); 0.5 s of it must not be lost.
	time.Sleep(500 * time.Millisecond)
	if !procfs.Alive(r.Pid, r.StartTicks) {
		t.Fatalf("the instance (pid %d) died while no worker ran", r.Pid)
	}
	m, d := newManager(t, testOptions(dir))
	inst, err := m.Get(tctx(t), "survivor")
	if err != nil || inst.State != drivers.StateRunning {
		t.Fatalf("after the crash: %+v %v, want running", inst, err)
	}
	if pid, _ := pidOf(t, d, "survivor"); pid != r.Pid {
		t.Errorf("re-adopted pid %d, recorded %d", pid, r.Pid)
	}
	testenv.Eventually(t, settle, func() error {
		n, err := lastLine(tctx(t), m, "survivor")
		if err == nil && n <= 8 {
			err = fmt.Errorf("still at line %d", n)
		}
		return err
	})
	// Every line, from the first, is in the log exactly once: nothing
	// written while no worker ran was lost.
	b, err = os.ReadFile(filepath.Join(dir, "instances", "survivor", "stdout.log"))
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		if _, l = parseStamp(l); l != fmt.Sprintf("line %d", i+1) {
			want := fmt.Sprintf("line %d", i+1)
			t.Fatalf("log line %d is %q, want %q (output lost while no worker ran)", i+1, l, want)
		}
	}
	if changed, err := m.Stop(tctx(t), "survivor", drivers.StopOptions{Timeout: 5 * time.Second}); err != nil || !changed {
		t.Fatalf("Stop after re-adoption: %v %v", changed, err)
	}
	if procfs.Alive(r.Pid, r.StartTicks) {
		t.Errorf("pid %d alive after Stop", r.Pid)
	}
}

// TestCgroupV2Probe: a cgroup v2 file system is recognised by its
// cgroup.controllers; without the memory controller delegated (as on a
// hybrid host's unified mount) limits are unsupported.
func TestCgroupV2Probe(t *testing.T) {
	root := "/sys/fs/cgroup/unified"
	b, err := os.ReadFile(filepath.Join(root, "cgroup.controllers"))
	if err != nil {
		t.Skipf("no cgroup v2 mount at %s: %v", root, err)
	}
	if strings.Contains(string(b), "memory") {
		t.Skipf("%s offers memory; this test is for a v2 mount without it", root)
	}
	parent := "subbus-test-" + newID()
	t.Cleanup(func() { _ = syscall.Rmdir(filepath.Join(root, parent)) })
	o := testOptions(t.TempDir())
	o.setDefaults()
	o.CgroupRoot, o.CgroupParent = root, parent
	if cg := probeCgroups(o); cg != nil {
		t.Fatalf("limits offered on a v2 mount without memory: %+v", cg)
	}
}

var classify = drivers.ClassifyWith(classifyOS)

// create --image X -- ARGS: one rule on every driver, the words after --
// are the whole command. For the process driver --image is optional then
// (the image reported is the executable), and may name the command's
// program by another path.
func TestCommandIsTheWholeCommandLine(t *testing.T) {
	m, _ := newManager(t, testOptions(t.TempDir()))
	cases := []struct {
		name  string
		tmpl  drivers.InstanceTemplate
		image string // reported
		out   string // first line of output
	}{
		{"cmd-only", drivers.InstanceTemplate{Command: []string{"sh", "-c", "echo only; exec sleep 30"}}, "sh", "only"},
		{"same-exe", drivers.InstanceTemplate{BaseImage: "/bin/sh", Command: []string{"/bin/sh", "-c", "echo same; exec sleep 30"}}, "/bin/sh", "same"},
		{"path-lookup", drivers.InstanceTemplate{BaseImage: "/bin/sh", Command: []string{"sh", "-c", "echo lookup; exec sleep 30"}}, "/bin/sh", "lookup"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.tmpl.Name = "cl-cmd-" + c.name
			t.Cleanup(func() { _, _ = m.Delete(context.Background(), c.tmpl.Name, drivers.DeleteOptions{Force: true}) })
			inst, err := m.Create(tctx(t), c.tmpl)
			if err != nil {
				t.Fatalf("Create: %v", err)
			}
			if inst.Image != c.image {
				t.Errorf("image %q, want %q", inst.Image, c.image)
			}
			if _, err := m.Start(tctx(t), c.tmpl.Name); err != nil {
				t.Fatalf("Start: %v", err)
			}
			testenv.Eventually(t, 10*time.Second, func() error {
				var lines []string
				err := m.Logs(tctx(t), c.tmpl.Name, drivers.LogOptions{}, func(l drivers.LogLine) error {
					lines = append(lines, l.Line)
					return nil
				})
				if err == nil && !slices.Contains(lines, c.out) {
					err = fmt.Errorf("output %q, want %q", lines, c.out)
				}
				return err
			})
		})
	}
}

// Lines are stamped with the time their first part was read, a line cut
// across reads keeps one stamp, and the stored file reads back as lines
// with those times; unstamped lines (older files) take their neighbours'.
func TestLogStamps(t *testing.T) {
	d := New(testOptions(t.TempDir()))
	if err := os.MkdirAll(d.instanceDir("st"), 0o700); err != nil {
		t.Fatal(err)
	}
	t1 := time.Date(2026, 11, 30, 7, 0, 0, 100, time.UTC)
	t2 := t1.Add(time.Second)
	w := &logWriter{d: d, name: "st", stream: "stdout"}
	w.Write([]byte("a\nb"), t1)
	w.Write([]byte("c\nd\n"), t2)
	w.close()
	b, err := os.ReadFile(d.logPath("st", "stdout", 0))
	if err != nil {
		t.Fatal(err)
	}
	want := "2026-11-30T07:00:00.000000100Z a\n2026-11-30T07:00:00.000000100Z bc\n2026-11-30T07:00:01.000000100Z d\n"
	if string(b) != want {
		t.Fatalf("file:\n%s\nwant:\n%s", b, want)
	}
	st, err := d.tail("st", "stdout", 10, false)
	if err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprint(st.lines)
	if len(st.lines) != 3 || st.lines[1].Line != "bc" || !st.lines[1].Time.Equal(t1) || !st.lines[2].Time.Equal(t2) {
		t.Fatalf("tail = %s", got)
	}
	legacy := timeLines("stdout", []string{"old", "2026-11-30T07:00:01.000000100Z x", "cut rest"}, time.Time{}, t1)
	if !legacy[0].Time.Equal(t2) || legacy[0].Line != "old" || !legacy[2].Time.Equal(t2) || legacy[1].Line != "x" {
		t.Fatalf("unstamped lines: %+v", legacy)
	}
	merged := mergeLines(
		[]drivers.LogLine{{Time: t1, Line: "o1"}, {Time: t2.Add(time.Second), Line: "o3"}},
		[]drivers.LogLine{{Time: t2, Line: "e2"}})
	if merged[0].Line != "o1" || merged[1].Line != "e2" || merged[2].Line != "o3" {
		t.Fatalf("merge: %+v", merged)
	}
}

// A process that fails within the start settle window makes Start fail
// with code exited, giving its exit status and last output; one that
// exits 0 at once, or fails after the window, was started.
func TestStartReportsEarlyExit(t *testing.T) {
	o := testOptions(t.TempDir())
	o.StartSettle = config.Duration(800 * time.Millisecond)
	d := New(o)
	if err := d.Connect(tctx(t)); err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	cases := []struct {
		name   string
		script string
		code   drivers.Code // 0: started
		says   []string
		state  drivers.State
	}{
		// The two lines are 0.1 s apart: lines of different streams closer
		// than the reader's clock can order may swap (docs/process.md).
		{"dies", "echo starting; sleep 0.1; echo 'boom: no config' >&2; exit 3", drivers.Exited,
			[]string{`"dies" exited (status 3) within 800ms`, "[stdout] starting | [stderr] boom: no config"}, drivers.StateError},
		{"killed", "kill -9 $$", drivers.Exited, []string{"killed by SIGKILL", "no output"}, drivers.StateError},
		{"one-shot", "echo done", 0, nil, drivers.StateStopped},
		{"late", "sleep 1.5; exit 1", 0, nil, drivers.StateRunning},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tmpl := drivers.InstanceTemplate{Name: c.name, BaseImage: "sh", Command: []string{"sh", "-c", c.script}}
			if _, err := d.Create(tctx(t), tmpl); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _, _ = d.Delete(context.Background(), c.name, drivers.DeleteOptions{Force: true}) })
			changed, err := d.Start(tctx(t), c.name)
			if got := drivers.Classify(d, err); got != c.code || !changed && err == nil {
				t.Fatalf("Start = %v, %v (code %v), want code %v", changed, err, got, c.code)
			}
			for _, s := range c.says {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
			testenv.Eventually(t, settle, func() error {
				inst, err := d.Get(tctx(t), c.name)
				if err == nil && inst.State != c.state {
					err = fmt.Errorf("state %s (%s), want %s", inst.State, inst.NativeState, c.state)
				}
				return err
			})
		})
	}
}
