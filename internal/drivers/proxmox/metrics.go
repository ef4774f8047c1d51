package proxmox

import (
	"context"
	"fmt"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

// sample is the previous metrics sample of a guest.
type sample struct {
	at       time.Time
	counters drivers.UsageCounters
}

// Metrics samples GET …/status/current. PVE's cpu is the fraction of the
// guest's CPUs in use, so CPUPercent = cpu × cpus × 100 (100 = one core).
// Memory is what PVE reports in use; disk space is measured for LXC only
// (a VM's disk usage is unknown to PVE without the agent). netin/netout
// and diskread/diskwrite are cumulative byte counters: their rates are
// computed against the previous sample (the first sample has rates of 0).
// PVE reports no cumulative CPU time, so Counters.CPUTimeNs stays 0.
func (d *Driver) Metrics(ctx context.Context, name string) (drivers.ResourceUsage, error) {
	r, err := d.find(ctx, name)
	if err != nil {
		return drivers.ResourceUsage{}, err
	}
	c, err := d.client()
	if err != nil {
		return drivers.ResourceUsage{}, err
	}
	// status/current names the CPU count "cpus" (resources: "maxcpu").
	var st struct {
		resource
		CPUs num `json:"cpus"`
	}
	if err := c.Get(ctx, r.path()+"/status/current", &st); err != nil {
		return drivers.ResourceUsage{}, fmt.Errorf("proxmox: GET %s/status/current: %w", r.path(), err)
	}
	st.Type, st.VMID = r.Type, r.VMID
	if st.MaxCPU == 0 {
		st.MaxCPU = st.CPUs
	}
	return d.usage(st.resource, time.Now()), nil
}

// usage turns a status (or a /cluster/resources entry) into a sample.
func (d *Driver) usage(st resource, now time.Time) drivers.ResourceUsage {
	u := drivers.ResourceUsage{Time: now, Measured: drivers.MeasureCPU | drivers.MeasureMemory}
	if st.state() != drivers.StateRunning {
		d.metricsMu.Lock()
		delete(d.prev, st.vmid())
		d.metricsMu.Unlock()
		return u
	}
	u.Measured |= drivers.MeasureDiskIO | drivers.MeasureNetwork
	cpus := float64(st.MaxCPU)
	if cpus <= 0 {
		cpus = 1
	}
	u.CPUPercent = float64(st.CPU) * cpus * 100
	u.Counters.MemoryBytes = uint64(max(float64(st.Mem), 0))
	u.MemoryMB = float64(u.Counters.MemoryBytes) / (1 << 20)
	if st.Type == kindLXC && st.Disk > 0 {
		u.Measured |= drivers.MeasureDisk
		u.Counters.DiskUsedBytes = uint64(st.Disk)
		u.DiskGB = float64(st.Disk) / (1 << 30)
	}
	u.Counters.NetRxBytes = uint64(max(float64(st.NetIn), 0))
	u.Counters.NetTxBytes = uint64(max(float64(st.NetOut), 0))
	u.Counters.DiskReadBytes = uint64(max(float64(st.DiskRead), 0))
	u.Counters.DiskWriteBytes = uint64(max(float64(st.DiskWrite), 0))

	d.metricsMu.Lock()
	prev, ok := d.prev[st.vmid()]
	d.prev[st.vmid()] = sample{at: now, counters: u.Counters}
	d.metricsMu.Unlock()
	if !ok {
		return u
	}
	dt := now.Sub(prev.at).Seconds()
	if dt <= 0 {
		return u
	}
	rate := func(cur, old uint64) float64 {
		if cur < old {
			return 0 // the guest restarted: counters began again
		}
		return float64(cur-old) / dt
	}
	u.NetworkRxMbps = rate(u.Counters.NetRxBytes, prev.counters.NetRxBytes) * 8 / 1e6
	u.NetworkTxMbps = rate(u.Counters.NetTxBytes, prev.counters.NetTxBytes) * 8 / 1e6
	u.DiskReadMBps = rate(u.Counters.DiskReadBytes, prev.counters.DiskReadBytes) / 1e6
	u.DiskWriteMBps = rate(u.Counters.DiskWriteBytes, prev.counters.DiskWriteBytes) / 1e6
	return u
}

// MetricsBatch samples every named guest from one GET
// /cluster/resources?type=vm (which carries the same fields as
// status/current). Names no guest has are not_found; shared names are
// conflict.
func (d *Driver) MetricsBatch(ctx context.Context, names []string) (map[string]drivers.ResourceUsage, map[string]error, error) {
	list, err := d.resources(ctx)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	samples := make(map[string]drivers.ResourceUsage, len(names))
	failed := map[string]error{}
	for _, n := range names {
		r, err := match(list, n)
		if err != nil {
			failed[n] = err
			continue
		}
		samples[n] = d.usage(r, now)
	}
	return samples, failed, nil
}
