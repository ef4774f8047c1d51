package process

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/procfs"
)

// crashNames are the instances the crash helper works on.
var crashNames = []string{"c0", "c1", "c2", "c3"}

// TestHelperCrashBurst is not a test: TestCrashPoints runs the test binary
// with SUBBUS_CRASH_DIR set, and this plays a worker running a burst of
// create/start/stop/delete on a few instances. With SUBBUS_CRASH_AT=point:n
// it kills itself (SIGKILL) the n-th time it reaches that fault point;
// otherwise the parent kills it at a random moment.
func TestHelperCrashBurst(t *testing.T) {
	dir := os.Getenv("SUBBUS_CRASH_DIR")
	if dir == "" {
		t.Skip("helper process for TestCrashPoints")
	}
	if at := os.Getenv("SUBBUS_CRASH_AT"); at != "" {
		point, nth, _ := strings.Cut(at, ":")
		n, _ := strconv.Atoi(nth)
		seen := 0
		faultHook = func(p string) {
			if p == point {
				if seen++; seen == n {
					_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
					select {}
				}
			}
		}
	}
	seed, _ := strconv.ParseUint(os.Getenv("SUBBUS_CRASH_SEED"), 10, 64)
	rng := rand.New(rand.NewPCG(seed, 1))
	o := testOptions(dir)
	o.StopTimeout = 0
	d := New(o)
	ctx := context.Background()
	if err := d.Connect(ctx); err != nil {
		fmt.Println("helper:", err)
		os.Exit(2)
	}
	fmt.Println("ready")
	for range 60 {
		name := crashNames[rng.IntN(len(crashNames))]
		switch rng.IntN(4) {
		case 0:
			_, _ = d.Create(ctx, drivers.InstanceTemplate{Name: name, BaseImage: "sleep", Command: []string{"sleep", "1000"}})
		case 1:
			_, _ = d.Start(ctx, name)
		case 2:
			_, _ = d.Stop(ctx, name, drivers.StopOptions{Force: rng.IntN(2) == 0, Timeout: 2 * time.Second})
		case 3:
			_, _ = d.Delete(ctx, name, drivers.DeleteOptions{Force: true})
		}
	}
	os.Exit(0)
}

// markedPids lists the live processes carrying the marker of the state
// directory dir, by instance id: read from /proc independently of the
// driver's own scan.
func markedPids(t *testing.T, dir string) map[string][]int {
	t.Helper()
	owner, err := os.ReadFile(filepath.Join(dir, "owner"))
	if err != nil {
		return nil
	}
	needle := []byte(markEnv + "=" + strings.TrimSpace(string(owner)) + ".")
	out := map[string][]int{}
	es, _ := os.ReadDir("/proc")
	for _, e := range es {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err != nil {
			continue
		}
		for _, kv := range bytes.Split(env, []byte{0}) {
			if rest, ok := bytes.CutPrefix(kv, needle); ok {
				if st, err := procfs.ReadStat(pid); err == nil && st.State != 'Z' {
					id, _, _ := strings.Cut(string(rest), ".")
					out[id] = append(out[id], pid)
				}
			}
		}
	}
	return out
}

