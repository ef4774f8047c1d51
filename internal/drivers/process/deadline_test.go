package process

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/procfs"
	"github.com/subbus/subbus/internal/testenv"
)

// TestStopCallerDeadline: a graceful stop whose caller's deadline ends
// before the process exits returns Timeout at the deadline and does not
// escalate: the process keeps running, is still "running", and a later
// exit is not taken for a stop.
func TestStopCallerDeadline(t *testing.T) {
	d := connected(t)
	tmpl := drivers.InstanceTemplate{Name: "deaf", BaseImage: "sh",
		Command: []string{"sh", "-c", `trap '' TERM; echo ready; while :; do sleep 0.1; done`}}
	if _, err := d.Create(tctx(t), tmpl); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Start(tctx(t), "deaf"); err != nil {
		t.Fatal(err)
	}
	pid, ticks := pidOf(t, d, "deaf")
	killGroupAtEnd(t, pid)
	// The shell must have installed its trap before SIGTERM is sent.
	testenv.Eventually(t, settle, func() error {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
		if err != nil {
			return err
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "SigIgn:"); ok {
				m, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
				if err != nil {
					return err
				}
				if m&(1<<(syscall.SIGTERM-1)) == 0 {
					return fmt.Errorf("SIGTERM not ignored yet")
				}
				return nil
			}
		}
		return fmt.Errorf("no SigIgn line")
	})
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	began := time.Now()
	changed, err := d.Stop(ctx, "deaf", drivers.StopOptions{Timeout: 30 * time.Second})
	took := time.Since(began)
	if classify(err) != drivers.Timeout || changed {
		t.Fatalf("Stop past the caller's deadline = %v, %v; want false, timeout", changed, err)
	}
	if took > 3*time.Second {
		t.Errorf("Stop returned %v after it began; deadline was 500ms", took)
	}
	if !procfs.Alive(pid, ticks) {
		t.Fatalf("the process was killed although the caller only gave up")
	}
	if inst, _ := d.Get(tctx(t), "deaf"); inst.State != drivers.StateRunning {
		t.Errorf("state %s after an abandoned stop, want running", inst.State)
	}
	if changed, err := d.Stop(tctx(t), "deaf", drivers.StopOptions{Force: true}); err != nil || !changed {
		t.Fatalf("force Stop: %v %v", changed, err)
	}
}

// TestHealthUsage: Health reports the host's CPU and memory usage.
func TestHealthUsage(t *testing.T) {
	d := connected(t)
	for i := range 2 { // the second call measures since the first
		h, err := d.Health(tctx(t))
		if err != nil {
			t.Fatal(err)
		}
		u := h.Usage
		if u == nil {
			t.Fatalf("Health %d: no Usage (issues %v)", i, h.Issues)
		}
		if u.Measured != drivers.MeasureCPU|drivers.MeasureMemory {
			t.Errorf("Health %d: measured %v, want cpu|memory", i, u.Measured)
		}
		if u.MemoryMB <= 0 || u.Counters.MemoryBytes == 0 {
			t.Errorf("Health %d: memory %v MB, want > 0", i, u.MemoryMB)
		}
		if u.CPUPercent < 0 || u.CPUPercent > float64(100*runtime.NumCPU())+1 {
			t.Errorf("Health %d: cpu %v%%, want within [0, %d]", i, u.CPUPercent, 100*runtime.NumCPU())
		}
		if u.Counters.CPUTimeNs == 0 {
			t.Errorf("Health %d: no cumulative CPU time", i)
		}
	}
}
