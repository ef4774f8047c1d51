package docker

import (
	"context"
	"fmt"
	"net/netip"
	"sort"

	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	"github.com/subbus/subbus/internal/drivers"
)

// ListNetworks implements drivers.Networker: every Docker network.
// Managed means subbus created it (the io.subbus.managed label, as on
// containers); Attachable is false for the host and none networks, config-only
// networks and swarm networks not made attachable.
func (d *Driver) ListNetworks(ctx context.Context) ([]drivers.Network, error) {
	c, err := d.client()
	if err != nil {
		return nil, err
	}
	res, err := c.NetworkList(ctx, client.NetworkListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list networks: %w", err)
	}
	out := make([]drivers.Network, 0, len(res.Items))
	for _, n := range res.Items {
		nw := drivers.Network{Name: n.Name, ID: n.ID, Type: n.Driver, Internal: n.Internal,
			Managed: isManaged(n.Labels), Attachable: attachable(n.Network)}
		if len(n.IPAM.Config) > 0 {
			cfg := n.IPAM.Config[0]
			if cfg.Subnet.IsValid() {
				nw.Subnet = cfg.Subnet.String()
			}
			if cfg.Gateway.IsValid() {
				nw.Gateway = cfg.Gateway.String()
			}
		}
		out = append(out, nw)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// attachable reports whether a container can be connected to n.
func attachable(n network.Network) bool {
	switch {
	case n.Driver == "host" || n.Driver == "null" || n.ConfigOnly || n.Ingress:
		return false
	case n.Scope == "swarm":
		return n.Attachable
	}
	return true
}

// parseAddr reads a static address: an address, or address/prefix (the
// prefix is the network's and is ignored).
func parseAddr(n drivers.NetworkConfig) (netip.Addr, error) {
	a, err := netip.ParseAddr(n.IPAddress)
	if err != nil {
		if p, perr := netip.ParsePrefix(n.IPAddress); perr == nil {
			return p.Addr(), nil
		}
		return netip.Addr{}, drivers.Errorf(drivers.InvalidArgument, "network %s: ip_address %q: %w", n.NetworkName, n.IPAddress, err)
	}
	return a, nil
}

// checkNetworks checks attachments before anything is changed: each
// network must exist under exactly that name (NotFound naming it) and
// accept containers, and a static address must lie in one of the
// network's subnets (InvalidArgument naming both). Docker itself accepts
// a missing network or a foreign address for a stopped container and
// fails only at start.
func (d *Driver) checkNetworks(ctx context.Context, nets []drivers.NetworkConfig) error {
	c, err := d.client()
	if err != nil {
		return err
	}
	for _, n := range nets {
		res, err := c.NetworkInspect(ctx, n.NetworkName, client.NetworkInspectOptions{})
		if err != nil {
			if classify(err) == drivers.NotFound {
				return fmt.Errorf("network %q not found: %w", n.NetworkName, err)
			}
			return fmt.Errorf("inspect network %s: %w", n.NetworkName, err)
		}
		nw := res.Network.Network
		if nw.Name != n.NetworkName {
			// Docker also resolves ID prefixes; a network is named exactly.
			return drivers.Errorf(drivers.NotFound, "network %q not found", n.NetworkName)
		}
		if !attachable(nw) {
			return drivers.Errorf(drivers.InvalidArgument, "network %s (driver %s) does not take containers", n.NetworkName, nw.Driver)
		}
		if n.IPAddress == "" {
			continue
		}
		a, err := parseAddr(n)
		if err != nil {
			return err
		}
		var subnets []string
		ok := false
		for _, cfg := range nw.IPAM.Config {
			if cfg.Subnet.IsValid() {
				subnets = append(subnets, cfg.Subnet.String())
				ok = ok || cfg.Subnet.Contains(a)
			}
		}
		if !ok {
			if len(subnets) == 0 {
				return drivers.Errorf(drivers.InvalidArgument, "network %s has no subnet: it takes no static address (%s)", n.NetworkName, a)
			}
			return drivers.Errorf(drivers.InvalidArgument, "ip_address %s is outside the subnets of network %s (%v)", a, n.NetworkName, subnets)
		}
	}
	return nil
}

// AttachNetwork implements drivers.Networker, with an optional static
// address checked against the network's subnets first. Attaching to a
// network the container is already on succeeds with changed=false when no
// other address is asked for. A connect the daemon refuses half-way is
// undone, so a failed attach leaves no network entry behind.
func (d *Driver) AttachNetwork(ctx context.Context, name string, cfg drivers.NetworkConfig) (bool, error) {
	if cfg.NetworkName == "" {
		return false, drivers.Errorf(drivers.InvalidArgument, "attach %s: network_name is required", name)
	}
	ins, err := d.inspect(ctx, name)
	if err != nil {
		return false, err
	}
	if ins.NetworkSettings != nil {
		if ep, ok := ins.NetworkSettings.Networks[cfg.NetworkName]; ok {
			if cfg.IPAddress == "" {
				return false, nil
			}
			want, err := parseAddr(cfg)
			if err != nil {
				return false, err
			}
			if have := endpointAddr(ep); have == want {
				return false, nil
			}
			return false, drivers.Errorf(drivers.Conflict, "attach %s: already on network %s with another address", name, cfg.NetworkName)
		}
	}
	if err := d.checkNetworks(ctx, []drivers.NetworkConfig{cfg}); err != nil {
		return false, fmt.Errorf("attach %s: %w", name, err)
	}
	if err := d.connectNetworks(ctx, ins.ID, []drivers.NetworkConfig{cfg}); err != nil {
		d.undoConnect(ins.ID, cfg.NetworkName)
		return false, fmt.Errorf("attach %s: %w", name, err)
	}
	return true, nil
}

// endpointAddr is the address of an endpoint: the running one, else the
// static one asked for (a stopped container has no running address).
func endpointAddr(ep *network.EndpointSettings) netip.Addr {
	if ep == nil {
		return netip.Addr{}
	}
	if ep.IPAddress.IsValid() {
		return ep.IPAddress
	}
	if ep.IPAMConfig != nil && ep.IPAMConfig.IPv4Address.IsValid() {
		return ep.IPAMConfig.IPv4Address
	}
	if ep.IPAMConfig != nil && ep.IPAMConfig.IPv6Address.IsValid() {
		return ep.IPAMConfig.IPv6Address
	}
	return netip.Addr{}
}

// undoConnect removes an endpoint a failed connect may have left in the
// container's configuration (best effort, bounded, even when the caller's
// ctx has ended).
func (d *Driver) undoConnect(id, netName string) {
	c, err := d.client()
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	res, err := c.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
	if err != nil || res.Container.NetworkSettings == nil {
		return
	}
	if _, ok := res.Container.NetworkSettings.Networks[netName]; ok {
		_, _ = c.NetworkDisconnect(ctx, netName, client.NetworkDisconnectOptions{Container: id, Force: true})
	}
}

// DetachNetwork implements drivers.Networker. A container not on the
// network is NotFound.
func (d *Driver) DetachNetwork(ctx context.Context, name, netName string) error {
	ins, err := d.inspect(ctx, name)
	if err != nil {
		return err
	}
	if ins.NetworkSettings == nil || ins.NetworkSettings.Networks[netName] == nil {
		return drivers.Errorf(drivers.NotFound, "detach %s: not attached to network %q", name, netName)
	}
	c, err := d.client()
	if err != nil {
		return err
	}
	if _, err := c.NetworkDisconnect(ctx, netName, client.NetworkDisconnectOptions{Container: ins.ID}); err != nil {
		return fmt.Errorf("detach %s from %s: %w", name, netName, err)
	}
	return nil
}
