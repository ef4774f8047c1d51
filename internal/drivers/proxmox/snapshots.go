package proxmox

import (
	"context"
	"fmt"
	"net/url"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

// snapEntry is one entry of GET …/snapshot.
type snapEntry struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	SnapTime    num    `json:"snaptime"`
	Parent      string `json:"parent"`
	VMState     num    `json:"vmstate"`
}

// CreateSnapshot takes a snapshot (a task). With proxmox.snapshot_vmstate
// a running VM's RAM is included. A taken name is AlreadyExists.
func (d *Driver) CreateSnapshot(ctx context.Context, name, snapshot string) (drivers.Snapshot, error) {
	r, err := d.find(ctx, name)
	if err != nil {
		return drivers.Snapshot{}, err
	}
	list, err := d.snapshots(ctx, r)
	if err != nil {
		return drivers.Snapshot{}, err
	}
	for _, s := range list {
		if s.Name == snapshot {
			return drivers.Snapshot{}, &errSnapTaken{guest: name, snap: snapshot}
		}
	}
	params := map[string]any{"snapname": snapshot, "description": "subbus"}
	if r.Type == kindQemu && d.opts.SnapshotVMState && r.state() == drivers.StateRunning {
		params["vmstate"] = true
	}
	if err := d.async(ctx, "POST", r.path()+"/snapshot", params, "snapshot "+name+"@"+snapshot); err != nil {
		return drivers.Snapshot{}, err
	}
	list, err = d.snapshots(ctx, r)
	if err != nil {
		return drivers.Snapshot{}, err
	}
	for _, s := range list {
		if s.Name == snapshot {
			return s.portable(name), nil
		}
	}
	return drivers.Snapshot{Name: snapshot, Instance: name, Created: time.Now()}, nil
}

// errSnapTaken is a snapshot name a guest already has.
type errSnapTaken struct{ guest, snap string }

func (e *errSnapTaken) Error() string {
	return fmt.Sprintf("proxmox: guest %s already has a snapshot %q", e.guest, e.snap)
}

func (s snapEntry) portable(instance string) drivers.Snapshot {
	out := drivers.Snapshot{Name: s.Name, Instance: instance, Description: s.Description}
	if s.SnapTime > 0 {
		out.Created = time.Unix(int64(s.SnapTime), 0).UTC()
	}
	return out
}

// snapshots lists a guest's snapshots without PVE's "current" pseudo-entry.
func (d *Driver) snapshots(ctx context.Context, r resource) ([]snapEntry, error) {
	c, err := d.client()
	if err != nil {
		return nil, err
	}
	var list []snapEntry
	if err := c.Get(ctx, r.path()+"/snapshot", &list); err != nil {
		return nil, fmt.Errorf("proxmox: GET %s/snapshot: %w", r.path(), err)
	}
	out := list[:0]
	for _, s := range list {
		if s.Name != "current" {
			out = append(out, s)
		}
	}
	return out, nil
}

// ListSnapshots lists the snapshots, oldest first.
func (d *Driver) ListSnapshots(ctx context.Context, name string) ([]drivers.Snapshot, error) {
	r, err := d.find(ctx, name)
	if err != nil {
		return nil, err
	}
	list, err := d.snapshots(ctx, r)
	if err != nil {
		return nil, err
	}
	out := make([]drivers.Snapshot, 0, len(list))
	for _, s := range list {
		out = append(out, s.portable(name))
	}
	return out, nil
}

// RestoreSnapshot rolls the guest back (a task). A missing snapshot is
// NotFound (PVE: "snapshot 'x' does not exist").
func (d *Driver) RestoreSnapshot(ctx context.Context, name, snapshot string) error {
	r, err := d.find(ctx, name)
	if err != nil {
		return err
	}
	return d.async(ctx, "POST", r.path()+"/snapshot/"+url.PathEscape(snapshot)+"/rollback", nil, "rollback "+name+"@"+snapshot)
}

// DeleteSnapshot removes a snapshot (a task).
func (d *Driver) DeleteSnapshot(ctx context.Context, name, snapshot string) error {
	r, err := d.find(ctx, name)
	if err != nil {
		return err
	}
	return d.async(ctx, "DELETE", r.path()+"/snapshot/"+url.PathEscape(snapshot), nil, "delete snapshot "+name+"@"+snapshot)
}
