package proxmox

import (
	"context"
	"errors"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

// Clone copies a guest under a new name and VMID, on the source's node:
// a full copy unless proxmox.full_clone is false and the source is a
// template (PVE links clones only to templates). The clone is stopped,
// tagged `subbus` and marked with the source's image and metadata.
func (d *Driver) Clone(ctx context.Context, source, target string) (drivers.Instance, error) {
	if isVMIDName(target) {
		return drivers.Instance{}, drivers.Errorf(drivers.InvalidArgument, "proxmox: name %q: all-digit names address guests by VMID and cannot be created", target)
	}
	list, err := d.resources(ctx)
	if err != nil {
		return drivers.Instance{}, err
	}
	src, err := match(list, source)
	if err != nil {
		return drivers.Instance{}, err
	}
	if r, err := match(list, target); err == nil {
		return drivers.Instance{}, &errNameTaken{name: target, vmid: r.vmid()}
	} else if amb := (*errAmbiguous)(nil); errors.As(err, &amb) {
		return drivers.Instance{}, &errNameTaken{name: target, vmid: amb.vmids[0]}
	}
	cfg, err := d.config(ctx, src)
	if err != nil {
		return drivers.Instance{}, err
	}
	m, _ := parseMarker(cfg.str("description"))
	if m.Image == "" {
		m.Image = src.displayName()
	}
	m.CloneOf, m.Created, m.CreateID, m.RequestID = src.displayName(), time.Now().UTC().Truncate(time.Second), newCreateID(), drivers.RequestID(ctx)
	r, err := d.createGuest(ctx, drivers.InstanceTemplate{Name: target}, source2(src), m)
	if err != nil {
		return drivers.Instance{}, err
	}
	return d.made(ctx, r.vmid())
}

// source2 is the create source of a clone of r.
func source2(r resource) source { return source{kind: r.Type, template: r} }
