package procfs

import (
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/testenv"
)

func TestParseStat(t *testing.T) {
	// A command name with spaces and parentheses; fields counted from the last ')'.
	line := "42 (a (b) c) S 7 42 42 0 -1 4194560 100 0 0 0 150 50 10 5 20 0 1 0 12345 1000000 321 18446744073709551615"
	s, err := ParseStat(42, []byte(line))
	if err != nil {
		t.Fatal(err)
	}
	want := Stat{Pid: 42, PPid: 7, State: 'S', PGrp: 42, CPUTicks: 150 + 50 + 10 + 5, StartTicks: 12345, RSSPages: 321}
	if s != want {
		t.Fatalf("got %+v, want %+v", s, want)
	}
	for _, bad := range []string{"", "42 no-paren S 1", "42 (x) S 1 2 3"} {
		if _, err := ParseStat(42, []byte(bad)); err == nil {
			t.Errorf("ParseStat(%q) accepted", bad)
		}
	}
}

func TestReadStatMissing(t *testing.T) {
	if _, err := ReadStat(1 << 30); !errors.Is(err, ErrNoProcess) {
		t.Fatalf("missing pid: %v, want ErrNoProcess", err)
	}
}

// A busy child shows up in its parent's tree, with CPU % near 100 and the
// start-time guard telling a reused pid apart.
func TestSampleTreeOfBusyChild(t *testing.T) {
	cmd := exec.Command("/bin/sh", "-c", "while :; do :; done & wait")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		procs, _ := Tree(cmd.Process.Pid)
		for _, p := range procs {
			_ = syscall.Kill(p.Pid, syscall.SIGKILL)
		}
		_ = cmd.Wait()
	})
	root := cmd.Process.Pid
	testenv.Eventually(t, 5*time.Second, func() error {
		procs, err := Tree(root)
		if err != nil {
			return err
		}
		if len(procs) < 2 {
			return errors.New("busy child not in the tree yet")
		}
		return nil
	})
	st, err := ReadStat(root)
	if err != nil {
		t.Fatal(err)
	}
	if !Alive(root, st.StartTicks) || Alive(root, st.StartTicks+1) {
		t.Fatal("Alive does not check the start time")
	}
	if _, err := SampleTree(root, st.StartTicks+1); !errors.Is(err, ErrNoProcess) {
		t.Fatalf("SampleTree with a wrong start time: %v, want ErrNoProcess", err)
	}
	first, err := SampleTree(root, st.StartTicks)
	if err != nil {
		t.Fatal(err)
	}
	u0 := first.Usage(nil)
	if u0.CPUPercent != 0 || !u0.Measured.Has(drivers.MeasureCPU|drivers.MeasureMemory) || u0.Measured.Has(drivers.MeasureNetwork) {
		t.Fatalf("first sample %+v: want no rate, cpu+memory measured, network not", u0)
	}
	if u0.Counters.MemoryBytes == 0 {
		t.Fatal("no resident memory counted")
	}
	// The expected rate comes from an independent clock: the scheduler's
	// run time of the tree (/proc/<pid>/schedstat, in ns), so the check
	// holds on a loaded machine where the loop gets less than a core.
	run0 := treeRunNs(t, root)
	time.Sleep(500 * time.Millisecond) // the measurement window itself, not a wait for a condition
	second, err := SampleTree(root, st.StartTicks)
	if err != nil {
		t.Fatal(err)
	}
	run1 := treeRunNs(t, root)
	u := second.Usage(&first)
	wall := second.At.Sub(first.At).Seconds()
	want := float64(run1-run0) / 1e9 / wall * 100
	if u.CPUPercent <= 0 || u.CPUPercent > 210 || math.Abs(u.CPUPercent-want) > 25 {
		t.Fatalf("busy loop at %.1f%% CPU, the scheduler says %.1f%%", u.CPUPercent, want)
	}
	other := first
	other.RootStart++
	if r := second.Usage(&other); r.CPUPercent != 0 {
		t.Fatalf("rate computed across a different process: %.1f%%", r.CPUPercent)
	}
}

func TestBootIDStable(t *testing.T) {
	if BootID() == "" || BootID() != BootID() {
		t.Fatal("boot id empty or unstable")
	}
	if _, _, err := ReadIO(os.Getpid()); err != nil {
		t.Fatalf("ReadIO(self): %v", err)
	}
}

// treeRunNs sums the scheduler's run time (first field of
// /proc/<pid>/schedstat) over root's process tree.
func treeRunNs(t *testing.T, root int) uint64 {
	t.Helper()
	procs, err := Tree(root)
	if err != nil {
		t.Fatal(err)
	}
	var sum uint64
	for _, p := range procs {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/schedstat", p.Pid))
		if err != nil {
			continue // exited between Tree and here
		}
		var ns uint64
		if _, err := fmt.Sscan(string(b), &ns); err == nil {
			sum += ns
		}
	}
	return sum
}
