package libvirt

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/subbus/subbus/internal/drivers"
)

// cpuSample is the previous sample of a domain, for rates.
type cpuSample struct {
	at       time.Time
	counters drivers.UsageCounters
	measured drivers.Measure
}

// statsTypes are the groups asked of ConnectGetAllDomainStats.
const statsTypes = golibvirt.DomainStatsState | golibvirt.DomainStatsCPUTotal | golibvirt.DomainStatsBalloon |
	golibvirt.DomainStatsVCPU | golibvirt.DomainStatsInterface | golibvirt.DomainStatsBlock

// Metrics samples one domain (see MetricsBatch).
func (d *Driver) Metrics(ctx context.Context, name string) (drivers.ResourceUsage, error) {
	got, failed, err := d.MetricsBatch(ctx, []string{name})
	if err != nil {
		return drivers.ResourceUsage{}, err
	}
	if err := failed[name]; err != nil {
		return drivers.ResourceUsage{}, err
	}
	return got[name], nil
}

// MetricsBatch samples many domains with one ConnectGetAllDomainStats
// call: cpu.time (CPU, whose percentage comes from the delta to the
// previous sample, 100 = one core), balloon.rss (memory: what the QEMU
// process holds on the host) or else balloon.current, block.* (disk
// allocation and I/O) and net.* (traffic). Where the hypervisor reports no
// cpu.time (the test driver) it falls back to DomainGetInfo and
// DomainMemoryStats. Measured says what was really reported. A shut-off
// domain gives a sample with no rates.
func (d *Driver) MetricsBatch(ctx context.Context, names []string) (map[string]drivers.ResourceUsage, map[string]error, error) {
	l, err := d.conn()
	if err != nil {
		return nil, nil, err
	}
	failed := map[string]error{}
	var doms []golibvirt.Domain
	if len(names) == 1 {
		dom, err := d.lookup(ctx, l, names[0])
		if err != nil {
			if classify(err) != drivers.NotFound {
				return nil, nil, err
			}
			failed[names[0]] = err
		} else {
			doms = append(doms, dom)
		}
	} else {
		// One listing instead of a lookup per name.
		all, err := call(ctx, func() ([]golibvirt.Domain, error) {
			ds, _, err := l.ConnectListAllDomains(1, golibvirt.ConnectListDomainsActive|golibvirt.ConnectListDomainsInactive)
			return ds, err
		})
		if err != nil {
			return nil, nil, fmt.Errorf("listing domains: %w", err)
		}
		byName := make(map[string]golibvirt.Domain, len(all))
		for _, dom := range all {
			byName[dom.Name] = dom
		}
		for _, n := range names {
			if dom, ok := byName[n]; ok {
				doms = append(doms, dom)
			} else {
				failed[n] = drivers.Errorf(drivers.NotFound, "domain %s not found", n)
			}
		}
	}
	out := map[string]drivers.ResourceUsage{}
	if len(doms) == 0 {
		return out, failed, nil
	}
	recs, err := call(ctx, func() ([]golibvirt.DomainStatsRecord, error) {
		return l.ConnectGetAllDomainStats(doms, uint32(statsTypes), 0)
	})
	if err != nil {
		return nil, nil, fmt.Errorf("domain stats: %w", err)
	}
	now := time.Now()
	for _, r := range recs {
		p := params(r.Params)
		u := drivers.ResourceUsage{Time: now}
		state, _ := p.uint("state.state")
		if !active(int32(state)) {
			d.forget(r.Dom)
			out[r.Dom.Name] = u
			continue
		}
		c := &u.Counters
		if v, ok := p.uint("cpu.time"); ok {
			c.CPUTimeNs = v
			u.Measured |= drivers.MeasureCPU
		}
		if v, ok := p.uint("balloon.rss"); ok && v > 0 {
			c.MemoryBytes = v << 10
			u.Measured |= drivers.MeasureMemory
		} else if v, ok := p.uint("balloon.current"); ok {
			c.MemoryBytes = v << 10
			u.Measured |= drivers.MeasureMemory
		}
		if n, ok := p.uint("block.count"); ok {
			u.Measured |= drivers.MeasureDiskIO | drivers.MeasureDisk
			for i := uint64(0); i < n; i++ {
				pre := "block." + strconv.FormatUint(i, 10) + "."
				rd, _ := p.uint(pre + "rd.bytes")
				wr, _ := p.uint(pre + "wr.bytes")
				c.DiskReadBytes += rd
				c.DiskWriteBytes += wr
				if v, ok := p.uint(pre + "physical"); ok {
					c.DiskUsedBytes += v
				} else if v, ok := p.uint(pre + "allocation"); ok {
					c.DiskUsedBytes += v
				}
			}
		}
		if n, ok := p.uint("net.count"); ok {
			u.Measured |= drivers.MeasureNetwork
			for i := uint64(0); i < n; i++ {
				pre := "net." + strconv.FormatUint(i, 10) + "."
				rx, _ := p.uint(pre + "rx.bytes")
				tx, _ := p.uint(pre + "tx.bytes")
				c.NetRxBytes += rx
				c.NetTxBytes += tx
			}
		}
		if !u.Measured.Has(drivers.MeasureCPU) {
			d.fallback(ctx, l, r.Dom, &u)
		}
		u.MemoryMB = float64(c.MemoryBytes) / (1 << 20)
		u.DiskGB = float64(c.DiskUsedBytes) / (1 << 30)
		d.rates(r.Dom, &u)
		out[r.Dom.Name] = u
	}
	for _, dom := range doms {
		if _, ok := out[dom.Name]; !ok {
			failed[dom.Name] = drivers.Errorf(drivers.NotFound, "domain %s vanished while it was sampled", dom.Name)
		}
	}
	return out, failed, nil
}

