package proxmox

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	gp "github.com/luthermonson/go-proxmox"

	"github.com/subbus/subbus/internal/drivers"
)

// Guest types, as PVE names them in paths and /cluster/resources.
const (
	kindQemu = "qemu"
	kindLXC  = "lxc"
)

// Metadata keys the driver fills in every instance; a template may set
// only "kind" (to choose the guest type).
const (
	metaKind = "kind"
	metaVMID = "vmid"
	metaNode = "node"
	metaTmpl = "template"
)

// managedTag is the PVE tag on guests this driver created.
const managedTag = "subbus"

// markerPrefix starts the description line holding the driver's marker.
const markerPrefix = "subbus-marker: "

// num decodes a JSON number that PVE may also send as a string.
type num float64

func (n *num) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	if s == "" || s == "null" {
		*n = 0
		return nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return fmt.Errorf("not a number: %s", b)
	}
	*n = num(f)
	return nil
}

// resource is one entry of GET /cluster/resources?type=vm.
type resource struct {
	ID        string `json:"id"`
	Type      string `json:"type"`
	Node      string `json:"node"`
	VMID      num    `json:"vmid"`
	Name      string `json:"name"`
	Status    string `json:"status"`
	Template  num    `json:"template"`
	Tags      string `json:"tags"`
	Lock      string `json:"lock"`
	CPU       num    `json:"cpu"`
	MaxCPU    num    `json:"maxcpu"`
	Mem       num    `json:"mem"`
	MaxMem    num    `json:"maxmem"`
	Disk      num    `json:"disk"`
	MaxDisk   num    `json:"maxdisk"`
	NetIn     num    `json:"netin"`
	NetOut    num    `json:"netout"`
	DiskRead  num    `json:"diskread"`
	DiskWrite num    `json:"diskwrite"`
	Uptime    num    `json:"uptime"`
}

func (r *resource) vmid() int { return int(r.VMID) }

// path is the API path of the guest: /nodes/N/qemu/ID.
func (r *resource) path() string { return guestPath(r.Node, r.Type, r.vmid()) }

func guestPath(node, kind string, vmid int) string {
	return fmt.Sprintf("/nodes/%s/%s/%d", url.PathEscape(node), kind, vmid)
}

// displayName is the instance name: the guest's name, else its VMID.
func (r *resource) displayName() string {
	if r.Name != "" {
		return r.Name
	}
	return strconv.Itoa(r.vmid())
}

func (r *resource) managed() bool { return hasTag(r.Tags, managedTag) }

// hasTag reports whether PVE's tag list (separated by ; , or spaces) has t.
func hasTag(tags, t string) bool {
	for _, x := range splitTags(tags) {
		if x == t {
			return true
		}
	}
	return false
}

func splitTags(tags string) []string {
	return strings.FieldsFunc(tags, func(r rune) bool { return r == ';' || r == ',' || r == ' ' })
}

// state maps PVE's status (and lock) to the portable state.
func (r *resource) state() drivers.State { return normState(r.Status) }

func normState(status string) drivers.State {
	switch status {
	case "running":
		return drivers.StateRunning
	case "stopped":
		return drivers.StateStopped
	case "paused", "suspended", "prelaunch":
		return drivers.StatePaused
	}
	return drivers.StateUnknown
}

// errNoGuest is a name or VMID no guest has.
type errNoGuest struct{ name string }

func (e *errNoGuest) Error() string { return fmt.Sprintf("proxmox: no guest called %q", e.name) }

// errAmbiguous is a name several guests share.
type errAmbiguous struct {
	name  string
	vmids []int
}

func (e *errAmbiguous) Error() string {
	ids := make([]string, len(e.vmids))
	for i, v := range e.vmids {
		ids[i] = strconv.Itoa(v)
	}
	return fmt.Sprintf("proxmox: %d guests are called %q (VMIDs %s); address one by its VMID", len(e.vmids), e.name, strings.Join(ids, ", "))
}