// checkConsistent connects a fresh driver to dir (the restart) and checks
// the invariants: every instance listable; a running one has exactly its
// recorded process, a stopped one none; no marked process without an
// instance; no temporary file and no instance directory without a state
// file. It returns the connected driver.
func checkConsistent(t *testing.T, dir, round string) *Driver {
	t.Helper()
	d := New(testOptions(dir))
	// A child the killed worker was forking may hold the state directory
	// lock for an instant, until it execs (the fd is close-on-exec).
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := d.Connect(tctx(t))
		if err == nil {
			break
		}
		if !errors.Is(err, drivers.ErrUnavailable) || time.Now().After(deadline) {
			t.Fatalf("%s: Connect after the crash: %v", round, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	list, err := d.List(tctx(t))
	if err != nil {
		t.Fatalf("%s: List: %v", round, err)
	}
	marked := markedPids(t, dir)
	ids := map[string]bool{}
	for _, inst := range list {
		ids[inst.ID] = true
		pids := marked[inst.ID]
		pid, _ := pidOf(t, d, inst.Name)
		switch {
		case inst.State == drivers.StateRunning && (len(pids) != 1 || pids[0] != pid):
			t.Errorf("%s: %s running as pid %d, marked processes %v (want exactly that one)", round, inst.Name, pid, pids)
		case inst.State != drivers.StateRunning && len(pids) != 0:
			t.Errorf("%s: %s is %s but processes %v run for it", round, inst.Name, inst.State, pids)
		}
	}
	for id, pids := range marked {
		if !ids[id] {
			t.Errorf("%s: orphan processes %v of no instance (id %s)", round, pids, id)
		}
	}
	filepath.WalkDir(dir, func(p string, e os.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(e.Name(), ".tmp-") {
			t.Errorf("%s: temporary file left: %s", round, p)
		}
		return nil
	})
	es, _ := os.ReadDir(filepath.Join(dir, "instances"))
	for _, e := range es {
		if _, err := os.Stat(filepath.Join(dir, "instances", e.Name(), "instance.json")); err != nil {
			t.Errorf("%s: instance directory %s without a state file", round, e.Name())
		}
	}
	return d
}

// TestCrashPoints kills a worker (the test binary re-executed, running a
// burst of create/start/stop/delete) with SIGKILL at every fault point
// between the steps of a mutation and at random moments, then restarts
// on the same state directory and checks: no orphan process, no
// duplicate, every instance listable and deletable, state on disk
// consistent (checkConsistent).
func TestCrashPoints(t *testing.T) {
	dir := t.TempDir()
	t.Cleanup(func() {
		for _, pids := range markedPids(t, dir) {
			for _, p := range pids {
				_ = syscall.Kill(p, syscall.SIGKILL)
			}
		}
	})
	type round struct {
		at    string        // fault point:n, or ""
		after time.Duration // random kill offset when at is ""
	}
	var rounds []round
	for _, p := range []string{"write.tmp", "create.recorded", "start.intent", "start.spawned", "start.confirmed", "stop.signalled", "delete.unrecorded"} {
		for n := 1; n <= 3; n++ {
			rounds = append(rounds, round{at: fmt.Sprintf("%s:%d", p, n)})
		}
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 2))
	for range 20 {
		rounds = append(rounds, round{after: time.Duration(rng.IntN(60)) * time.Millisecond})
	}
	deadline := time.Now().Add(50 * time.Second)
	killed := 0
	for i, r := range rounds {
		if time.Now().After(deadline) {
			t.Logf("time bound reached after %d rounds", i)
			break
		}
		name := fmt.Sprintf("round %d (fault point %s)", i, r.at)
		if r.at == "" {
			name = fmt.Sprintf("round %d (killed %v into the burst)", i, r.after)
		}
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperCrashBurst$", "-test.count=1")
		cmd.Env = append(os.Environ(), "SUBBUS_CRASH_DIR="+dir, "SUBBUS_CRASH_AT="+r.at,
			"SUBBUS_CRASH_SEED="+strconv.Itoa(i))
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = cmd.Stdout
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		ready := make(chan struct{})
		outc := make(chan string, 1)
		go func() {
			var out bytes.Buffer
			buf := make([]byte, 4096)
			signalled := false
			for {
				n, err := stdout.Read(buf)
				out.Write(buf[:n])
				if !signalled && strings.Contains(out.String(), "ready") {
					close(ready)
					signalled = true
				}
				if err != nil {
					outc <- out.String()
					return
				}
			}
		}()
		if r.at == "" {
			// Kill it r.after into its burst (once it has connected).
			select {
			case <-ready:
			case <-time.After(10 * time.Second):
			}
			time.Sleep(r.after)
			_ = cmd.Process.Signal(syscall.SIGKILL)
		}
		output := <-outc
		err = cmd.Wait()
		var ee *exec.ExitError
		switch {
		case errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL:
			killed++
		case err != nil:
			t.Fatalf("%s: helper: %v\n%s", name, err, output)
		}
		d := checkConsistent(t, dir, name)
		_ = d.Close()
		if t.Failed() {
			return
		}
	}
	if killed < len(rounds)/2 {
		t.Errorf("only %d of %d rounds killed the helper mid-burst", killed, len(rounds))
	}
	// Finally every instance is deletable and nothing is left running.
	d := checkConsistent(t, dir, "final")
	defer d.Close()
	list, _ := d.List(tctx(t))
	for _, inst := range list {
		if _, err := d.Delete(tctx(t), inst.Name, drivers.DeleteOptions{Force: true}); err != nil {
			t.Errorf("delete %s: %v", inst.Name, err)
		}
	}
	if m := markedPids(t, dir); len(m) != 0 {
		t.Errorf("processes left after deleting every instance: %v", m)
	}
	if es, _ := os.ReadDir(filepath.Join(dir, "instances")); len(es) != 0 {
		t.Errorf("instance directories left after deleting every instance: %d", len(es))
	}
	t.Logf("%d rounds, %d killed mid-burst", len(rounds), killed)
}

// TestLogFloodBound: an instance running `yes` for 10 s keeps its log
// directory within the documented bound, 2 x (log_keep+1) x log_max_bytes
// (each file at most log_max_bytes), while the log keeps being written.
func TestLogFloodBound(t *testing.T) {
	dir := t.TempDir()
	o := testOptions(dir)
	o.LogMaxBytes = 1 << 20
	o.LogKeep = 2
	m, d := newManager(t, o)
	if _, err := m.Create(tctx(t), drivers.InstanceTemplate{Name: "flood", BaseImage: "yes", Command: []string{"yes", "subbus flood"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Start(tctx(t), "flood"); err != nil {
		t.Fatal(err)
	}
	pid, _ := pidOf(t, d, "flood")
	killGroupAtEnd(t, pid)
	instDir := filepath.Join(dir, "instances", "flood")
	bound := 2 * int64(o.LogKeep+1) * o.LogMaxBytes
	var peak, files int64
	end := time.Now().Add(10 * time.Second)
	for time.Now().Before(end) {
		var total int64
		es, _ := os.ReadDir(instDir)
		for _, e := range es {
			if !strings.HasPrefix(e.Name(), "stdout.log") && !strings.HasPrefix(e.Name(), "stderr.log") {
				continue
			}
			fi, err := e.Info()
			if err != nil {
				continue // rotated away meanwhile
			}
			if fi.Size() > o.LogMaxBytes {
				t.Fatalf("%s is %d bytes, over log_max_bytes %d", e.Name(), fi.Size(), o.LogMaxBytes)
			}
			total += fi.Size()
		}
		peak = max(peak, total)
		if total > bound {
			t.Fatalf("log directory holds %d bytes, over the bound %d", total, bound)
		}
		files++
		time.Sleep(20 * time.Millisecond)
	}
	// On a loaded machine (the race detector, other packages' tests) the
	// flood may not have filled three files yet: give it time, still
	// within the bound.
	deadline := time.Now().Add(60 * time.Second)
	for {
		_, err := os.Stat(filepath.Join(instDir, "stdout.log.2"))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no rotation happened in 70 s of yes: %v", err)
		}
		if total := dirSize(instDir); total > bound {
			t.Fatalf("log directory holds %d bytes, over the bound %d", total, bound)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := os.Stat(filepath.Join(instDir, "stdout.log.3")); err == nil {
		t.Errorf("more than log_keep=2 rotated files")
	}
	// The instance still runs (its output never killed or stopped it) and
	// the writer dropped nothing (backpressure, not loss).
	inst, err := m.Get(tctx(t), "flood")
	if err != nil || inst.State != drivers.StateRunning {
		t.Fatalf("flood after 10 s: %+v %v", inst, err)
	}
	h, err := d.Health(tctx(t))
	if err != nil || h.Details["log_bytes_dropped"] != "0" {
		t.Errorf("health: %v %v, want no dropped bytes", h.Details, err)
	}
	t.Logf("peak %d bytes (bound %d) over %d samples", peak, bound, files)
}

// dirSize adds up the sizes of the log files in dir.
func dirSize(dir string) int64 {
	var total int64
	es, _ := os.ReadDir(dir)
	for _, e := range es {
		if !strings.HasPrefix(e.Name(), "stdout.log") && !strings.HasPrefix(e.Name(), "stderr.log") {
			continue
		}
		if fi, err := e.Info(); err == nil {
			total += fi.Size()
		}
	}
	return total
}
