package proxmox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	gp "github.com/luthermonson/go-proxmox"

	"github.com/subbus/subbus/internal/drivers"
)

// source is where a create takes its guest from (base_image).
type source struct {
	kind     string   // qemu or lxc
	template resource // a guest to clone, when its VMID is set
	volume   string   // storage:vztmpl/… (lxc) or storage:iso/… (qemu)
}

// resolveSource reads base_image: a volume ID (storage:vztmpl/… makes an
// LXC container, storage:iso/… a VM booting that ISO), the name or VMID of
// a guest to clone (usually a template), or empty (a VM with a blank
// disk). kind is the template's metadata kind ("" when not given).
func (d *Driver) resolveSource(ctx context.Context, image, kind string) (source, error) {
	switch {
	case image == "":
		if kind == kindLXC {
			return source{}, drivers.Errorf(drivers.InvalidArgument, "proxmox: base_image: an LXC container needs a template volume (storage:vztmpl/…) or a template guest")
		}
		if kind == "" {
			kind = d.opts.DefaultKind
		}
		if kind == kindLXC {
			return source{}, drivers.Errorf(drivers.InvalidArgument, "proxmox: base_image: proxmox.default_kind is lxc, which needs a template volume or guest")
		}
		return source{kind: kindQemu}, nil
	case strings.Contains(image, ":"):
		store, vol, _ := strings.Cut(image, ":")
		var want string
		switch {
		case strings.HasPrefix(vol, "vztmpl/"):
			want = kindLXC
		case strings.HasPrefix(vol, "iso/"):
			want = kindQemu
		default:
			return source{}, drivers.Errorf(drivers.InvalidArgument, "proxmox: base_image %q: a volume must be storage:vztmpl/… (LXC) or storage:iso/… (QEMU)", image)
		}
		if store == "" {
			return source{}, drivers.Errorf(drivers.InvalidArgument, "proxmox: base_image %q: no storage", image)
		}
		if kind != "" && kind != want {
			return source{}, drivers.Errorf(drivers.InvalidArgument, "proxmox: metadata kind %s does not fit base_image %q (a %s volume)", kind, image, want)
		}
		if err := d.checkVolume(ctx, store, image, strings.TrimSuffix(strings.SplitN(vol, "/", 2)[0], "/")); err != nil {
			return source{}, err
		}
		return source{kind: want, volume: image}, nil
	}
	r, err := d.find(ctx, image)
	if err != nil {
		var ng *errNoGuest
		if errors.As(err, &ng) {
			return source{}, fmt.Errorf("proxmox: base_image %q: no such template guest: %w", image, err)
		}
		return source{}, err
	}
	if kind != "" && kind != r.Type {
		return source{}, drivers.Errorf(drivers.InvalidArgument, "proxmox: metadata kind %s does not fit base_image %q (a %s guest)", kind, image, r.Type)
	}
	return source{kind: r.Type, template: r}, nil
}

// errNoImage is a base_image volume the storage does not have.
type errNoImage struct{ volume, node string }

func (e *errNoImage) Error() string {
	return fmt.Sprintf("proxmox: base_image %q: no such volume on node %s", e.volume, e.node)
}

// checkVolume makes sure the create node's storage has the volume (PVE
// would only notice a missing ISO when the VM boots).
func (d *Driver) checkVolume(ctx context.Context, store, volid, content string) error {
	c, node, err := d.conn()
	if err != nil {
		return err
	}
	var list []struct {
		VolID string `json:"volid"`
	}
	path := fmt.Sprintf("/nodes/%s/storage/%s/content?content=%s", url.PathEscape(node), url.PathEscape(store), url.QueryEscape(content))
	if err := c.Get(ctx, path, &list); err != nil {
		return fmt.Errorf("proxmox: base_image %q: %w", volid, err)
	}
	for _, v := range list {
		if v.VolID == volid {
			return nil
		}
	}
	return &errNoImage{volume: volid, node: node}
}