// errNameTaken is a create or clone onto a name a guest has.
type errNameTaken struct {
	name string
	vmid int
}

func (e *errNameTaken) Error() string {
	return fmt.Sprintf("proxmox: a guest called %q exists (VMID %d)", e.name, e.vmid)
}

var digits = regexp.MustCompile(`^[0-9]+$`)

// isVMIDName reports whether name addresses a guest by VMID.
func isVMIDName(name string) bool { return digits.MatchString(name) }

// resources lists every guest of the cluster (one request).
func (d *Driver) resources(ctx context.Context) ([]resource, error) {
	c, _, err := d.conn()
	if err != nil {
		return nil, err
	}
	var list []resource
	if err := c.Get(ctx, "/cluster/resources?type=vm", &list); err != nil {
		return nil, fmt.Errorf("proxmox: GET /cluster/resources: %w", err)
	}
	out := list[:0]
	for _, r := range list {
		if r.Type == kindQemu || r.Type == kindLXC {
			out = append(out, r)
		}
	}
	return out, nil
}

// find resolves an instance name (or VMID) to its guest.
func (d *Driver) find(ctx context.Context, name string) (resource, error) {
	list, err := d.resources(ctx)
	if err != nil {
		return resource{}, err
	}
	return match(list, name)
}

// match picks name out of list: by VMID when name is all digits, else by
// guest name; several matches are errAmbiguous.
func match(list []resource, name string) (resource, error) {
	if isVMIDName(name) {
		id, err := strconv.Atoi(name)
		if err == nil {
			for _, r := range list {
				if r.vmid() == id {
					return r, nil
				}
			}
		}
		return resource{}, &errNoGuest{name: name}
	}
	var found []resource
	for _, r := range list {
		if r.Name == name {
			found = append(found, r)
		}
	}
	switch len(found) {
	case 0:
		return resource{}, &errNoGuest{name: name}
	case 1:
		return found[0], nil
	}
	ids := make([]int, len(found))
	for i, r := range found {
		ids[i] = r.vmid()
	}
	sort.Ints(ids)
	return resource{}, &errAmbiguous{name: name, vmids: ids}
}

// marker is what the driver keeps in a created guest's description.
type marker struct {
	Image     string            `json:"image,omitempty"`
	Meta      map[string]string `json:"meta,omitempty"`
	Created   time.Time         `json:"created,omitzero"`
	CreateID  string            `json:"create_id,omitempty"`
	RequestID string            `json:"request_id,omitempty"`
	CloneOf   string            `json:"clone_of,omitempty"`
}

// parseMarker finds the marker line in a description.
func parseMarker(desc string) (marker, bool) {
	for _, line := range strings.Split(desc, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), markerPrefix); ok {
			var m marker
			if json.Unmarshal([]byte(rest), &m) == nil {
				return m, true
			}
		}
	}
	return marker{}, false
}

// withMarker returns desc with its marker line replaced by m.
func withMarker(desc string, m marker) string {
	var keep []string
	for _, line := range strings.Split(desc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), markerPrefix) && line != "" {
			keep = append(keep, line)
		}
	}
	b, _ := json.Marshal(m)
	return strings.Join(append(keep, markerPrefix+string(b)), "\n")
}

// guestConfig is GET …/config, decoded loosely: PVE sends numbers as
// numbers or strings depending on version and key.
type guestConfig map[string]any

func (g guestConfig) str(key string) string {
	switch v := g[key].(type) {
	case string:
		return v
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	case nil:
		return ""
	default:
		return fmt.Sprint(v)
	}
}

func (g guestConfig) int(key string, def int) int {
	s := g.str(key)
	if s == "" {
		return def
	}
	// memory may be a property string: "[current=]512[,...]"
	s, _, _ = strings.Cut(s, ",")
	s = strings.TrimPrefix(s, "current=")
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return def
	}
	return int(f)
}

