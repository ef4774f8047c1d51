package procfs

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

func TestParseHostCPU(t *testing.T) {
	in := "cpu  100 20 30 800 50 0 0 0 7 0\ncpu0 50 10 15 400 25 0 0 0 0 0\ncpu1 50 10 15 400 25 0 0 0 0 0\nintr 1 2\n"
	h, err := parseHostCPU(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	// guest (7) is not added: it is already in user.
	if h.Busy != 150 || h.Total != 1000 || h.CPUs != 2 {
		t.Errorf("got busy %d total %d cpus %d, want 150 1000 2", h.Busy, h.Total, h.CPUs)
	}
	if _, err := parseHostCPU(strings.NewReader("intr 1\n")); err == nil {
		t.Error("no cpu line: want an error")
	}
}

func TestHostUsage(t *testing.T) {
	prev := HostCPU{At: time.Unix(0, 0), Busy: 100, Total: 1000, CPUs: 2}
	cur := HostCPU{At: time.Unix(1, 0), Busy: 150, Total: 1100, CPUs: 2}
	u := HostUsage(cur, &prev, 3<<20)
	// 50 busy of 100 ticks on 2 CPUs: one core busy.
	if u.CPUPercent != 100 || u.MemoryMB != 3 || u.Measured != drivers.MeasureCPU|drivers.MeasureMemory {
		t.Errorf("got %+v", u)
	}
	if u := HostUsage(cur, nil, 0); math.Abs(u.CPUPercent-150.0/1100*200) > 1e-9 {
		t.Errorf("since boot: %v", u.CPUPercent)
	}
	// A counter that went back (prev not earlier) falls back to since boot.
	if u := HostUsage(prev, &cur, 0); u.CPUPercent != 20 {
		t.Errorf("stale prev: %v, want 20", u.CPUPercent)
	}
}

func TestReadHost(t *testing.T) {
	h, err := ReadHostCPU()
	if err != nil || h.Total == 0 || h.CPUs == 0 {
		t.Fatalf("ReadHostCPU = %+v, %v", h, err)
	}
	m, err := HostMemoryUsed()
	if err != nil || m == 0 {
		t.Fatalf("HostMemoryUsed = %d, %v", m, err)
	}
}