// fallback fills CPU and memory from DomainGetInfo and DomainMemoryStats.
func (d *Driver) fallback(ctx context.Context, l *golibvirt.Libvirt, dom golibvirt.Domain, u *drivers.ResourceUsage) {
	type info struct{ mem, cpu uint64 }
	if in, err := call(ctx, func() (info, error) {
		_, _, mem, _, cpu, err := l.DomainGetInfo(dom)
		return info{mem, cpu}, err
	}); err == nil {
		u.Counters.CPUTimeNs = in.cpu
		u.Measured |= drivers.MeasureCPU
		if !u.Measured.Has(drivers.MeasureMemory) {
			u.Counters.MemoryBytes = in.mem << 10
			u.Measured |= drivers.MeasureMemory
		}
	}
	if st, err := call(ctx, func() ([]golibvirt.DomainMemoryStat, error) { return l.DomainMemoryStats(dom, 16, 0) }); err == nil {
		for _, s := range st {
			if s.Tag == 7 { // VIR_DOMAIN_MEMORY_STAT_RSS (KiB)
				u.Counters.MemoryBytes = s.Val << 10
				u.Measured |= drivers.MeasureMemory
			}
		}
	}
}

// rates computes the rates of u from the previous sample of the domain
// and keeps u as the new previous sample.
func (d *Driver) rates(dom golibvirt.Domain, u *drivers.ResourceUsage) {
	key := uuidString(dom.UUID)
	d.metricsMu.Lock()
	prev, ok := d.prev[key]
	d.prev[key] = cpuSample{at: u.Time, counters: u.Counters, measured: u.Measured}
	d.metricsMu.Unlock()
	if !ok {
		return
	}
	dt := u.Time.Sub(prev.at).Seconds()
	if dt <= 0 {
		return
	}
	c, p := u.Counters, prev.counters
	rate := func(now, before uint64) float64 {
		if now < before {
			return 0 // counters reset (restarted)
		}
		return float64(now-before) / dt
	}
	if u.Measured.Has(drivers.MeasureCPU) && prev.measured.Has(drivers.MeasureCPU) {
		u.CPUPercent = rate(c.CPUTimeNs, p.CPUTimeNs) / 1e9 * 100
	}
	if u.Measured.Has(drivers.MeasureDiskIO) && prev.measured.Has(drivers.MeasureDiskIO) {
		u.DiskReadMBps = rate(c.DiskReadBytes, p.DiskReadBytes) / 1e6
		u.DiskWriteMBps = rate(c.DiskWriteBytes, p.DiskWriteBytes) / 1e6
	}
	if u.Measured.Has(drivers.MeasureNetwork) && prev.measured.Has(drivers.MeasureNetwork) {
		u.NetworkRxMbps = rate(c.NetRxBytes, p.NetRxBytes) * 8 / 1e6
		u.NetworkTxMbps = rate(c.NetTxBytes, p.NetTxBytes) * 8 / 1e6
	}
}

// forget drops the previous sample of a domain that stopped.
func (d *Driver) forget(dom golibvirt.Domain) {
	d.metricsMu.Lock()
	delete(d.prev, uuidString(dom.UUID))
	d.metricsMu.Unlock()
}

// paramMap reads typed parameters by name.
type paramMap map[string]any

func params(ps []golibvirt.TypedParam) paramMap {
	m := make(paramMap, len(ps))
	for _, p := range ps {
		m[p.Field] = p.Value.I
	}
	return m
}

// uint returns a numeric parameter as uint64.
func (m paramMap) uint(key string) (uint64, bool) {
	switch v := m[key].(type) {
	case uint64:
		return v, true
	case int64:
		return uint64(max(v, 0)), true
	case uint32:
		return uint64(v), true
	case int32:
		return uint64(max(v, 0)), true
	case float64:
		return uint64(max(v, 0)), true
	case string:
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		return n, err == nil
	}
	return 0, false
}