// checkTemplate refuses what a PVE guest cannot take.
func checkTemplate(t drivers.InstanceTemplate) error {
	switch {
	case isVMIDName(t.Name):
		return drivers.Errorf(drivers.InvalidArgument, "proxmox: name %q: all-digit names address guests by VMID and cannot be created", t.Name)
	case len(t.Command) > 0:
		return drivers.Unsupportedf("proxmox: command: a guest runs its own OS; use exec for commands")
	case t.WorkDir != "":
		return drivers.Unsupportedf("proxmox: workdir: a guest has no working directory (exec takes one)")
	case t.User != "":
		return drivers.Unsupportedf("proxmox: user: a guest has no run-as user (exec takes one)")
	case len(t.Environment) > 0:
		return drivers.Unsupportedf("proxmox: environment: PVE cannot set a guest's environment")
	case len(t.Volumes) > 0:
		return drivers.Unsupportedf("proxmox: volumes: not supported; attach disks in PVE")
	case t.Resources.PIDs != 0:
		return drivers.Unsupportedf("proxmox: resources.pids: PVE cannot limit processes")
	case t.Resources.NetworkMbps != 0:
		return drivers.Unsupportedf("proxmox: resources.network_mbps: not supported")
	}
	for k := range t.Metadata {
		if k == metaVMID || k == metaNode || k == metaTmpl {
			return drivers.Errorf(drivers.InvalidArgument, "proxmox: metadata key %q is reserved (the driver fills it)", k)
		}
	}
	if k := t.Metadata[metaKind]; k != "" && k != kindQemu && k != kindLXC {
		return drivers.Errorf(drivers.InvalidArgument, "proxmox: metadata kind %q: want qemu or lxc", k)
	}
	if c := t.Resources.CPUCores; c != 0 && (c != math.Trunc(c) || c < 1) {
		return drivers.Errorf(drivers.InvalidArgument, "proxmox: resources.cpu_cores %v: PVE counts whole cores", c)
	}
	return nil
}

// newCreateID returns a random id that marks one Create call's guest.
func newCreateID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Create makes a stopped guest from the template: a clone of a template
// guest, an LXC container from a vztmpl volume, or a VM from an ISO (or a
// blank disk). The VMID comes from /cluster/nextid. The guest carries the
// tag `subbus` and the marker (image, metadata, this call's create id).
// Whatever fails after PVE made the guest removes it; when ctx ends first,
// that happens in the background once PVE's task has ended.
func (d *Driver) Create(ctx context.Context, t drivers.InstanceTemplate) (drivers.Instance, error) {
	if err := checkTemplate(t); err != nil {
		return drivers.Instance{}, err
	}
	// A retry of a create that timed out finds the first attempt's guest
	// until its reconciliation has removed it: wait for that.
	if err := d.waitReconciled(ctx, t.Name); err != nil {
		return drivers.Instance{}, err
	}
	list, err := d.resources(ctx)
	if err != nil {
		return drivers.Instance{}, err
	}
	reqID := drivers.RequestID(ctx)
	if r, err := match(list, t.Name); err == nil {
		if in, ok := d.sameRequest(ctx, r, reqID); ok {
			return in, nil
		}
		return drivers.Instance{}, &errNameTaken{name: t.Name, vmid: r.vmid()}
	} else if amb := (*errAmbiguous)(nil); errors.As(err, &amb) {
		return drivers.Instance{}, &errNameTaken{name: t.Name, vmid: amb.vmids[0]}
	}
	src, err := d.resolveSource(ctx, t.BaseImage, t.Metadata[metaKind])
	if err != nil {
		return drivers.Instance{}, err
	}
	meta := map[string]string{}
	for k, v := range t.Metadata {
		if k != metaKind {
			meta[k] = v
		}
	}
	m := marker{Image: t.BaseImage, Meta: meta, Created: time.Now().UTC().Truncate(time.Second), CreateID: newCreateID(), RequestID: reqID}
	if len(meta) == 0 {
		m.Meta = nil
	}
	r, err := d.createGuest(ctx, t, src, m)
	if err != nil {
		return drivers.Instance{}, err
	}
	return d.made(ctx, r.vmid())
}

// sameRequest reports whether the guest r holding the name was made by
// this very request (a retry carrying the same request id, after the
// first attempt's reply was lost): then it is the answer. A guest still
// being made, or not made by this driver, is not.
func (d *Driver) sameRequest(ctx context.Context, r resource, reqID string) (drivers.Instance, bool) {
	if reqID == "" || !r.managed() || r.Lock != "" {
		return drivers.Instance{}, false
	}
	cfg, err := d.config(ctx, r)
	if err != nil {
		return drivers.Instance{}, false
	}
	if m, ok := parseMarker(cfg.str("description")); !ok || m.RequestID != reqID {
		return drivers.Instance{}, false
	}
	return d.instance(r, cfg), true
}

// madeReadTimeout bounds the read of a guest a create has finished.
const madeReadTimeout = 10 * time.Second

