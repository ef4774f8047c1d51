package supervisor

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

// clockTicks is USER_HZ, the unit of utime/stime in /proc/<pid>/stat
// (100 on every Linux architecture Go supports).
const clockTicks = 100

// sample is the previous metrics sample of a program, for rates.
type sample struct {
	at        time.Time
	pid       int
	startTime uint64 // the root process's start time, against pid reuse
	cpuNs     uint64
	read      uint64
	write     uint64
}

// procStat is what we read from /proc/<pid>/stat.
type procStat struct {
	ppid      int
	cpuTicks  uint64 // utime + stime
	startTime uint64
	rssPages  uint64
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 22 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	// f[0] is field 3 (state), so field k is f[k-3].
	num := func(k int) uint64 { n, _ := strconv.ParseUint(f[k-3], 10, 64); return n }
	ppid, _ := strconv.Atoi(f[4-3])
	return procStat{ppid: ppid, cpuTicks: num(14) + num(15), startTime: num(22), rssPages: num(24)}, nil
}

// readIO returns read_bytes and write_bytes of /proc/<pid>/io.
func readIO(pid int) (read, write uint64, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ": ")
		n, _ := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		switch k {
		case "read_bytes":
			read = n
		case "write_bytes":
			write = n
		}
	}
	return read, write, sc.Err()
}

// descendants returns root and every process below it.
func descendants(root int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return []int{root}
	}
	children := map[int][]int{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := readStat(pid); err == nil {
			children[st.ppid] = append(children[st.ppid], pid)
		}
	}
	out := []int{root}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out
}

// Metrics samples the program's process tree from /proc: CPU time (and %
// since the previous sample), resident memory and disk I/O. Network is
// not measured (programs share the host's network namespace). A program
// with no process gives a zero sample.
func (d *Driver) Metrics(ctx context.Context, name string) (drivers.ResourceUsage, error) {
	ctx, cancel := d.ctx(ctx)
	defer cancel()
	p, err := d.rpc.getProcessInfo(ctx, name)
	if err != nil {
		return drivers.ResourceUsage{}, err
	}
	now := time.Now()
	u := drivers.ResourceUsage{Time: now.UTC(), Measured: drivers.MeasureCPU | drivers.MeasureMemory | drivers.MeasureDiskIO}
	var root procStat
	if p.PID > 0 {
		root, err = readStat(p.PID)
	}
	if p.PID == 0 || err != nil {
		d.mu.Lock()
		delete(d.samples, name)
		d.mu.Unlock()
		return u, nil
	}
	var cpuTicks, rss, rd, wr uint64
	ioOK := true
	for _, pid := range descendants(p.PID) {
		st, err := readStat(pid)
		if err != nil {
			continue // exited meanwhile
		}
		cpuTicks += st.cpuTicks
		rss += st.rssPages
		r, w, err := readIO(pid)
		if err != nil {
			if os.IsPermission(err) {
				ioOK = false
			}
			continue
		}
		rd += r
		wr += w
	}
	cur := sample{
		at: now, pid: p.PID, startTime: root.startTime,
		cpuNs: cpuTicks * uint64(time.Second/clockTicks), read: rd, write: wr,
	}
	u.Counters = drivers.UsageCounters{
		CPUTimeNs:   cur.cpuNs,
		MemoryBytes: rss * uint64(os.Getpagesize()),
	}
	u.MemoryMB = float64(u.Counters.MemoryBytes) / (1 << 20)
	if ioOK {
		u.Counters.DiskReadBytes, u.Counters.DiskWriteBytes = rd, wr
	} else {
		u.Measured &^= drivers.MeasureDiskIO
	}

	d.mu.Lock()
	prev, ok := d.samples[name]
	d.samples[name] = cur
	d.mu.Unlock()
	if ok && prev.pid == cur.pid && prev.startTime == cur.startTime && now.After(prev.at) {
		secs := now.Sub(prev.at).Seconds()
		if cur.cpuNs >= prev.cpuNs {
			u.CPUPercent = float64(cur.cpuNs-prev.cpuNs) / float64(now.Sub(prev.at).Nanoseconds()) * 100
		}
		if ioOK && cur.read >= prev.read && cur.write >= prev.write {
			u.DiskReadMBps = float64(cur.read-prev.read) / (1 << 20) / secs
			u.DiskWriteMBps = float64(cur.write-prev.write) / (1 << 20) / secs
		}
	}
	return u, nil
}
