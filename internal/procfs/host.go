package procfs

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

// HostCPU is a cumulative reading of the host's CPU time from /proc/stat.
type HostCPU struct {
	At    time.Time
	Busy  uint64 // ticks not idle and not waiting for I/O
	Total uint64 // all ticks, over all CPUs
	CPUs  int    // number of cpuN lines
}

// ReadHostCPU reads the aggregate "cpu" line of /proc/stat.
func ReadHostCPU() (HostCPU, error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return HostCPU{}, err
	}
	defer f.Close()
	return parseHostCPU(f)
}

func parseHostCPU(f io.Reader) (HostCPU, error) {
	h := HostCPU{At: time.Now().UTC()}
	found := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || !strings.HasPrefix(fields[0], "cpu") {
			continue
		}
		if fields[0] != "cpu" {
			h.CPUs++
			continue
		}
		// user nice system idle iowait irq softirq steal [guest guest_nice];
		// guest time is already counted in user and nice.
		if len(fields) < 5 {
			return HostCPU{}, fmt.Errorf("/proc/stat: short cpu line")
		}
		found = true
		for i, v := range fields[1:] {
			if i >= 8 {
				break
			}
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return HostCPU{}, fmt.Errorf("/proc/stat: cpu field %d: %w", i+1, err)
			}
			h.Total += n
			if i != 3 && i != 4 { // idle, iowait
				h.Busy += n
			}
		}
	}
	if err := sc.Err(); err != nil {
		return HostCPU{}, err
	}
	if !found {
		return HostCPU{}, fmt.Errorf("/proc/stat: no cpu line")
	}
	return h, nil
}

// HostMemoryUsed returns MemTotal-MemAvailable from /proc/meminfo, in bytes.
func HostMemoryUsed() (uint64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var total, avail uint64
	var haveTotal, haveAvail bool
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "MemTotal":
			total, haveTotal = n*1024, true
		case "MemAvailable":
			avail, haveAvail = n*1024, true
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	if !haveTotal || !haveAvail {
		return 0, fmt.Errorf("/proc/meminfo: no MemTotal or MemAvailable")
	}
	return total - min(avail, total), nil
}

// HostUsage is the host's usage: CPU % (100 = one core busy) from prev to
// cur — or since boot when prev is nil or not earlier — and memory in use.
// Only CPU and memory are measured.
func HostUsage(cur HostCPU, prev *HostCPU, memUsed uint64) drivers.ResourceUsage {
	u := drivers.ResourceUsage{
		Time:     cur.At,
		Measured: drivers.MeasureCPU | drivers.MeasureMemory,
		MemoryMB: float64(memUsed) / (1 << 20),
		Counters: drivers.UsageCounters{CPUTimeNs: cur.Busy * uint64(time.Second/ClockTicks), MemoryBytes: memUsed},
	}
	busy, total := cur.Busy, cur.Total
	if prev != nil && cur.Total > prev.Total {
		busy, total = delta(cur.Busy, prev.Busy), cur.Total-prev.Total
	}
	if total > 0 {
		u.CPUPercent = float64(busy) / float64(total) * float64(max(cur.CPUs, 1)) * 100
	}
	return u
}
