package lxc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strings"

	"github.com/subbus/subbus/internal/drivers"
)

// network is GET /1.0/networks/<name>.
type network struct {
	Name    string            `json:"name"`
	Type    string            `json:"type"`
	Managed bool              `json:"managed"`
	Config  map[string]string `json:"config"`
}

// managedKey is the network config key that marks a network subbus
// created (Network.Managed; LXD allows user.* keys on managed networks).
const managedKey = "user.subbus.managed"

// ListNetworks lists every network GET /1.0/networks returns: the
// networks LXD manages, which instances can be attached to, and the
// host's own interfaces (eth0, docker0, …; LXD's "managed": false), which
// they cannot (Attachable false). Managed means subbus created it
// (user.subbus.managed=true), as it does for instances. Internal is known
// only for LXD's networks: no NAT and no uplink; a host interface is
// reported not internal.
func (d *Driver) ListNetworks(ctx context.Context) ([]drivers.Network, error) {
	c, _, err := d.conn()
	if err != nil {
		return nil, err
	}
	var list []network
	if _, err := c.query(ctx, http.MethodGet, "/1.0/networks?recursion=1", nil, &list); err != nil {
		return nil, err
	}
	out := []drivers.Network{}
	for _, n := range list {
		pn := drivers.Network{Name: n.Name, ID: n.Name, Type: n.Type, Attachable: n.Managed,
			Managed: n.Managed && n.Config[managedKey] == "true"}
		if n.Managed {
			if addr := n.Config["ipv4.address"]; addr != "" && addr != "none" {
				if ip, ipn, err := net.ParseCIDR(addr); err == nil {
					pn.Gateway = ip.String()
					pn.Subnet = ipn.String()
				}
			}
			// No NAT and no uplink: nothing routes out of the bridge.
			pn.Internal = n.Config["ipv4.nat"] != "true" && n.Config["ipv6.nat"] != "true" && n.Config["network"] == ""
		}
		out = append(out, pn)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// instancePut is the writable part of an instance, for PUT.
type instancePut struct {
	Architecture string                       `json:"architecture"`
	Config       map[string]string            `json:"config"`
	Devices      map[string]map[string]string `json:"devices"`
	Ephemeral    bool                         `json:"ephemeral"`
	Profiles     []string                     `json:"profiles"`
	Stateful     bool                         `json:"stateful"`
	Description  string                       `json:"description"`
}

// editDevices reads the instance, lets edit change its local devices and
// writes it back with PUT and If-Match, retrying when someone else changed
// the instance in between. PATCH cannot be used: it merges devices and so
// cannot remove one.
func (d *Driver) editDevices(ctx context.Context, name string, edit func(in *instance) error) error {
	c, _, err := d.conn()
	if err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		in, etag, err := d.get(ctx, name)
		if err != nil {
			return err
		}
		if in.Devices == nil {
			in.Devices = map[string]map[string]string{}
		}
		if err := edit(in); err != nil {
			return err
		}
		put := instancePut{Architecture: in.Architecture, Config: in.Config, Devices: in.Devices, Ephemeral: in.Ephemeral,
			Profiles: in.Profiles, Stateful: in.Stateful, Description: in.Description}
		hdr := http.Header{}
		if etag != "" {
			hdr.Set("If-Match", etag)
		}
		op, err := c.start(ctx, http.MethodPut, "/1.0/instances/"+esc(name), put, hdr)
		if err == nil {
			_, err = c.wait(ctx, op)
		}
		if err != nil && classify(err) == drivers.Conflict && attempt < 3 && strings.Contains(err.Error(), "(412)") {
			continue
		}
		return err
	}
}

// nicFor returns the name of the local NIC device on network, if any.
func nicFor(devs map[string]map[string]string, netName string) string {
	for n, dev := range devs {
		if dev["type"] == "nic" && (dev["network"] == netName || (dev["network"] == "" && dev["parent"] == netName)) {
			return n
		}
	}
	return ""
}

// errUnchanged ends an editDevices whose edit found nothing to change.
var errUnchanged = errors.New("unchanged")

// AttachNetwork adds a NIC on a network LXD manages (hot-plugged into a
// running container). An instance already on the network is left as it is
// (changed=false) unless another address is asked for (Conflict). A host
// interface LXD does not manage is InvalidArgument.
func (d *Driver) AttachNetwork(ctx context.Context, name string, cfg drivers.NetworkConfig) (bool, error) {
	c, _, err := d.conn()
	if err != nil {
		return false, err
	}
	var n network
	if _, err := c.query(ctx, http.MethodGet, "/1.0/networks/"+esc(cfg.NetworkName), nil, &n); err != nil {
		return false, err
	}
	if !n.Managed {
		return false, drivers.Errorf(drivers.InvalidArgument, "lxc: network %q is a host interface LXD does not manage: instances can be attached only to LXD's networks", cfg.NetworkName)
	}
	err = d.editDevices(ctx, name, func(in *instance) error {
		if dev := nicFor(in.ExpandedDevices, cfg.NetworkName); dev != "" {
			have := in.ExpandedDevices[dev]
			if cfg.IPAddress == "" || have["ipv4.address"] == cfg.IPAddress || have["ipv6.address"] == cfg.IPAddress {
				return errUnchanged
			}
			return drivers.Errorf(drivers.Conflict, "lxc: instance %q is already on network %q (device %s) with another address", name, cfg.NetworkName, dev)
		}
		devName := cfg.NetworkName
		if _, taken := in.ExpandedDevices[devName]; taken {
			devName = "nic-" + cfg.NetworkName
		}
		in.Devices[devName] = nicDevice(cfg, freeIface(in.ExpandedDevices))
		return nil
	})
	if errors.Is(err, errUnchanged) {
		return false, nil
	}
	return err == nil, err
}

// freeIface returns the first ethN not used by a NIC.
func freeIface(devs map[string]map[string]string) string {
	used := map[string]bool{}
	for n, dev := range devs {
		if dev["type"] == "nic" {
			iface := dev["name"]
			if iface == "" {
				iface = n
			}
			used[iface] = true
		}
	}
	for i := 0; ; i++ {
		if s := fmt.Sprintf("eth%d", i); !used[s] {
			return s
		}
	}
}

// DetachNetwork removes the instance's own NIC on network (one inherited
// from a profile cannot be removed here: InvalidArgument).
func (d *Driver) DetachNetwork(ctx context.Context, name, netName string) error {
	return d.editDevices(ctx, name, func(in *instance) error {
		dev := nicFor(in.Devices, netName)
		if dev == "" {
			if nicFor(in.ExpandedDevices, netName) != "" {
				return drivers.Errorf(drivers.InvalidArgument, "lxc: the NIC of instance %q on network %q comes from a profile", name, netName)
			}
			return drivers.Errorf(drivers.NotFound, "lxc: instance %q is not attached to network %q", name, netName)
		}
		delete(in.Devices, dev)
		return nil
	})
}
