package docker

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/subbus/subbus/internal/drivers"
)

// Start implements drivers.Driver.
func (d *Driver) Start(ctx context.Context, name string) (bool, error) {
	ins, err := d.inspect(ctx, name)
	if err != nil {
		return false, err
	}
	if ins.State != nil && ins.State.Running && !ins.State.Paused {
		return false, nil
	}
	c, err := d.client()
	if err != nil {
		return false, err
	}
	if ins.State != nil && ins.State.Paused {
		if _, err := c.ContainerUnpause(ctx, ins.ID, client.ContainerUnpauseOptions{}); err != nil {
			return false, fmt.Errorf("unpause %s: %w", name, err)
		}
		return true, nil
	}
	if _, err := c.ContainerStart(ctx, ins.ID, client.ContainerStartOptions{}); err != nil {
		return false, fmt.Errorf("start %s: %w", name, err)
	}
	return true, nil
}

// stopSeconds converts a stop timeout to Docker's whole seconds (at
// least 1: 0 would kill at once).
func stopSeconds(t time.Duration) *int {
	s := int(math.Ceil(t.Seconds()))
	if s < 1 {
		s = 1
	}
	return &s
}

// Stop implements drivers.Driver: SIGTERM (or the image's stop signal),
// then SIGKILL after opts.Timeout; opts.Force kills at once.
func (d *Driver) Stop(ctx context.Context, name string, opts drivers.StopOptions) (bool, error) {
	ins, err := d.inspect(ctx, name)
	if err != nil {
		return false, err
	}
	if ins.State == nil || !ins.State.Running {
		return false, nil
	}
	c, err := d.client()
	if err != nil {
		return false, err
	}
	if opts.Force {
		if _, err := c.ContainerKill(ctx, ins.ID, client.ContainerKillOptions{Signal: "SIGKILL"}); err != nil {
			if classify(err) == drivers.Conflict { // it stopped meanwhile
				return false, nil
			}
			return false, fmt.Errorf("kill %s: %w", name, err)
		}
		// Kill returns before the container is reaped: wait for it.
		return true, d.waitNotRunning(ctx, ins.ID, name)
	}
	if _, err := c.ContainerStop(ctx, ins.ID, client.ContainerStopOptions{Timeout: stopSeconds(opts.Timeout)}); err != nil {
		return false, fmt.Errorf("stop %s: %w", name, err)
	}
	return true, nil
}

func (d *Driver) waitNotRunning(ctx context.Context, id, name string) error {
	c, err := d.client()
	if err != nil {
		return err
	}
	res := c.ContainerWait(ctx, id, client.ContainerWaitOptions{Condition: container.WaitConditionNotRunning})
	select {
	case <-res.Result:
		return nil
	case err := <-res.Error:
		if classify(err) == drivers.NotFound {
			return nil
		}
		return fmt.Errorf("wait for %s to stop: %w", name, err)
	case <-ctx.Done():
		return fmt.Errorf("wait for %s to stop: %w", name, ctx.Err())
	}
}

// Restart implements drivers.Restarter with Docker's native restart.
func (d *Driver) Restart(ctx context.Context, name string, opts drivers.StopOptions) error {
	ins, err := d.inspect(ctx, name)
	if err != nil {
		return err
	}
	c, err := d.client()
	if err != nil {
		return err
	}
	t := stopSeconds(opts.Timeout)
	if opts.Force {
		zero := 0
		t = &zero
	}
	if _, err := c.ContainerRestart(ctx, ins.ID, client.ContainerRestartOptions{Timeout: t}); err != nil {
		return fmt.Errorf("restart %s: %w", name, err)
	}
	return nil
}

