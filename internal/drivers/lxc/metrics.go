package lxc

import (
	"context"
	"net/http"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

// instanceState is GET /1.0/instances/<name>/state.
type instanceState struct {
	Status     string `json:"status"`
	StatusCode int    `json:"status_code"`
	Pid        int64  `json:"pid"`
	Processes  int64  `json:"processes"`
	CPU        struct {
		Usage int64 `json:"usage"` // ns, cumulative
	} `json:"cpu"`
	Memory struct {
		Usage     int64 `json:"usage"`
		UsagePeak int64 `json:"usage_peak"`
	} `json:"memory"`
	Disk    map[string]struct{ Usage int64 } `json:"disk"`
	Network map[string]struct {
		Type     string `json:"type"`
		Counters struct {
			BytesReceived int64 `json:"bytes_received"`
			BytesSent     int64 `json:"bytes_sent"`
		} `json:"counters"`
	} `json:"network"`
}

// sample is the previous metrics sample of an instance.
type sample struct {
	at       time.Time
	counters drivers.UsageCounters
}

// Metrics samples the instance state. CPU% is the delta of cumulative CPU
// time over the wall-clock delta since the previous sample (100 = one
// core); network rates likewise. Disk usage is measured only when the
// storage backend reports it (the dir backend usually does not).
func (d *Driver) Metrics(ctx context.Context, name string) (drivers.ResourceUsage, error) {
	c, _, err := d.conn()
	if err != nil {
		return drivers.ResourceUsage{}, err
	}
	var st instanceState
	if _, err := c.query(ctx, http.MethodGet, "/1.0/instances/"+esc(name)+"/state", nil, &st); err != nil {
		return drivers.ResourceUsage{}, err
	}
	return d.usage(name, &st, time.Now()), nil
}

// usage turns a state into a sample, computing rates from the previous one.
func (d *Driver) usage(name string, st *instanceState, now time.Time) drivers.ResourceUsage {
	u := drivers.ResourceUsage{Time: now}
	running := normState(st.StatusCode, st.Status) == drivers.StateRunning
	if !running {
		d.metricsMu.Lock()
		delete(d.prev, name)
		d.metricsMu.Unlock()
		u.Measured = drivers.MeasureCPU | drivers.MeasureMemory
		return u
	}
	u.Counters.CPUTimeNs = uint64(max(st.CPU.Usage, 0))
	u.Counters.MemoryBytes = uint64(max(st.Memory.Usage, 0))
	u.MemoryMB = float64(u.Counters.MemoryBytes) / (1 << 20)
	u.Measured = drivers.MeasureCPU | drivers.MeasureMemory
	if root, ok := st.Disk["root"]; ok && root.Usage > 0 {
		u.Counters.DiskUsedBytes = uint64(root.Usage)
		u.DiskGB = float64(root.Usage) / (1 << 30)
		u.Measured |= drivers.MeasureDisk
	}
	if len(st.Network) > 0 {
		for ifname, n := range st.Network {
			if ifname == "lo" || n.Type == "loopback" {
				continue
			}
			u.Counters.NetRxBytes += uint64(max(n.Counters.BytesReceived, 0))
			u.Counters.NetTxBytes += uint64(max(n.Counters.BytesSent, 0))
		}
		u.Measured |= drivers.MeasureNetwork
	}
	d.metricsMu.Lock()
	prev, ok := d.prev[name]
	d.prev[name] = sample{at: now, counters: u.Counters}
	d.metricsMu.Unlock()
	if !ok {
		return u
	}
	dt := now.Sub(prev.at).Seconds()
	if dt <= 0 {
		return u
	}
	if u.Counters.CPUTimeNs >= prev.counters.CPUTimeNs {
		u.CPUPercent = float64(u.Counters.CPUTimeNs-prev.counters.CPUTimeNs) / 1e9 / dt * 100
	}
	if u.Counters.NetRxBytes >= prev.counters.NetRxBytes {
		u.NetworkRxMbps = float64(u.Counters.NetRxBytes-prev.counters.NetRxBytes) * 8 / 1e6 / dt
	}
	if u.Counters.NetTxBytes >= prev.counters.NetTxBytes {
		u.NetworkTxMbps = float64(u.Counters.NetTxBytes-prev.counters.NetTxBytes) * 8 / 1e6 / dt
	}
	return u
}

// MetricsAll samples every instance with one request (GET
// /1.0/instances?recursion=2 carries each instance's state), for a caller
// that polls a whole host; rates come from the same previous samples as
// Metrics.
func (d *Driver) MetricsAll(ctx context.Context) (map[string]drivers.ResourceUsage, error) {
	list, err := d.list(ctx, 2)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	out := make(map[string]drivers.ResourceUsage, len(list))
	for i := range list {
		st := list[i].State
		if st == nil {
			st = &instanceState{Status: list[i].Status, StatusCode: list[i].StatusCode}
		}
		out[list[i].Name] = d.usage(list[i].Name, st, now)
	}
	return out, nil
}

// MetricsBatch implements drivers.MetricsBatcher with one MetricsAll
// request; names the server does not have are not_found.
func (d *Driver) MetricsBatch(ctx context.Context, names []string) (map[string]drivers.ResourceUsage, map[string]error, error) {
	all, err := d.MetricsAll(ctx)
	if err != nil {
		return nil, nil, err
	}
	samples := make(map[string]drivers.ResourceUsage, len(names))
	failed := map[string]error{}
	for _, n := range names {
		if u, ok := all[n]; ok {
			samples[n] = u
		} else {
			failed[n] = drivers.Errorf(drivers.NotFound, "instance %q not found", n)
		}
	}
	return samples, failed, nil
}

var _ drivers.MetricsBatcher = (*Driver)(nil)