// made returns the guest a create or clone has finished making. The guest
// is complete, so the answer is success even if ctx ends now: the read
// gets its own short deadline (a timeout here would make the caller retry
// into already_exists).
func (d *Driver) made(ctx context.Context, vmid int) (drivers.Instance, error) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), madeReadTimeout)
	defer cancel()
	return d.Get(rctx, strconv.Itoa(vmid))
}

// createGuest allocates a VMID and makes the guest, retrying with a new
// VMID when another client took the one nextid gave.
func (d *Driver) createGuest(ctx context.Context, t drivers.InstanceTemplate, src source, m marker) (resource, error) {
	_, node, err := d.conn()
	if err != nil {
		return resource{}, err
	}
	if src.template.vmid() != 0 {
		node = src.template.Node // a clone is made where its source lives
	}
	// PVE accepts a NIC on a bridge that does not exist and fails only at
	// start: check the networks first.
	if len(t.Networks) > 0 {
		nets, err := d.networks(ctx, node)
		if err != nil {
			return resource{}, err
		}
		for _, n := range t.Networks {
			if err := checkNetwork(nets, src.kind, n, node); err != nil {
				return resource{}, err
			}
		}
	}
	for attempt := 0; ; attempt++ {
		vmid, err := d.nextID(ctx)
		if err != nil {
			return resource{}, err
		}
		r := resource{Type: src.kind, Node: node, VMID: num(vmid), Name: t.Name, Status: "stopped"}
		err = d.makeGuest(ctx, r, t, src, m)
		if err == nil {
			return r, nil
		}
		if attempt < 3 && vmidTaken(err, vmid) {
			continue
		}
		return resource{}, err
	}
}

// vmidTaken reports a create that lost the race for its VMID.
func vmidTaken(err error, vmid int) bool {
	s := err.Error()
	return strings.Contains(s, fmt.Sprintf("VM %d already exists", vmid)) ||
		strings.Contains(s, fmt.Sprintf("CT %d already exists", vmid))
}

// nextID asks /cluster/nextid (a string on the wire).
func (d *Driver) nextID(ctx context.Context) (int, error) {
	c, err := d.client()
	if err != nil {
		return 0, err
	}
	var s string
	if err := c.Get(ctx, "/cluster/nextid", &s); err != nil {
		return 0, fmt.Errorf("proxmox: GET /cluster/nextid: %w", err)
	}
	id, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("proxmox: /cluster/nextid answered %q: %w", s, err)
	}
	return id, nil
}

// makeGuest sends the create (or clone) for VMID r and waits for it, then
// applies what the clone did not set. On failure it removes what PVE made.
func (d *Driver) makeGuest(ctx context.Context, r resource, t drivers.InstanceTemplate, src source, m marker) error {
	var (
		path   string
		params map[string]any
		after  map[string]any // PUT config once the clone exists
	)
	desc := withMarker("", m)
	nets, err := nicParams(r.Type, t.Networks, d.opts.Bridge, src.template.vmid() == 0)
	if err != nil {
		return err
	}
	if src.template.vmid() != 0 {
		// PVE links clones only to templates.
		full := d.opts.fullClone() || src.template.Template != 1
		path = src.template.path() + "/clone"
		params = map[string]any{"newid": r.vmid(), "description": desc, "full": full}
		if r.Type == kindQemu {
			params["name"] = t.Name
		} else {
			params["hostname"] = t.Name
		}
		if full {
			params["storage"] = d.opts.Storage
		}
		after = map[string]any{"tags": managedTag}
		for k, v := range limitParams(r.Type, t.Resources) {
			after[k] = v
		}
		if len(t.Networks) > 0 {
			for k, v := range nets {
				after[k] = v
			}
		}
	} else {
		path = fmt.Sprintf("/nodes/%s/%s", r.Node, r.Type)
		params = map[string]any{"vmid": r.vmid(), "description": desc, "tags": managedTag}
		disk := d.opts.DiskGB
		if t.Resources.DiskGB > 0 {
			disk = int(math.Ceil(t.Resources.DiskGB))
		}
		if r.Type == kindQemu {
			params["name"] = t.Name
			params["scsihw"] = "virtio-scsi-single"
			params["scsi0"] = fmt.Sprintf("%s:%d", d.opts.Storage, disk)
			if src.volume != "" {
				params["ide2"] = src.volume + ",media=cdrom"
			}
			if d.opts.qemuAgent() {
				params["agent"] = "1"
			}
		} else {
			params["hostname"] = t.Name
			params["ostemplate"] = src.volume
			params["rootfs"] = fmt.Sprintf("%s:%d", d.opts.Storage, disk)
			params["unprivileged"] = d.opts.lxcUnprivileged()
		}
		for k, v := range limitParams(r.Type, t.Resources) {
			params[k] = v
		}
		for k, v := range nets {
			params[k] = v
		}
	}
	upid, err := d.startTask(ctx, "POST", path, params)
	if err != nil {
		if ctx.Err() != nil {
			// The request may have reached PVE: look for the guest later.
			d.reconcile(r, "", m.CreateID)
		}
		return fmt.Errorf("proxmox: create %s (VMID %d): %w", t.Name, r.vmid(), err)
	}
	if err := d.wait(ctx, upid); err != nil {
		if ctx.Err() != nil {
			d.reconcile(r, upid, m.CreateID)
		}
		// A failed create task leaves no guest (PVE removes it).
		return fmt.Errorf("proxmox: create %s (VMID %d): %w", t.Name, r.vmid(), err)
	}
	if len(after) > 0 {
		if err := d.completeClone(ctx, r, after, len(t.Networks) > 0); err != nil {
			d.removeHalfMade(ctx, r, m.CreateID)
			return fmt.Errorf("proxmox: create %s (VMID %d): %w", t.Name, r.vmid(), err)
		}
		if err := d.putConfig(ctx, r, after); err != nil {
			d.removeHalfMade(ctx, r, m.CreateID)
			return fmt.Errorf("proxmox: create %s (VMID %d): configure the clone: %w", t.Name, r.vmid(), err)
		}
	}
	return nil
}

