package lxc

import (
	"context"
	"fmt"
	"net"
	"net/http"
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

// ListNetworks lists the networks LXD manages. GET /1.0/networks also
// returns the host's own interfaces (eth0, docker0, …): they are left out.
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
		if !n.Managed {
			continue
		}
		pn := drivers.Network{Name: n.Name, ID: n.Name, Type: n.Type, Managed: true}
		if addr := n.Config["ipv4.address"]; addr != "" && addr != "none" {
			if ip, ipn, err := net.ParseCIDR(addr); err == nil {
				pn.Gateway = ip.String()
				pn.Subnet = ipn.String()
			}
		}
		// No NAT and no uplink: nothing routes out of the bridge.
		pn.Internal = n.Config["ipv4.nat"] != "true" && n.Config["ipv6.nat"] != "true" && n.Config["network"] == ""
		out = append(out, pn)
	}
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

// AttachNetwork adds a NIC on a managed network (hot-plugged into a
// running container). Attaching twice is AlreadyExists.
func (d *Driver) AttachNetwork(ctx context.Context, name string, cfg drivers.NetworkConfig) error {
	c, _, err := d.conn()
	if err != nil {
		return err
	}
	var n network
	if _, err := c.query(ctx, http.MethodGet, "/1.0/networks/"+esc(cfg.NetworkName), nil, &n); err != nil {
		return notFound(err, "network", cfg.NetworkName)
	}
	if !n.Managed {
		return drivers.Errorf(drivers.InvalidArgument, "lxc: network %q is not managed by LXD", cfg.NetworkName)
	}
	return d.editDevices(ctx, name, func(in *instance) error {
		if dev := nicFor(in.ExpandedDevices, cfg.NetworkName); dev != "" {
			return drivers.Errorf(drivers.AlreadyExists, "lxc: instance %q is already attached to network %q (device %s)", name, cfg.NetworkName, dev)
		}
		devName := cfg.NetworkName
		if _, taken := in.ExpandedDevices[devName]; taken {
			devName = "nic-" + cfg.NetworkName
		}
		in.Devices[devName] = nicDevice(cfg, freeIface(in.ExpandedDevices))
		return nil
	})
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
