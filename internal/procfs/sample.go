package procfs

import (
	"os"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

// TreeSample is a cumulative reading of a process tree: CPU time of its
// live processes plus the times of their reaped children, summed resident
// memory (pages shared between processes count more than once) and disk
// I/O of its live processes.
type TreeSample struct {
	At         time.Time
	Root       int
	RootStart  uint64 // the root's start time, so a reused pid is a new series
	CPUNs      uint64
	RSSBytes   uint64
	ReadBytes  uint64
	WriteBytes uint64
	// IOMeasured is false when /proc/<root>/io could not be read (another
	// user's process without the privilege to read it).
	IOMeasured bool
}

// SampleTree reads the tree under root. With rootStart != 0 a root whose
// start time differs (the pid was reused) is ErrNoProcess.
func SampleTree(root int, rootStart uint64) (TreeSample, error) {
	procs, err := Tree(root)
	if err != nil {
		return TreeSample{}, err
	}
	if rootStart != 0 && procs[0].StartTicks != rootStart {
		return TreeSample{}, ErrNoProcess
	}
	s := TreeSample{At: time.Now().UTC(), Root: root, RootStart: procs[0].StartTicks, IOMeasured: true}
	var ticks uint64
	var rss int64
	for _, p := range procs {
		ticks += p.CPUTicks
		rss += p.RSSPages
		r, w, err := ReadIO(p.Pid)
		if err != nil {
			if p.Pid == root {
				s.IOMeasured = false
			}
			continue
		}
		s.ReadBytes += r
		s.WriteBytes += w
	}
	s.CPUNs = ticks * uint64(time.Second/ClockTicks)
	s.RSSBytes = uint64(max(rss, 0)) * uint64(os.Getpagesize())
	return s, nil
}

// IdleUsage is the sample of an instance with no process: CPU, memory and
// disk I/O measured as zero; network and disk space not measured.
func IdleUsage() drivers.ResourceUsage {
	return drivers.ResourceUsage{Time: time.Now().UTC(), Measured: drivers.MeasureCPU | drivers.MeasureMemory | drivers.MeasureDiskIO}
}

// Usage converts the sample to a ResourceUsage, with rates from prev when
// prev is a sample of the same process (same root and start time) taken
// earlier. Network and disk space are not measured.
func (s TreeSample) Usage(prev *TreeSample) drivers.ResourceUsage {
	u := drivers.ResourceUsage{
		Time:     s.At,
		Measured: drivers.MeasureCPU | drivers.MeasureMemory,
		MemoryMB: float64(s.RSSBytes) / (1 << 20),
		Counters: drivers.UsageCounters{CPUTimeNs: s.CPUNs, MemoryBytes: s.RSSBytes},
	}
	if s.IOMeasured {
		u.Measured |= drivers.MeasureDiskIO
		u.Counters.DiskReadBytes, u.Counters.DiskWriteBytes = s.ReadBytes, s.WriteBytes
	}
	if prev == nil || prev.Root != s.Root || prev.RootStart != s.RootStart {
		return u
	}
	dt := s.At.Sub(prev.At).Seconds()
	if dt <= 0 {
		return u
	}
	u.CPUPercent = float64(delta(s.CPUNs, prev.CPUNs)) / 1e9 / dt * 100
	if s.IOMeasured && prev.IOMeasured {
		u.DiskReadMBps = float64(delta(s.ReadBytes, prev.ReadBytes)) / (1 << 20) / dt
		u.DiskWriteMBps = float64(delta(s.WriteBytes, prev.WriteBytes)) / (1 << 20) / dt
	}
	return u
}

// delta is cur-prev, 0 when a counter went back (a process of the tree exited).
func delta(cur, prev uint64) uint64 {
	if cur < prev {
		return 0
	}
	return cur - prev
}
