package docker

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/moby/moby/api/types/container"
)

// Fast local stats. Docker 20.10 answers even a one-shot stats request
// only at its stats collector's next 1-second tick, so sampling a fleet
// through the API costs up to a second per round. When the daemon is
// local and its containers' cgroups are readable, the driver reads the
// same kernel counters the daemon would (cgroup v1 or v2, /proc/stat,
// /proc/<pid>/net/dev) and feeds them through the same formulas. Any
// doubt (remote daemon, a cgroup that does not name the container, a
// stopped container) falls back to the API.

// StatsSource values (docker.stats_source).
const (
	StatsAuto = "auto" // local cgroups when readable, else the API
	StatsAPI  = "api"  // always the stats API
)

// cgroupStats finds and reads containers' cgroups.
type cgroupStats struct {
	procRoot, cgRoot string
	// clockTicks is USER_HZ, the unit of /proc/stat (100 on Linux).
	clockTicks uint64

	mu     sync.Mutex
	byName map[string]cgroupPaths
}

// cgroupPaths locate one running container's counters.
type cgroupPaths struct {
	id, name string
	pid      int
	v2       bool
	cpu, mem string // v1: cpuacct and memory dirs; v2: the one dir
	blkio    string
}

func newCgroupStats() *cgroupStats {
	return &cgroupStats{procRoot: "/proc", cgRoot: "/sys/fs/cgroup", clockTicks: 100, byName: map[string]cgroupPaths{}}
}

// localSocket reports whether host is a unix socket on this machine.
func localSocket(host string) bool { return strings.HasPrefix(host, "unix://") }

// cached returns the paths known for name if its process still lives in
// the container's cgroup.
func (c *cgroupStats) cached(name string) (cgroupPaths, bool) {
	c.mu.Lock()
	p, ok := c.byName[name]
	c.mu.Unlock()
	if !ok {
		return p, false
	}
	b, err := os.ReadFile(filepath.Join(c.procRoot, strconv.Itoa(p.pid), "cgroup"))
	if err != nil || !bytes.Contains(b, []byte(p.id)) {
		c.forget(name)
		return p, false
	}
	return p, true
}

func (c *cgroupStats) forget(name string) {
	c.mu.Lock()
	delete(c.byName, name)
	c.mu.Unlock()
}

// resolve finds the cgroup of a running container from its init process.
func (c *cgroupStats) resolve(name, id string, pid int) (cgroupPaths, error) {
	if pid <= 0 {
		return cgroupPaths{}, fmt.Errorf("no pid")
	}
	f, err := os.Open(filepath.Join(c.procRoot, strconv.Itoa(pid), "cgroup"))
	if err != nil {
		return cgroupPaths{}, err
	}
	defer f.Close()
	p := cgroupPaths{id: id, name: name, pid: pid}
	var unified string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// hierarchy-ID:controller-list:path
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 || !strings.Contains(parts[2], id) {
			continue
		}
		for _, ctl := range strings.Split(parts[1], ",") {
			switch ctl {
			case "cpuacct":
				p.cpu = filepath.Join(c.cgRoot, "cpuacct", parts[2])
			case "memory":
				p.mem = filepath.Join(c.cgRoot, "memory", parts[2])
			case "blkio":
				p.blkio = filepath.Join(c.cgRoot, "blkio", parts[2])
			}
		}
		if parts[0] == "0" && parts[1] == "" {
			unified = parts[2]
		}
	}
	if p.cpu != "" && p.mem != "" && exists(filepath.Join(p.cpu, "cpuacct.usage")) && exists(filepath.Join(p.mem, "memory.usage_in_bytes")) {
		return p, nil
	}
	if unified != "" {
		dir := filepath.Join(c.cgRoot, unified)
		if exists(filepath.Join(dir, "cpu.stat")) && exists(filepath.Join(dir, "memory.current")) {
			return cgroupPaths{id: id, name: name, pid: pid, v2: true, cpu: dir, mem: dir, blkio: dir}, nil
		}
	}
	return cgroupPaths{}, fmt.Errorf("cgroup of %s not readable", name)
}

