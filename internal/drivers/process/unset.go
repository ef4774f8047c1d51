package process

import (
	"context"
	"fmt"

	"github.com/subbus/subbus/internal/drivers"
)

var _ drivers.LimitUnsetter = (*Driver)(nil)

// UnsetLimits clears the named limits in the instance's record and, when it
// runs, in its cgroup at once (memory.max, cpu.max, pids.max back to
// "max"). disk_gb and network_mbps are Unsupported, as in SetLimits.
func (d *Driver) UnsetLimits(ctx context.Context, name string, fields []drivers.LimitField) (drivers.ResourceLimits, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	in, err := d.lookup(name)
	if err != nil {
		return drivers.ResourceLimits{}, err
	}
	if d.cg == nil {
		return drivers.ResourceLimits{}, drivers.Unsupportedf("limits: this machine offers no writable cgroup file system")
	}
	r := in.rec
	next := r.Limits
	for _, f := range fields {
		switch f {
		case drivers.LimitCPUCores:
			next.CPUCores = 0
		case drivers.LimitMemoryMB:
			next.MemoryMB = 0
		case drivers.LimitPIDs:
			next.PIDs = 0
		default:
			return drivers.ResourceLimits{}, drivers.Unsupportedf("process: %s: not limited by this driver, so there is nothing to remove", f)
		}
	}
	if r.State == drivers.StateRunning {
		if err := d.cg.apply(r.ID, next); err != nil {
			return r.Limits, err
		}
	}
	old := r.Limits
	r.Limits = next
	if err := d.writeRecord(r); err != nil {
		r.Limits = old
		return old, fmt.Errorf("recording limits of %s: %w", name, err)
	}
	return next, nil
}