// completeClone adds to params the clone's own tags plus `subbus` and,
// when the template names networks, a delete of the clone's NICs they do
// not replace.
func (d *Driver) completeClone(ctx context.Context, r resource, params map[string]any, replaceNICs bool) error {
	cfg, err := d.config(ctx, r)
	if err != nil {
		return err
	}
	tags := splitTags(cfg.str("tags"))
	if !slices.Contains(tags, managedTag) {
		tags = append(tags, managedTag)
	}
	params["tags"] = strings.Join(tags, ";")
	if !replaceNICs {
		return nil
	}
	var del []string
	for _, k := range nicKeys(cfg) {
		if _, set := params[k]; !set {
			del = append(del, k)
		}
	}
	if len(del) > 0 {
		params["delete"] = strings.Join(del, ",")
	}
	return nil
}

// putConfig changes a guest's configuration synchronously (PUT …/config).
func (d *Driver) putConfig(ctx context.Context, r resource, params map[string]any) error {
	c, err := d.client()
	if err != nil {
		return err
	}
	if err := c.Put(ctx, r.path()+"/config", params, nil); err != nil {
		return fmt.Errorf("PUT %s/config: %w", r.path(), err)
	}
	return nil
}

// limitParams are the config keys of cores and memory.
func limitParams(kind string, l drivers.ResourceLimits) map[string]any {
	p := map[string]any{}
	if l.CPUCores > 0 {
		p["cores"] = int(l.CPUCores)
	}
	if l.MemoryMB > 0 {
		if kind == kindQemu {
			p["memory"] = strconv.FormatInt(l.MemoryMB, 10) // a property string since PVE 8.1
		} else {
			p["memory"] = l.MemoryMB
		}
	}
	return p
}

// nicParams are the net[n] keys for networks (one NIC on the default
// bridge when there are none and withDefault).
func nicParams(kind string, nets []drivers.NetworkConfig, bridge string, withDefault bool) (map[string]any, error) {
	if len(nets) == 0 && withDefault && bridge != "" {
		nets = []drivers.NetworkConfig{{NetworkName: bridge}}
	}
	p := map[string]any{}
	for i, n := range nets {
		v, err := nicValue(kind, i, n)
		if err != nil {
			return nil, err
		}
		p["net"+strconv.Itoa(i)] = v
	}
	return p, nil
}

// nicValue is the net[n] property string of a NIC on n's bridge.
func nicValue(kind string, index int, n drivers.NetworkConfig) (string, error) {
	if kind == kindQemu {
		if n.IPAddress != "" || n.Gateway != "" || len(n.DNSServers) > 0 {
			return "", drivers.Unsupportedf("proxmox: network %s: a VM's address is set inside the guest (or by cloud-init), not on its NIC", n.NetworkName)
		}
		return "virtio,bridge=" + n.NetworkName, nil
	}
	if len(n.DNSServers) > 0 {
		return "", drivers.Unsupportedf("proxmox: network %s: dns_servers: set nameserver on the container", n.NetworkName)
	}
	v := fmt.Sprintf("name=eth%d,bridge=%s", index, n.NetworkName)
	switch {
	case n.IPAddress == "":
		v += ",ip=dhcp"
	case !strings.Contains(n.IPAddress, "/"):
		return "", drivers.Errorf(drivers.InvalidArgument, "proxmox: network %s: ip_address %q needs a prefix length (10.0.0.5/24)", n.NetworkName, n.IPAddress)
	default:
		v += ",ip=" + n.IPAddress
	}
	if n.Gateway != "" {
		v += ",gw=" + n.Gateway
	}
	return v, nil
}

