package lxc

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"

	"github.com/subbus/subbus/internal/drivers"
)

// limitsOf reads the limits in force from an (expanded) config:
// limits.cpu (a count, or a CPU set whose size is taken),
// limits.cpu.allowance ("Nms/100ms" is N/100 cores; it wins over
// limits.cpu), limits.memory and limits.processes.
func limitsOf(cfg map[string]string) drivers.ResourceLimits {
	var l drivers.ResourceLimits
	if v := cfg["limits.cpu"]; v != "" {
		l.CPUCores = float64(cpuCount(v))
	}
	if v := cfg["limits.cpu.allowance"]; v != "" {
		if cores, ok := allowanceCores(v); ok {
			l.CPUCores = cores
		}
	}
	if v := cfg["limits.memory"]; v != "" {
		if b, ok := parseBytes(v); ok {
			l.MemoryMB = int64(math.Round(float64(b) / (1 << 20)))
		}
	}
	if v := cfg["limits.processes"]; v != "" {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			l.PIDs = n
		}
	}
	return l
}

// cpuCount reads limits.cpu: "2" is two CPUs, "0-1,3" is a set of three.
func cpuCount(v string) int {
	if n, err := strconv.Atoi(v); err == nil {
		return n
	}
	count := 0
	for _, part := range strings.Split(v, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(part), "-")
		a, err1 := strconv.Atoi(lo)
		if !isRange {
			if err1 == nil {
				count++
			}
			continue
		}
		b, err2 := strconv.Atoi(hi)
		if err1 == nil && err2 == nil && b >= a {
			count += b - a + 1
		}
	}
	return count
}

// allowanceCores reads "150ms/100ms" (1.5 cores). Percentages are a share
// under contention, not a cap, so they are not a core count.
func allowanceCores(v string) (float64, bool) {
	use, period, ok := strings.Cut(v, "/")
	if !ok {
		return 0, false
	}
	u, err1 := strconv.ParseFloat(strings.TrimSuffix(use, "ms"), 64)
	p, err2 := strconv.ParseFloat(strings.TrimSuffix(period, "ms"), 64)
	if err1 != nil || err2 != nil || p <= 0 {
		return 0, false
	}
	return math.Round(u/p*100) / 100, true
}

// parseBytes reads LXD sizes: "512MiB", "1GB", "1073741824".
func parseBytes(v string) (int64, bool) {
	v = strings.TrimSpace(v)
	units := []struct {
		suffix string
		mult   float64
	}{
		{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
		{"kB", 1e3}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1},
	}
	for _, u := range units {
		if strings.HasSuffix(v, u.suffix) {
			f, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(v, u.suffix)), 64)
			return int64(f * u.mult), err == nil
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	return n, err == nil
}

// limitsConfig turns the non-zero fields of l into config keys. Disk and
// network bandwidth are Unsupported: the dir storage backend has no
// quotas, and bandwidth is per NIC, not per instance.
func limitsConfig(l drivers.ResourceLimits) (map[string]string, error) {
	if l.DiskGB != 0 {
		return nil, drivers.Unsupportedf("lxc: disk_gb: root disk quotas depend on the storage backend and are not managed by this driver")
	}
	if l.NetworkMbps != 0 {
		return nil, drivers.Unsupportedf("lxc: network_mbps: LXD limits bandwidth per NIC device, not per instance")
	}
	cfg := map[string]string{}
	if l.CPUCores > 0 {
		whole := math.Ceil(l.CPUCores)
		cfg["limits.cpu"] = strconv.Itoa(int(whole))
		if l.CPUCores == whole {
			cfg["limits.cpu.allowance"] = ""
		} else {
			cfg["limits.cpu.allowance"] = fmt.Sprintf("%dms/100ms", int(math.Round(l.CPUCores*100)))
		}
	}
	if l.MemoryMB > 0 {
		cfg["limits.memory"] = strconv.FormatInt(l.MemoryMB, 10) + "MiB"
	}
	if l.PIDs > 0 {
		cfg["limits.processes"] = strconv.FormatInt(l.PIDs, 10)
	}
	return cfg, nil
}

// GetLimits returns the limits in force (profiles included).
func (d *Driver) GetLimits(ctx context.Context, name string) (drivers.ResourceLimits, error) {
	in, _, err := d.get(ctx, name)
	if err != nil {
		return drivers.ResourceLimits{}, err
	}
	return limitsOf(in.ExpandedConfig), nil
}

// SetLimits applies the non-zero fields with a PATCH of the instance
// config (PATCH merges keys; an empty value removes one) and returns the
// limits now in force. LXD applies them live to a running container.
func (d *Driver) SetLimits(ctx context.Context, name string, l drivers.ResourceLimits) (drivers.ResourceLimits, error) {
	cfg, err := limitsConfig(l)
	if err != nil {
		return drivers.ResourceLimits{}, err
	}
	c, _, err := d.conn()
	if err != nil {
		return drivers.ResourceLimits{}, err
	}
	if len(cfg) > 0 {
		if _, err := c.query(ctx, http.MethodPatch, "/1.0/instances/"+esc(name), map[string]any{"config": cfg}, nil); err != nil {
			return drivers.ResourceLimits{}, err
		}
	}
	return d.GetLimits(ctx, name)
}
