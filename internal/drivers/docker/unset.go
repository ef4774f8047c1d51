package docker

import (
	"context"
	"fmt"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/subbus/subbus/internal/drivers"
)

var _ drivers.LimitUnsetter = (*Driver)(nil)

// UnsetLimits removes the pids limit (container update with PidsLimit
// -1). Docker cannot remove a memory or CPU limit from an existing
// container: its update treats 0 as "unchanged", refuses -1 for memory,
// and keeps NanoCpus in the container's configuration (re-applied at the
// next start); so cpu_cores and memory_mb are Unsupported, as are the
// fields Docker never limits.
func (d *Driver) UnsetLimits(ctx context.Context, name string, fields []drivers.LimitField) (drivers.ResourceLimits, error) {
	var r container.Resources
	for _, f := range fields {
		switch f {
		case drivers.LimitPIDs:
			unlimited := int64(-1)
			r.PidsLimit = &unlimited
		case drivers.LimitCPUCores, drivers.LimitMemoryMB:
			return drivers.ResourceLimits{}, drivers.Unsupportedf("docker: %s: Docker cannot remove this limit from an existing container (docker update keeps it); recreate the container without it", f)
		default:
			return drivers.ResourceLimits{}, drivers.Unsupportedf("docker: %s: Docker has no such limit, so there is nothing to remove", f)
		}
	}
	ins, err := d.inspect(ctx, name)
	if err != nil {
		return drivers.ResourceLimits{}, err
	}
	c, err := d.client()
	if err != nil {
		return drivers.ResourceLimits{}, err
	}
	if _, err := c.ContainerUpdate(ctx, ins.ID, client.ContainerUpdateOptions{Resources: &r}); err != nil {
		return drivers.ResourceLimits{}, fmt.Errorf("update limits of %s: %w", name, err)
	}
	return d.GetLimits(ctx, name)
}
