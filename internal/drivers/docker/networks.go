package docker

import (
	"context"
	"fmt"
	"sort"

	"github.com/moby/moby/client"

	"github.com/subbus/subbus/internal/drivers"
)

// ListNetworks implements drivers.Networker.
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
		nw := drivers.Network{Name: n.Name, ID: n.ID, Type: n.Driver, Internal: n.Internal, Managed: isManaged(n.Labels)}
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

// AttachNetwork implements drivers.Networker, with an optional static
// address. Attaching to a network the container is already on succeeds
// when no other address is asked for.
func (d *Driver) AttachNetwork(ctx context.Context, name string, cfg drivers.NetworkConfig) error {
	if cfg.NetworkName == "" {
		return drivers.Errorf(drivers.InvalidArgument, "attach %s: network_name is required", name)
	}
	ins, err := d.inspect(ctx, name)
	if err != nil {
		return err
	}
	if ins.NetworkSettings != nil {
		if ep, ok := ins.NetworkSettings.Networks[cfg.NetworkName]; ok {
			if cfg.IPAddress == "" || (ep != nil && ep.IPAddress.IsValid() && ep.IPAddress.String() == cfg.IPAddress) {
				return nil
			}
			return drivers.Errorf(drivers.Conflict, "attach %s: already on network %s with another address", name, cfg.NetworkName)
		}
	}
	return d.connectNetworks(ctx, ins.ID, []drivers.NetworkConfig{cfg})
}

// DetachNetwork implements drivers.Networker. A container not on the
// network is NotFound.
func (d *Driver) DetachNetwork(ctx context.Context, name, network string) error {
	ins, err := d.inspect(ctx, name)
	if err != nil {
		return err
	}
	if ins.NetworkSettings == nil || ins.NetworkSettings.Networks[network] == nil {
		return drivers.Errorf(drivers.NotFound, "detach %s: not attached to network %q", name, network)
	}
	c, err := d.client()
	if err != nil {
		return err
	}
	if _, err := c.NetworkDisconnect(ctx, network, client.NetworkDisconnectOptions{Container: ins.ID}); err != nil {
		return fmt.Errorf("detach %s from %s: %w", name, network, err)
	}
	return nil
}