// removeHalfMade deletes a guest this create made (checked by its create
// id), now if ctx allows, else in the background.
func (d *Driver) removeHalfMade(ctx context.Context, r resource, createID string) {
	if ctx.Err() != nil {
		d.reconcile(r, "", createID)
		return
	}
	if _, err := d.destroyOwn(ctx, r, createID); err != nil {
		d.reconcile(r, "", createID)
	}
}

// reconcile removes, in the background, the guest an abandoned create
// may have made: it waits (bounded by reconcile_timeout) for PVE's task,
// then destroys VMID r if it carries createID. Without a UPID (the request
// may or may not have reached PVE) it looks for the guest for a while.
func (d *Driver) reconcile(r resource, upid gp.UPID, createID string) {
	d.bg.Add(1)
	done := make(chan struct{})
	d.pendingMu.Lock()
	if d.pending == nil {
		d.pending = map[string]chan struct{}{}
	}
	d.pending[r.Name] = done
	d.pendingMu.Unlock()
	go func() {
		defer d.bg.Done()
		defer func() {
			d.pendingMu.Lock()
			if d.pending[r.Name] == done {
				delete(d.pending, r.Name)
			}
			d.pendingMu.Unlock()
			close(done)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(d.opts.ReconcileTimeout))
		defer cancel()
		if upid != "" {
			if err := d.wait(ctx, upid); err != nil && taskText(err) != "" {
				return // the create task failed: PVE made nothing
			}
		}
		tick := time.NewTicker(time.Duration(d.opts.TaskPollInterval))
		defer tick.Stop()
		began := time.Now()
		for {
			found, err := d.destroyOwn(ctx, r, createID)
			// Without a UPID the create may still arrive: keep looking a while.
			if err == nil && (found || upid != "" || time.Since(began) > noUPIDGrace) {
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
}

// waitReconciled waits (under ctx) until no reconciliation of an
// abandoned create of name is running.
func (d *Driver) waitReconciled(ctx context.Context, name string) error {
	d.pendingMu.Lock()
	done := d.pending[name]
	d.pendingMu.Unlock()
	if done == nil {
		return nil
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("proxmox: create %s: waiting for the removal of an earlier attempt's guest: %w", name, ctx.Err())
	}
}

// noUPIDGrace is how long the reconciliation of a create whose request
// got no answer looks for the guest it may have made.
const noUPIDGrace = 15 * time.Second

// errStillLocked is a guest whose create is still running.
var errStillLocked = errors.New("the guest is still locked")

// destroyOwn destroys VMID r if it is the guest createID made; found
// says whether it existed. A locked guest (its create still running) is
// errStillLocked, for the caller to retry.
func (d *Driver) destroyOwn(ctx context.Context, r resource, createID string) (found bool, err error) {
	list, err := d.resources(ctx)
	if err != nil {
		return false, err
	}
	var cur *resource
	for i := range list {
		if list[i].vmid() == r.vmid() {
			cur = &list[i]
		}
	}
	if cur == nil {
		return false, nil
	}
	if cur.Lock != "" {
		return true, errStillLocked
	}
	cfg, err := d.config(ctx, *cur)
	if err != nil {
		if classify(err) == drivers.NotFound {
			return false, nil
		}
		return true, err
	}
	if m, ok := parseMarker(cfg.str("description")); !ok || m.CreateID != createID {
		return false, nil // another client's guest took the VMID: not ours
	}
	if cur.state() != drivers.StateStopped {
		if err := d.async(ctx, "POST", cur.path()+"/status/stop", nil, "stop "+cur.displayName()); err != nil {
			return true, err
		}
	}
	return true, d.destroy(ctx, *cur, true)
}

// destroy deletes a stopped guest; purge also removes it from backup
// jobs, replication and HA and destroys its unreferenced disks.
func (d *Driver) destroy(ctx context.Context, r resource, purge bool) error {
	var params map[string]any
	if purge {
		params = map[string]any{"purge": true, "destroy-unreferenced-disks": true}
	}
	return d.async(ctx, "DELETE", r.path(), params, "delete "+r.displayName())
}