func (c *cgroupStats) remember(p cgroupPaths) {
	c.mu.Lock()
	c.byName[p.name] = p
	c.mu.Unlock()
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// read samples p's counters into a stats response, as the daemon would.
func (c *cgroupStats) read(p cgroupPaths) (container.StatsResponse, error) {
	st := container.StatsResponse{ID: p.id, Name: "/" + p.name, Read: time.Now().UTC()}
	sys, ncpu, err := c.systemCPU()
	if err != nil {
		return st, err
	}
	st.CPUStats.SystemUsage, st.CPUStats.OnlineCPUs = sys, ncpu
	if p.v2 {
		kv, err := readKV(filepath.Join(p.cpu, "cpu.stat"))
		if err != nil {
			return st, err
		}
		st.CPUStats.CPUUsage.TotalUsage = kv["usage_usec"] * 1000
		if st.MemoryStats.Usage, err = readUint(filepath.Join(p.mem, "memory.current")); err != nil {
			return st, err
		}
		if st.MemoryStats.Stats, err = readKV(filepath.Join(p.mem, "memory.stat")); err != nil {
			return st, err
		}
		rd, wr := readIOStat(filepath.Join(p.blkio, "io.stat"))
		st.BlkioStats.IoServiceBytesRecursive = []container.BlkioStatEntry{{Op: "read", Value: rd}, {Op: "write", Value: wr}}
	} else {
		if st.CPUStats.CPUUsage.TotalUsage, err = readUint(filepath.Join(p.cpu, "cpuacct.usage")); err != nil {
			return st, err
		}
		if st.MemoryStats.Usage, err = readUint(filepath.Join(p.mem, "memory.usage_in_bytes")); err != nil {
			return st, err
		}
		if st.MemoryStats.Stats, err = readKV(filepath.Join(p.mem, "memory.stat")); err != nil {
			return st, err
		}
		if p.blkio != "" {
			rd, wr := readBlkio(filepath.Join(p.blkio, "blkio.io_service_bytes_recursive"))
			if rd == 0 && wr == 0 {
				rd, wr = readBlkio(filepath.Join(p.blkio, "blkio.throttle.io_service_bytes_recursive"))
			}
			st.BlkioStats.IoServiceBytesRecursive = []container.BlkioStatEntry{{Op: "Read", Value: rd}, {Op: "Write", Value: wr}}
		}
	}
	st.Networks = c.netDev(p.pid)
	return st, nil
}

// systemCPU is the host's CPU time in ns (user..softirq of /proc/stat's
// cpu line, as the daemon computes system_cpu_usage) and the CPU count.
func (c *cgroupStats) systemCPU() (uint64, uint32, error) {
	b, err := os.ReadFile(filepath.Join(c.procRoot, "stat"))
	if err != nil {
		return 0, 0, err
	}
	var total uint64
	var ncpu uint32
	found := false
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		switch {
		case f[0] == "cpu" && len(f) >= 8:
			for _, v := range f[1:8] {
				n, _ := strconv.ParseUint(v, 10, 64)
				total += n
			}
			found = true
		case strings.HasPrefix(f[0], "cpu"):
			ncpu++
		}
	}
	if !found {
		return 0, 0, fmt.Errorf("no cpu line in /proc/stat")
	}
	return total * 1e9 / c.clockTicks, ncpu, nil
}

// netDev sums the container's interfaces (not lo) from its network
// namespace's /proc/<pid>/net/dev.
func (c *cgroupStats) netDev(pid int) map[string]container.NetworkStats {
	b, err := os.ReadFile(filepath.Join(c.procRoot, strconv.Itoa(pid), "net", "dev"))
	if err != nil {
		return nil
	}
	out := map[string]container.NetworkStats{}
	for _, line := range strings.Split(string(b), "\n") {
		name, rest, ok := strings.Cut(line, ":")
		name = strings.TrimSpace(name)
		if !ok || name == "lo" || strings.Contains(name, "|") {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 10 {
			continue
		}
		rx, _ := strconv.ParseUint(f[0], 10, 64)
		tx, _ := strconv.ParseUint(f[8], 10, 64)
		out[name] = container.NetworkStats{RxBytes: rx, TxBytes: tx}
	}
	return out
}

func readUint(p string) (uint64, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
}

// readKV reads "key value" lines (memory.stat, cpu.stat).
func readKV(p string) (map[string]uint64, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	m := map[string]uint64{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		if n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64); err == nil {
			m[k] = n
		}
	}
	return m, nil
}

// readBlkio sums "MAJ:MIN Read|Write N" lines of a v1 blkio file.
func readBlkio(p string) (rd, wr uint64) {
	b, _ := os.ReadFile(p)
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue
		}
		n, _ := strconv.ParseUint(f[2], 10, 64)
		switch f[1] {
		case "Read":
			rd += n
		case "Write":
			wr += n
		}
	}
	return rd, wr
}

// readIOStat sums rbytes= and wbytes= of a v2 io.stat file.
func readIOStat(p string) (rd, wr uint64) {
	b, _ := os.ReadFile(p)
	for _, f := range strings.Fields(string(b)) {
		if v, ok := strings.CutPrefix(f, "rbytes="); ok {
			n, _ := strconv.ParseUint(v, 10, 64)
			rd += n
		} else if v, ok := strings.CutPrefix(f, "wbytes="); ok {
			n, _ := strconv.ParseUint(v, 10, 64)
			wr += n
		}
	}
	return rd, wr
}

// localStats samples name from its cgroup, if it can (ok=false: use the API).
func (d *Driver) localStats(ctx context.Context, name string) (container.StatsResponse, bool) {
	cg := d.cgroups
	if cg == nil {
		return container.StatsResponse{}, false
	}
	p, ok := cg.cached(name)
	if !ok {
		ins, err := d.inspect(ctx, name)
		if err != nil || ins.State == nil || !ins.State.Running {
			return container.StatsResponse{}, false
		}
		if p, err = cg.resolve(name, ins.ID, ins.State.Pid); err != nil {
			return container.StatsResponse{}, false
		}
		cg.remember(p)
	}
	st, err := cg.read(p)
	if err != nil {
		cg.forget(name)
		return container.StatsResponse{}, false
	}
	return st, true
}
