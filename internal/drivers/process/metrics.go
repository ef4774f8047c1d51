package process

import (
	"context"
	"os"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

// sample is the previous metrics sample of an instance, for rates.
type sample struct {
	at         time.Time
	pid        int
	startTicks uint64
	cpuNs      uint64
	read       uint64
	write      uint64
}

// Metrics samples the instance's whole process tree from /proc: CPU time
// (utime+stime of live processes plus the times of their reaped children),
// resident memory (summed RSS, so pages shared between processes count
// more than once) and disk I/O (read_bytes/write_bytes of /proc/<pid>/io,
// of live processes only). Rates come from the previous sample. Network
// and disk space are not measured. A stopped instance gives zeros.
func (d *Driver) Metrics(ctx context.Context, name string) (drivers.ResourceUsage, error) {
	d.mu.Lock()
	in, err := d.lookup(name)
	if err != nil {
		d.mu.Unlock()
		return drivers.ResourceUsage{}, err
	}
	running := in.rec.State == drivers.StateRunning
	pid, ticks := in.rec.Pid, in.rec.StartTicks
	prev := in.prev
	d.mu.Unlock()

	now := time.Now().UTC()
	u := drivers.ResourceUsage{Time: now, Measured: drivers.MeasureCPU | drivers.MeasureMemory | drivers.MeasureDiskIO}
	if !running || !alive(pid, ticks) {
		return u, nil
	}
	procs, err := tree(pid)
	if err != nil || len(procs) == 0 || procs[0].StartTicks != ticks {
		return u, nil // it exited just now
	}
	var cpuTicks uint64
	var rss int64
	var read, write uint64
	ioOK := true
	for _, p := range procs {
		cpuTicks += p.CPUTicks
		rss += p.RSSPages
		r, w, err := ioBytes(p.Pid)
		if err != nil {
			if p.Pid == pid {
				ioOK = false
			}
			continue
		}
		read += r
		write += w
	}
	cpuNs := cpuTicks * uint64(time.Second/clockTicks)
	memBytes := uint64(max(rss, 0)) * uint64(os.Getpagesize())
	u.Counters.CPUTimeNs = cpuNs
	u.Counters.MemoryBytes = memBytes
	u.MemoryMB = float64(memBytes) / (1 << 20)
	if ioOK {
		u.Counters.DiskReadBytes, u.Counters.DiskWriteBytes = read, write
	} else {
		u.Measured &^= drivers.MeasureDiskIO
	}
	cur := &sample{at: now, pid: pid, startTicks: ticks, cpuNs: cpuNs, read: read, write: write}
	if prev != nil && prev.pid == pid && prev.startTicks == ticks {
		if dt := now.Sub(prev.at).Seconds(); dt > 0 {
			u.CPUPercent = float64(delta(cpuNs, prev.cpuNs)) / 1e9 / dt * 100
			if ioOK {
				u.DiskReadMBps = float64(delta(read, prev.read)) / (1 << 20) / dt
				u.DiskWriteMBps = float64(delta(write, prev.write)) / (1 << 20) / dt
			}
		}
	}
	d.mu.Lock()
	if d.insts[name] == in {
		in.prev = cur
	}
	d.mu.Unlock()
	return u, nil
}

// delta is cur-prev, 0 when a counter went back (a process of the tree exited).
func delta(cur, prev uint64) uint64 {
	if cur < prev {
		return 0
	}
	return cur - prev
}
