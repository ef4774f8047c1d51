package libvirt

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/subbus/subbus/internal/drivers"
)

// CreateSnapshot takes a native internal snapshot (stored in the qcow2
// disk): of a running domain with its memory, of a stopped one its disk.
// Internal snapshots need qcow2 disks and, on libvirt 9.0, a BIOS (not
// UEFI) guest; libvirt refuses the others.
func (d *Driver) CreateSnapshot(ctx context.Context, name, snapshot string) (drivers.Snapshot, error) {
	l, err := d.conn()
	if err != nil {
		return drivers.Snapshot{}, err
	}
	dom, err := d.lookup(ctx, l, name)
	if err != nil {
		return drivers.Snapshot{}, err
	}
	x, err := (&libvirtxml.DomainSnapshot{Name: snapshot, Description: "subbus snapshot"}).Marshal()
	if err != nil {
		return drivers.Snapshot{}, err
	}
	snap, err := call(ctx, func() (golibvirt.DomainSnapshot, error) {
		return l.DomainSnapshotCreateXML(dom, x, uint32(golibvirt.DomainSnapshotCreateAtomic))
	})
	if err != nil {
		return drivers.Snapshot{}, fmt.Errorf("snapshot %s of domain %s: %w", snapshot, name, err)
	}
	return d.snapshotInfo(ctx, l, name, snap)
}

// snapshotInfo reads a snapshot's definition.
func (d *Driver) snapshotInfo(ctx context.Context, l *golibvirt.Libvirt, name string, snap golibvirt.DomainSnapshot) (drivers.Snapshot, error) {
	x, err := call(ctx, func() (string, error) { return l.DomainSnapshotGetXMLDesc(snap, 0) })
	if err != nil {
		return drivers.Snapshot{}, fmt.Errorf("snapshot %s of domain %s: %w", snap.Name, name, err)
	}
	var def libvirtxml.DomainSnapshot
	if err := def.Unmarshal(x); err != nil {
		return drivers.Snapshot{}, fmt.Errorf("snapshot %s of domain %s: %w", snap.Name, name, err)
	}
	s := drivers.Snapshot{Name: snap.Name, Instance: name, Description: def.Description}
	if sec, err := strconv.ParseInt(def.CreationTime, 10, 64); err == nil {
		s.Created = time.Unix(sec, 0).UTC()
	}
	if def.State != "" {
		if s.Description != "" {
			s.Description += " "
		}
		s.Description += "(taken " + def.State + ")"
	}
	return s, nil
}

// snapshotByName finds a snapshot (NotFound when missing).
func (d *Driver) snapshotByName(ctx context.Context, name, snapshot string) (*golibvirt.Libvirt, golibvirt.DomainSnapshot, error) {
	l, err := d.conn()
	if err != nil {
		return nil, golibvirt.DomainSnapshot{}, err
	}
	dom, err := d.lookup(ctx, l, name)
	if err != nil {
		return nil, golibvirt.DomainSnapshot{}, err
	}
	snap, err := call(ctx, func() (golibvirt.DomainSnapshot, error) { return l.DomainSnapshotLookupByName(dom, snapshot, 0) })
	if err != nil {
		return nil, snap, fmt.Errorf("snapshot %s of domain %s: %w", snapshot, name, err)
	}
	return l, snap, nil
}

// RestoreSnapshot reverts the domain to a snapshot, running or not as the
// domain was when the snapshot was taken.
func (d *Driver) RestoreSnapshot(ctx context.Context, name, snapshot string) error {
	l, snap, err := d.snapshotByName(ctx, name, snapshot)
	if err != nil {
		return err
	}
	if err := call0(ctx, func() error { return l.DomainRevertToSnapshot(snap, 0) }); err != nil {
		return fmt.Errorf("reverting domain %s to snapshot %s: %w", name, snapshot, err)
	}
	return nil
}

// ListSnapshots lists the domain's snapshots, oldest first.
func (d *Driver) ListSnapshots(ctx context.Context, name string) ([]drivers.Snapshot, error) {
	l, err := d.conn()
	if err != nil {
		return nil, err
	}
	dom, err := d.lookup(ctx, l, name)
	if err != nil {
		return nil, err
	}
	snaps, err := call(ctx, func() ([]golibvirt.DomainSnapshot, error) {
		s, _, err := l.DomainListAllSnapshots(dom, 1, 0)
		return s, err
	})
	if err != nil {
		return nil, fmt.Errorf("snapshots of domain %s: %w", name, err)
	}
	out := make([]drivers.Snapshot, 0, len(snaps))
	for _, s := range snaps {
		info, err := d.snapshotInfo(ctx, l, name, s)
		if err != nil {
			if classify(err) == drivers.NotFound {
				continue
			}
			return nil, err
		}
		out = append(out, info)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, nil
}

// DeleteSnapshot deletes a snapshot (its data in the qcow2 disk too).
func (d *Driver) DeleteSnapshot(ctx context.Context, name, snapshot string) error {
	l, snap, err := d.snapshotByName(ctx, name, snapshot)
	if err != nil {
		return err
	}
	if err := call0(ctx, func() error { return l.DomainSnapshotDelete(snap, 0) }); err != nil {
		return fmt.Errorf("deleting snapshot %s of domain %s: %w", snapshot, name, err)
	}
	return nil
}
