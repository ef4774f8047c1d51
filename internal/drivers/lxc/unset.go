package lxc

import (
	"context"
	"net/http"

	"github.com/subbus/subbus/internal/drivers"
)

var _ drivers.LimitUnsetter = (*Driver)(nil)

// UnsetLimits removes limits.cpu (and its allowance), limits.memory or
// limits.processes from the instance's own config with a PATCH (an empty
// value removes a key). A limit a profile sets stays in force: it is not
// the instance's to remove. disk_gb and network_mbps are Unsupported, as
// in SetLimits.
func (d *Driver) UnsetLimits(ctx context.Context, name string, fields []drivers.LimitField) (drivers.ResourceLimits, error) {
	cfg := map[string]string{}
	for _, f := range fields {
		switch f {
		case drivers.LimitCPUCores:
			cfg["limits.cpu"], cfg["limits.cpu.allowance"] = "", ""
		case drivers.LimitMemoryMB:
			cfg["limits.memory"] = ""
		case drivers.LimitPIDs:
			cfg["limits.processes"] = ""
		default:
			return drivers.ResourceLimits{}, drivers.Unsupportedf("lxc: %s: not limited by this driver, so there is nothing to remove", f)
		}
	}
	c, _, err := d.conn()
	if err != nil {
		return drivers.ResourceLimits{}, err
	}
	if _, err := c.query(ctx, http.MethodPatch, "/1.0/instances/"+esc(name), map[string]any{"config": cfg}, nil); err != nil {
		return drivers.ResourceLimits{}, err
	}
	return d.GetLimits(ctx, name)
}