// config reads a guest's configuration.
func (d *Driver) config(ctx context.Context, r resource) (guestConfig, error) {
	c, _, err := d.conn()
	if err != nil {
		return nil, err
	}
	var cfg guestConfig
	if err := c.Get(ctx, r.path()+"/config", &cfg); err != nil {
		return nil, fmt.Errorf("proxmox: GET %s/config: %w", r.path(), err)
	}
	return cfg, nil
}

// nicKeys returns the net[n] keys of a config, in index order.
func nicKeys(cfg guestConfig) []string {
	var keys []string
	for k := range cfg {
		if strings.HasPrefix(k, "net") && digits.MatchString(k[3:]) {
			keys = append(keys, k)
		}
	}
	sort.Slice(keys, func(i, j int) bool {
		a, _ := strconv.Atoi(keys[i][3:])
		b, _ := strconv.Atoi(keys[j][3:])
		return a < b
	})
	return keys
}

// propString parses a PVE property string ("virtio=AA:..,bridge=vmbr0").
func propString(s string) map[string]string {
	out := map[string]string{}
	for _, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			out[part] = ""
			continue
		}
		out[k] = v
	}
	return out
}

// networksOf lists the NICs of a config as portable network configs.
func networksOf(cfg guestConfig) []drivers.NetworkConfig {
	var out []drivers.NetworkConfig
	for _, k := range nicKeys(cfg) {
		p := propString(cfg.str(k))
		nc := drivers.NetworkConfig{NetworkName: p["bridge"], Gateway: p["gw"]}
		if ip := p["ip"]; ip != "" && ip != "dhcp" && ip != "manual" {
			nc.IPAddress = ip
		}
		out = append(out, nc)
	}
	return out
}

// limitsOf reads cores and memory from a config (QEMU: sockets × cores).
func limitsOf(kind string, cfg guestConfig) drivers.ResourceLimits {
	cores := cfg.int("cores", 1)
	if kind == kindQemu {
		cores *= cfg.int("sockets", 1)
	} else if _, ok := cfg["cores"]; !ok {
		cores = 0 // an LXC container without cores may use every host core
	}
	mem := cfg.int("memory", 512)
	return drivers.ResourceLimits{CPUCores: float64(cores), MemoryMB: int64(mem)}
}

// instance converts a listed guest; cfg (may be nil) adds what only the
// configuration has: networks, image, user metadata, limits.
func (d *Driver) instance(r resource, cfg guestConfig) drivers.Instance {
	in := drivers.Instance{
		Name:        r.displayName(),
		ID:          strconv.Itoa(r.vmid()),
		State:       r.state(),
		NativeState: r.Status,
		Managed:     r.managed(),
		Metadata: map[string]string{
			metaKind: r.Type,
			metaVMID: strconv.Itoa(r.vmid()),
			metaNode: r.Node,
		},
		Limits: drivers.ResourceLimits{CPUCores: float64(r.MaxCPU), MemoryMB: int64(math.Round(float64(r.MaxMem) / (1 << 20)))},
	}
	if r.Lock != "" {
		in.NativeState += " (lock: " + r.Lock + ")"
	}
	if r.Template == 1 {
		in.Metadata[metaTmpl] = "1"
	}
	if in.State == drivers.StateRunning {
		// PVE reports whole seconds since the guest started (0 in its
		// first second).
		in.StartedAt = time.Now().Add(-time.Duration(r.Uptime) * time.Second).Truncate(time.Second).UTC()
	}
	if cfg == nil {
		return in
	}
	in.Limits = limitsOf(r.Type, cfg)
	in.Networks = networksOf(cfg)
	in.Volumes = volumesOf(r.Type, cfg)
	if m, ok := parseMarker(cfg.str("description")); ok && in.Managed {
		in.Image = m.Image
		in.Created = m.Created
		for k, v := range m.Meta {
			if _, reserved := in.Metadata[k]; !reserved {
				in.Metadata[k] = v
			}
		}
	}
	return in
}

