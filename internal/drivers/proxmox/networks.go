package proxmox

import (
	"context"
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/subbus/subbus/internal/drivers"
)

// netEntry is one entry of GET /nodes/{node}/network.
type netEntry struct {
	Iface    string `json:"iface"`
	Type     string `json:"type"`
	CIDR     string `json:"cidr"`
	Address  string `json:"address"`
	Gateway  string `json:"gateway"`
	Active   num    `json:"active"`
	Comments string `json:"comments"`
	Ports    string `json:"bridge_ports"`
}

// vnetEntry is one entry of GET /cluster/sdn/vnets.
type vnetEntry struct {
	VNet  string `json:"vnet"`
	Zone  string `json:"zone"`
	Alias string `json:"alias"`
}

// errNoNetwork is an attach to a bridge or vnet that does not exist.
type errNoNetwork struct{ name, node string }

func (e *errNoNetwork) Error() string {
	return fmt.Sprintf("proxmox: no bridge or SDN vnet %q on node %s", e.name, e.node)
}

// ListNetworks lists the bridges of the create node (Linux and OVS
// bridges) and the cluster's SDN vnets. A bridge without ports is
// reported Internal (nothing routes out of it). An SDN that is not
// installed (501 or 404) lists no vnets.
func (d *Driver) ListNetworks(ctx context.Context) ([]drivers.Network, error) {
	_, node, err := d.conn()
	if err != nil {
		return nil, err
	}
	return d.networks(ctx, node)
}

func (d *Driver) networks(ctx context.Context, node string) ([]drivers.Network, error) {
	c, err := d.client()
	if err != nil {
		return nil, err
	}
	var list []netEntry
	if err := c.Get(ctx, "/nodes/"+url.PathEscape(node)+"/network?type=any_bridge", &list); err != nil {
		return nil, fmt.Errorf("proxmox: GET /nodes/%s/network: %w", node, err)
	}
	var out []drivers.Network
	for _, n := range list {
		if n.Type != "bridge" && n.Type != "OVSBridge" {
			continue
		}
		out = append(out, drivers.Network{
			Name: n.Iface, ID: node + "/" + n.Iface, Type: n.Type, Subnet: n.CIDR, Gateway: n.Gateway,
			Internal: strings.TrimSpace(n.Ports) == "" || n.Ports == "none", Attachable: true,
		})
	}
	var vnets []vnetEntry
	if err := c.Get(ctx, "/cluster/sdn/vnets", &vnets); err == nil {
		for _, v := range vnets {
			out = append(out, drivers.Network{Name: v.VNet, ID: "sdn/" + v.Zone + "/" + v.VNet, Type: "vnet", Attachable: true})
		}
	} else if c := classify(err); c != drivers.Unsupported && c != drivers.NotFound {
		return nil, fmt.Errorf("proxmox: GET /cluster/sdn/vnets: %w", err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// checkNetwork checks an attachment of a guest of kind against the
// node's networks: the bridge or vnet must exist (NotFound), and a
// container's static address must lie in the bridge's subnet when the
// bridge has one (InvalidArgument; a VM takes no address: nicValue says
// so).
func checkNetwork(nets []drivers.Network, kind string, n drivers.NetworkConfig, node string) error {
	i := slices.IndexFunc(nets, func(x drivers.Network) bool { return x.Name == n.NetworkName })
	if i < 0 {
		return &errNoNetwork{name: n.NetworkName, node: node}
	}
	if kind != kindLXC || n.IPAddress == "" || nets[i].Subnet == "" {
		return nil
	}
	subnet, err := netip.ParsePrefix(nets[i].Subnet)
	if err != nil {
		return nil // a bridge address PVE reports oddly: let PVE judge
	}
	a, err := netip.ParsePrefix(n.IPAddress)
	if err != nil {
		return nil // nicValue names the format problem
	}
	if !subnet.Masked().Contains(a.Addr()) {
		return drivers.Errorf(drivers.InvalidArgument, "proxmox: ip_address %s is outside the subnet of bridge %s (%s)", n.IPAddress, n.NetworkName, subnet.Masked())
	}
	return nil
}

// AttachNetwork adds a NIC on the bridge (or vnet) as the first free
// net[n]. On a running guest PVE hot-plugs it (VM) or applies it at once
// (container). A missing bridge is NotFound. A guest that already has a
// NIC there is left as it is (changed=false) unless another address is
// asked for (Conflict).
func (d *Driver) AttachNetwork(ctx context.Context, name string, n drivers.NetworkConfig) (bool, error) {
	r, err := d.find(ctx, name)
	if err != nil {
		return false, err
	}
	nets, err := d.networks(ctx, r.Node)
	if err != nil {
		return false, err
	}
	if err := checkNetwork(nets, r.Type, n, r.Node); err != nil {
		return false, err
	}
	cfg, err := d.config(ctx, r)
	if err != nil {
		return false, err
	}
	for _, k := range nicKeys(cfg) {
		nic := propString(cfg.str(k))
		if nic["bridge"] != n.NetworkName {
			continue
		}
		if n.IPAddress == "" || nic["ip"] == n.IPAddress {
			return false, nil
		}
		return false, drivers.Errorf(drivers.Conflict, "proxmox: guest %s is already on %s (%s) with another address", name, n.NetworkName, k)
	}
	idx := 0
	for ; ; idx++ {
		if _, used := cfg["net"+strconv.Itoa(idx)]; !used {
			break
		}
	}
	v, err := nicValue(r.Type, idx, n)
	if err != nil {
		return false, err
	}
	if err := d.putConfig(ctx, r, map[string]any{"net" + strconv.Itoa(idx): v}); err != nil {
		return false, err
	}
	return true, nil
}

// DetachNetwork removes every NIC of the guest on the bridge. A guest
// with no NIC there is NotFound.
func (d *Driver) DetachNetwork(ctx context.Context, name, network string) error {
	r, err := d.find(ctx, name)
	if err != nil {
		return err
	}
	cfg, err := d.config(ctx, r)
	if err != nil {
		return err
	}
	var del []string
	for _, k := range nicKeys(cfg) {
		if propString(cfg.str(k))["bridge"] == network {
			del = append(del, k)
		}
	}
	if len(del) == 0 {
		return &errNoNetwork{name: network, node: r.Node + " (guest " + name + " has no NIC on it)"}
	}
	return d.putConfig(ctx, r, map[string]any{"delete": strings.Join(del, ",")})
}
