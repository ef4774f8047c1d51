package lxc

import (
	"context"
	"net/http"
	"strings"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

// snapshotInfo is GET /1.0/instances/<name>/snapshots/<snap>.
type snapshotInfo struct {
	Name        string    `json:"name"`
	CreatedAt   time.Time `json:"created_at"`
	Description string    `json:"description"`
	Size        int64     `json:"size"`
}

func (s snapshotInfo) portable(instance string) drivers.Snapshot {
	name := s.Name
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		name = name[i+1:] // older servers answer "instance/snap"
	}
	return drivers.Snapshot{Name: name, Instance: instance, Created: s.CreatedAt, Description: s.Description, SizeBytes: max(s.Size, 0)}
}

func snapPath(name, snap string) string {
	return "/1.0/instances/" + esc(name) + "/snapshots/" + esc(snap)
}

// getSnapshot returns a snapshot, or NotFound naming it.
func (d *Driver) getSnapshot(ctx context.Context, c *client, name, snap string) (snapshotInfo, error) {
	var s snapshotInfo
	if _, err := c.query(ctx, http.MethodGet, snapPath(name, snap), nil, &s); err != nil {
		if classify(err) == drivers.NotFound {
			if _, _, ierr := d.get(ctx, name); ierr != nil {
				return s, ierr
			}
			return s, drivers.Errorf(drivers.NotFound, "lxc: snapshot %q of instance %q not found", snap, name)
		}
		return s, err
	}
	return s, nil
}

// CreateSnapshot takes a stateless snapshot (native, copy-on-write where
// the storage backend allows).
func (d *Driver) CreateSnapshot(ctx context.Context, name, snap string) (drivers.Snapshot, error) {
	c, _, err := d.conn()
	if err != nil {
		return drivers.Snapshot{}, err
	}
	if _, err := d.getSnapshot(ctx, c, name, snap); err == nil {
		return drivers.Snapshot{}, drivers.Errorf(drivers.AlreadyExists, "lxc: snapshot %q of instance %q already exists", snap, name)
	} else if classify(err) != drivers.NotFound || !strings.Contains(err.Error(), "snapshot") {
		return drivers.Snapshot{}, err
	}
	body := map[string]any{"name": snap, "stateful": false}
	if _, err := c.async(ctx, http.MethodPost, "/1.0/instances/"+esc(name)+"/snapshots", body, nil); err != nil {
		return drivers.Snapshot{}, err
	}
	s, err := d.getSnapshot(ctx, c, name, snap)
	if err != nil {
		return drivers.Snapshot{}, err
	}
	return s.portable(name), nil
}

// RestoreSnapshot restores with PUT {"restore": snap} (PATCH refuses it).
// LXD stops a running container for the restore and starts it again.
func (d *Driver) RestoreSnapshot(ctx context.Context, name, snap string) error {
	c, _, err := d.conn()
	if err != nil {
		return err
	}
	if _, err := d.getSnapshot(ctx, c, name, snap); err != nil {
		return err
	}
	_, err = c.async(ctx, http.MethodPut, "/1.0/instances/"+esc(name), map[string]any{"restore": snap}, nil)
	return err
}

// ListSnapshots lists an instance's snapshots, oldest first.
func (d *Driver) ListSnapshots(ctx context.Context, name string) ([]drivers.Snapshot, error) {
	c, _, err := d.conn()
	if err != nil {
		return nil, err
	}
	var list []snapshotInfo
	if _, err := c.query(ctx, http.MethodGet, "/1.0/instances/"+esc(name)+"/snapshots?recursion=1", nil, &list); err != nil {
		return nil, err
	}
	out := make([]drivers.Snapshot, 0, len(list))
	for _, s := range list {
		out = append(out, s.portable(name))
	}
	return out, nil
}

// DeleteSnapshot deletes one snapshot.
func (d *Driver) DeleteSnapshot(ctx context.Context, name, snap string) error {
	c, _, err := d.conn()
	if err != nil {
		return err
	}
	if _, err := d.getSnapshot(ctx, c, name, snap); err != nil {
		return err
	}
	_, err = c.async(ctx, http.MethodDelete, snapPath(name, snap), nil, nil)
	return err
}

// Clone copies an instance (POST /1.0/instances with a copy source,
// without its snapshots). The clone is created stopped, keeps the
// source's config (so it is managed if the source was) and gets fresh
// volatile keys (MAC addresses, UUID). A cancelled clone is cleaned up
// like a cancelled create.
func (d *Driver) Clone(ctx context.Context, src, target string) (drivers.Instance, error) {
	c, srv, err := d.conn()
	if err != nil {
		return drivers.Instance{}, err
	}
	srcIn, _, err := d.get(ctx, src)
	if err != nil {
		return drivers.Instance{}, err
	}
	if _, _, err := d.get(ctx, target); err == nil {
		return drivers.Instance{}, drivers.Errorf(drivers.AlreadyExists, "lxc: instance %q already exists", target)
	} else if classify(err) != drivers.NotFound {
		return drivers.Instance{}, err
	}
	// The profiles are named explicitly: LXD 5.0 applies none to a copy
	// without them (and then finds no root disk).
	body := createBody{Name: target, Type: "container", Profiles: srcIn.Profiles,
		Source: source{Type: "copy", Source: src, InstanceOnly: true}}
	if srv != nil && (srv.isIncus() || srv.has("instance_create_start")) {
		f := false
		body.Start = &f
	}
	if err := d.runCreate(ctx, c, body); err != nil {
		return drivers.Instance{}, err
	}
	return d.Get(ctx, target)
}