// Delete implements drivers.Driver. A running container is Conflict
// unless opts.Force. The image a clone was made from is removed with it.
func (d *Driver) Delete(ctx context.Context, name string, opts drivers.DeleteOptions) (bool, error) {
	ins, err := d.inspect(ctx, name)
	if err != nil {
		if opts.Force && classify(err) == drivers.NotFound {
			return false, nil
		}
		return false, err
	}
	if ins.State != nil && ins.State.Running && !opts.Force {
		return false, drivers.Errorf(drivers.Conflict, "delete %s: the container is running (stop it first, or force)", name)
	}
	c, err := d.client()
	if err != nil {
		return false, err
	}
	if _, err := c.ContainerRemove(ctx, ins.ID, client.ContainerRemoveOptions{Force: opts.Force, RemoveVolumes: true}); err != nil {
		if opts.Force && classify(err) == drivers.NotFound {
			return false, nil
		}
		return false, fmt.Errorf("delete %s: %w", name, err)
	}
	d.stats.forget(ins.ID)
	d.removeOwnedImages(ins)
	d.removeSnapshotImages(name)
	return true, nil
}

// limitsOf reads limits from Docker resources.
func limitsOf(r container.Resources) drivers.ResourceLimits {
	l := drivers.ResourceLimits{MemoryMB: r.Memory >> 20}
	switch {
	case r.NanoCPUs > 0:
		l.CPUCores = float64(r.NanoCPUs) / 1e9
	case r.CPUQuota > 0 && r.CPUPeriod > 0:
		l.CPUCores = float64(r.CPUQuota) / float64(r.CPUPeriod)
	}
	if r.PidsLimit != nil && *r.PidsLimit > 0 {
		l.PIDs = *r.PidsLimit
	}
	return l
}

// resourcesOf translates limits for create. Swap is disabled (MemorySwap
// = Memory) so the memory limit means what it says.
func resourcesOf(l drivers.ResourceLimits) (container.Resources, error) {
	var r container.Resources
	if err := checkLimitable(l); err != nil {
		return r, err
	}
	if l.CPUCores > 0 {
		r.NanoCPUs = int64(l.CPUCores * 1e9)
	}
	if l.MemoryMB > 0 {
		r.Memory = l.MemoryMB << 20
		r.MemorySwap = r.Memory
	}
	if l.PIDs > 0 {
		p := l.PIDs
		r.PidsLimit = &p
	}
	return r, nil
}

func checkLimitable(l drivers.ResourceLimits) error {
	switch {
	case l.CPUCores < 0 || l.MemoryMB < 0 || l.PIDs < 0 || l.DiskGB < 0 || l.NetworkMbps < 0:
		return drivers.Errorf(drivers.InvalidArgument, "limits must not be negative: %+v", l)
	case l.DiskGB != 0:
		return drivers.Unsupportedf("docker: disk_gb: the disk size of a container cannot be limited (only with overlay2 on xfs with pquota)")
	case l.NetworkMbps != 0:
		return drivers.Unsupportedf("docker: network_mbps: Docker has no network bandwidth limit")
	}
	return nil
}

// GetLimits implements drivers.Limiter.
func (d *Driver) GetLimits(ctx context.Context, name string) (drivers.ResourceLimits, error) {
	ins, err := d.inspect(ctx, name)
	if err != nil {
		return drivers.ResourceLimits{}, err
	}
	if ins.HostConfig == nil {
		return drivers.ResourceLimits{}, nil
	}
	return limitsOf(ins.HostConfig.Resources), nil
}

// SetLimits implements drivers.Limiter through container update. Memory
// and MemorySwap change together (swap stays disabled), since raising
// Memory above the current MemorySwap alone is refused by the daemon.
func (d *Driver) SetLimits(ctx context.Context, name string, l drivers.ResourceLimits) (drivers.ResourceLimits, error) {
	if err := checkLimitable(l); err != nil {
		return drivers.ResourceLimits{}, err
	}
	ins, err := d.inspect(ctx, name)
	if err != nil {
		return drivers.ResourceLimits{}, err
	}
	var r container.Resources
	if l.CPUCores > 0 {
		r.NanoCPUs = int64(l.CPUCores * 1e9)
		if ins.HostConfig != nil && ins.HostConfig.CPUQuota > 0 {
			// NanoCPUs and CPUQuota are exclusive: replace the quota.
			r.CPUQuota, r.CPUPeriod = -1, 0
		}
	}
	if l.MemoryMB > 0 {
		r.Memory = l.MemoryMB << 20
		r.MemorySwap = r.Memory
	}
	if l.PIDs > 0 {
		p := l.PIDs
		r.PidsLimit = &p
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