// List returns every guest of the cluster from one /cluster/resources
// call: names, states, kind/vmid/node and limits; networks, image and
// user metadata need the configuration and are in Get only.
func (d *Driver) List(ctx context.Context) ([]drivers.Instance, error) {
	list, err := d.resources(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]drivers.Instance, 0, len(list))
	for _, r := range list {
		out = append(out, d.instance(r, nil))
	}
	return out, nil
}

// Get returns one guest with its configuration and, for a running VM,
// the PID of its QEMU process on its node (status/current's pid; PVE
// reports none for a container).
func (d *Driver) Get(ctx context.Context, name string) (drivers.Instance, error) {
	r, err := d.find(ctx, name)
	if err != nil {
		return drivers.Instance{}, err
	}
	cfg, err := d.config(ctx, r)
	if err != nil {
		return drivers.Instance{}, err
	}
	in := d.instance(r, cfg)
	if r.Type == kindQemu && in.State != drivers.StateStopped {
		c, err := d.client()
		if err != nil {
			return drivers.Instance{}, err
		}
		var st struct {
			Status string `json:"status"`
			PID    num    `json:"pid"`
		}
		if err := c.Get(ctx, r.path()+"/status/current", &st); err != nil {
			return drivers.Instance{}, fmt.Errorf("proxmox: GET %s/status/current: %w", r.path(), err)
		}
		if st.Status == "running" {
			in.PID = int(st.PID)
		}
	}
	return in, nil
}

// diskKey matches the configuration keys that hold a guest's disks:
// QEMU's buses (ide0, sata1, scsi2, virtio3), EFI and TPM state, and a
// container's rootfs and mount points (mp0); unused[n] are detached
// volumes and are not the guest's.
var diskKey = regexp.MustCompile(`^(ide|sata|scsi|virtio|mp)([0-9]+)$|^(rootfs|efidisk0|tpmstate0)$`)

// volumesOf lists a guest's disks from its configuration, in key order
// (bus, then index): Source is PVE's volume id ("local-lvm:vm-100-disk-0")
// or a bind-mounted host path; Target is a container's mount point
// (rootfs: "/") or a VM's slot ("scsi0"). A CD-ROM drive is not a disk.
func volumesOf(kind string, cfg guestConfig) []drivers.Volume {
	var keys []string
	for k := range cfg {
		if diskKey.MatchString(k) {
			keys = append(keys, k)
		}
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := strings.TrimRight(keys[i], "0123456789"), strings.TrimRight(keys[j], "0123456789")
		if a != b {
			return a < b
		}
		x, _ := strconv.Atoi(keys[i][len(a):])
		y, _ := strconv.Atoi(keys[j][len(b):])
		return x < y
	})
	var out []drivers.Volume
	for _, k := range keys {
		v := cfg.str(k)
		p := propString(v)
		src, _, _ := strings.Cut(v, ",")
		if strings.Contains(src, "=") { // "volume=…" spelled out
			src = p["volume"]
		}
		if src == "" || src == "none" || p["media"] == "cdrom" {
			continue
		}
		vol := drivers.Volume{Source: src, Target: k, ReadOnly: p["ro"] == "1"}
		if kind == kindLXC {
			vol.Target = p["mp"]
			if k == "rootfs" {
				vol.Target = "/"
			}
		}
		out = append(out, vol)
	}
	return out
}

// nodeEntry is one entry of GET /nodes.
type nodeEntry struct {
	Node    string `json:"node"`
	Status  string `json:"status"`
	CPU     num    `json:"cpu"`
	MaxCPU  num    `json:"maxcpu"`
	Mem     num    `json:"mem"`
	MaxMem  num    `json:"maxmem"`
	Disk    num    `json:"disk"`
	MaxDisk num    `json:"maxdisk"`
	Uptime  num    `json:"uptime"`
}

func sortNodes(n []nodeEntry) { sort.Slice(n, func(i, j int) bool { return n[i].Node < n[j].Node }) }

// client is a shorthand for the connected go-proxmox client.
func (d *Driver) client() (*gp.Client, error) {
	c, _, err := d.conn()
	return c, err
}
