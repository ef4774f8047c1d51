package proxmox

import (
	"context"
	"fmt"

	"github.com/subbus/subbus/internal/drivers"
)

// GetLimits reads cores (QEMU: sockets × cores) and memory from the
// guest's configuration (pending changes included, as PVE shows them).
func (d *Driver) GetLimits(ctx context.Context, name string) (drivers.ResourceLimits, error) {
	r, err := d.find(ctx, name)
	if err != nil {
		return drivers.ResourceLimits{}, err
	}
	cfg, err := d.config(ctx, r)
	if err != nil {
		return drivers.ResourceLimits{}, err
	}
	return limitsOf(r.Type, cfg), nil
}

// SetLimits changes cores and memory with a synchronous PUT …/config. On
// a running VM without CPU/memory hotplug PVE keeps the change pending
// until the next start; a container applies it at once. disk_gb,
// network_mbps and pids are unsupported.
func (d *Driver) SetLimits(ctx context.Context, name string, l drivers.ResourceLimits) (drivers.ResourceLimits, error) {
	switch {
	case l.DiskGB != 0:
		return drivers.ResourceLimits{}, drivers.Unsupportedf("proxmox: limits: disk_gb: resize disks in PVE (a disk cannot shrink)")
	case l.NetworkMbps != 0:
		return drivers.ResourceLimits{}, drivers.Unsupportedf("proxmox: limits: network_mbps: not supported")
	case l.PIDs != 0:
		return drivers.ResourceLimits{}, drivers.Unsupportedf("proxmox: limits: pids: PVE cannot limit processes")
	}
	if err := checkTemplate(drivers.InstanceTemplate{Name: "x", Resources: l}); err != nil {
		return drivers.ResourceLimits{}, err
	}
	r, err := d.find(ctx, name)
	if err != nil {
		return drivers.ResourceLimits{}, err
	}
	if p := limitParams(r.Type, l); len(p) > 0 {
		if err := d.putConfig(ctx, r, p); err != nil {
			return drivers.ResourceLimits{}, fmt.Errorf("proxmox: limits of %s: %w", name, err)
		}
	}
	return d.GetLimits(ctx, name)
}
