package docker

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/subbus/subbus/internal/drivers"
)

// sample is what the driver keeps of a container's previous stats to
// compute rates (one-shot stats carry no previous sample).
type sample struct {
	read                time.Time
	cpuTotal, cpuSystem uint64
	rx, tx, rdBy, wrBy  uint64
	onlineCPUs          uint32
	haveCPU             bool
}

type statsCache struct {
	mu   sync.Mutex
	prev map[string]sample // by container ID
}

func (s *statsCache) swap(id string, cur sample) (sample, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.prev[id]
	s.prev[id] = cur
	return p, ok
}

func (s *statsCache) forget(id string) {
	s.mu.Lock()
	delete(s.prev, id)
	s.mu.Unlock()
}

// Metrics implements drivers.Driver with one-shot stats (no wait for a
// second sample): rates come from the previous sample the driver kept.
// CPU % is computed as `docker stats` does; memory excludes the inactive
// file cache. A stopped container gives zero rates.
func (d *Driver) Metrics(ctx context.Context, name string) (drivers.ResourceUsage, error) {
	c, err := d.client()
	if err != nil {
		return drivers.ResourceUsage{}, err
	}
	if st, ok := d.localStats(ctx, name); ok {
		return d.usageOf(st), nil
	}
	res, err := c.ContainerStats(ctx, name, client.ContainerStatsOptions{Stream: false})
	if err != nil {
		return drivers.ResourceUsage{}, fmt.Errorf("stats of %s: %w", name, err)
	}
	defer res.Body.Close()
	var st container.StatsResponse
	if err := json.NewDecoder(res.Body).Decode(&st); err != nil {
		if ctx.Err() != nil {
			return drivers.ResourceUsage{}, fmt.Errorf("stats of %s: %w", name, ctx.Err())
		}
		return drivers.ResourceUsage{}, fmt.Errorf("decode stats of %s: %w", name, err)
	}
	if containerName(st.Name) != name && st.Name != "" {
		// Docker resolves ID prefixes too; only exact names are instances.
		return drivers.ResourceUsage{}, drivers.Errorf(drivers.NotFound, "docker: no container %q", name)
	}
	return d.usageOf(st), nil
}

// usageOf turns a stats response into a sample, updating the kept
// previous sample of the container.
func (d *Driver) usageOf(st container.StatsResponse) drivers.ResourceUsage {
	all := drivers.MeasureCPU | drivers.MeasureMemory | drivers.MeasureNetwork | drivers.MeasureDiskIO
	if st.Read.IsZero() {
		// Not running: Docker answers an empty sample at once.
		d.stats.forget(st.ID)
		return drivers.ResourceUsage{Time: time.Now().UTC(), Measured: all}
	}
	cur := sample{
		read:       st.Read,
		cpuTotal:   st.CPUStats.CPUUsage.TotalUsage,
		cpuSystem:  st.CPUStats.SystemUsage,
		onlineCPUs: st.CPUStats.OnlineCPUs,
		haveCPU:    st.CPUStats.SystemUsage > 0,
	}
	if cur.onlineCPUs == 0 {
		cur.onlineCPUs = uint32(len(st.CPUStats.CPUUsage.PercpuUsage))
	}
	for _, n := range st.Networks {
		cur.rx += n.RxBytes
		cur.tx += n.TxBytes
	}
	for _, e := range st.BlkioStats.IoServiceBytesRecursive {
		switch strings.ToLower(e.Op) {
		case "read":
			cur.rdBy += e.Value
		case "write":
			cur.wrBy += e.Value
		}
	}
	u := drivers.ResourceUsage{
		Time:     st.Read.UTC(),
		MemoryMB: float64(memoryUsage(st.MemoryStats)) / (1 << 20),
		Counters: drivers.UsageCounters{
			CPUTimeNs:      cur.cpuTotal,
			MemoryBytes:    memoryUsage(st.MemoryStats),
			DiskReadBytes:  cur.rdBy,
			DiskWriteBytes: cur.wrBy,
			NetRxBytes:     cur.rx,
			NetTxBytes:     cur.tx,
		},
		Measured: drivers.MeasureCPU | drivers.MeasureMemory | drivers.MeasureDiskIO,
	}
	if st.Networks != nil {
		u.Measured |= drivers.MeasureNetwork
	}
	prev, ok := d.stats.swap(st.ID, cur)
	if !ok || !prev.read.Before(cur.read) {
		return u
	}
	u.CPUPercent = cpuPercent(prev, cur)
	secs := cur.read.Sub(prev.read).Seconds()
	u.NetworkRxMbps = rate(prev.rx, cur.rx, secs) * 8 / 1e6
	u.NetworkTxMbps = rate(prev.tx, cur.tx, secs) * 8 / 1e6
	u.DiskReadMBps = rate(prev.rdBy, cur.rdBy, secs) / (1 << 20)
	u.DiskWriteMBps = rate(prev.wrBy, cur.wrBy, secs) / (1 << 20)
	return u
}

// cpuPercent is docker stats' formula: the container's share of the
// host's CPU time between two samples, times the number of CPUs (100 =
// one core busy).
func cpuPercent(prev, cur sample) float64 {
	if !prev.haveCPU || !cur.haveCPU || cur.cpuTotal < prev.cpuTotal || cur.cpuSystem <= prev.cpuSystem {
		return 0
	}
	cpuDelta := float64(cur.cpuTotal - prev.cpuTotal)
	sysDelta := float64(cur.cpuSystem - prev.cpuSystem)
	return cpuDelta / sysDelta * float64(cur.onlineCPUs) * 100
}

func rate(a, b uint64, secs float64) float64 {
	if b < a || secs <= 0 {
		return 0
	}
	return float64(b-a) / secs
}

// memoryUsage is usage minus the inactive file cache, as docker stats
// shows it: total_inactive_file on cgroup v1, inactive_file on v2.
func memoryUsage(m container.MemoryStats) uint64 {
	inactive, ok := m.Stats["total_inactive_file"]
	if !ok {
		inactive = m.Stats["inactive_file"]
	}
	if inactive < m.Usage {
		return m.Usage - inactive
	}
	return m.Usage
}

// MetricsResult is one container's outcome in MetricsMany.
type MetricsResult struct {
	Name  string
	Usage drivers.ResourceUsage
	Err   error
}

// MetricsMany samples many containers concurrently, at most
// docker.metrics_parallelism at a time, returning results in the order
// of names. A metrics loop over every running container calls this once
// per interval instead of Metrics per container.
func (d *Driver) MetricsMany(ctx context.Context, names []string) []MetricsResult {
	out := make([]MetricsResult, len(names))
	sem := make(chan struct{}, max(1, d.opts.MetricsParallelism))
	var wg sync.WaitGroup
	for i, n := range names {
		out[i].Name = n
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				out[i].Err = fmt.Errorf("stats of %s: %w", n, ctx.Err())
				return
			}
			defer func() { <-sem }()
			out[i].Usage, out[i].Err = d.Metrics(ctx, n)
		}()
	}
	wg.Wait()
	return out
}

// MetricsBatch implements drivers.MetricsBatcher over MetricsMany.
func (d *Driver) MetricsBatch(ctx context.Context, names []string) (map[string]drivers.ResourceUsage, map[string]error, error) {
	samples := make(map[string]drivers.ResourceUsage, len(names))
	failed := map[string]error{}
	for _, r := range d.MetricsMany(ctx, names) {
		if r.Err != nil {
			failed[r.Name] = r.Err
			continue
		}
		samples[r.Name] = r.Usage
	}
	return samples, failed, nil
}

var _ drivers.MetricsBatcher = (*Driver)(nil)
