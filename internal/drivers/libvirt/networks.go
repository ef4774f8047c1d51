package libvirt

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/subbus/subbus/internal/drivers"
)

// ListNetworks lists libvirt's networks. Type is the forward mode ("nat",
// "route", "bridge", …) or "isolated" for a network without <forward>,
// which is Internal.
func (d *Driver) ListNetworks(ctx context.Context) ([]drivers.Network, error) {
	l, err := d.conn()
	if err != nil {
		return nil, err
	}
	nets, err := call(ctx, func() ([]golibvirt.Network, error) {
		ns, _, err := l.ConnectListAllNetworks(1, 0)
		return ns, err
	})
	if err != nil {
		return nil, fmt.Errorf("listing networks: %w", err)
	}
	out := make([]drivers.Network, 0, len(nets))
	for _, n := range nets {
		x, err := call(ctx, func() (string, error) { return l.NetworkGetXMLDesc(n, 0) })
		if err != nil {
			if classify(err) == drivers.NotFound {
				continue
			}
			return nil, fmt.Errorf("network %s: %w", n.Name, err)
		}
		var def libvirtxml.Network
		if err := def.Unmarshal(x); err != nil {
			return nil, fmt.Errorf("network %s: %w", n.Name, err)
		}
		act, err := call(ctx, func() (int32, error) { return l.NetworkIsActive(n) })
		if err != nil {
			if classify(err) == drivers.NotFound {
				continue
			}
			return nil, fmt.Errorf("network %s: %w", n.Name, err)
		}
		// libvirt networks carry no subbus mark: never Managed. An inactive
		// network cannot take a NIC of a running domain, nor start one.
		nw := drivers.Network{Name: n.Name, ID: uuidString(n.UUID), Type: "isolated", Internal: true, Attachable: act == 1}
		if def.Forward != nil {
			nw.Type, nw.Internal = def.Forward.Mode, false
			if nw.Type == "" {
				nw.Type = "nat"
			}
		}
		for _, ip := range def.IPs {
			if ip.Address == "" {
				continue
			}
			nw.Gateway = ip.Address
			ones := int(ip.Prefix)
			if ip.Netmask != "" {
				if m := net.ParseIP(ip.Netmask).To4(); m != nil {
					ones, _ = net.IPv4Mask(m[0], m[1], m[2], m[3]).Size()
				}
			}
			if _, cidr, err := net.ParseCIDR(fmt.Sprintf("%s/%d", ip.Address, ones)); err == nil {
				nw.Subnet = cidr.String()
			}
			break
		}
		out = append(out, nw)
	}
	return out, nil
}

// randomMAC returns a MAC in QEMU's 52:54:00 range.
func randomMAC() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return fmt.Sprintf("52:54:00:%02x:%02x:%02x", b[0], b[1], b[2])
}

// AttachNetwork adds a virtio NIC on the libvirt network to the domain's
// definition and, when it runs, hot-plugs it. Addresses are configured
// inside the guest: ip_address, gateway and dns_servers are Unsupported.
// A domain already on the network is left as it is (changed=false).
func (d *Driver) AttachNetwork(ctx context.Context, name string, cfg drivers.NetworkConfig) (bool, error) {
	if cfg.IPAddress != "" || cfg.Gateway != "" || len(cfg.DNSServers) > 0 {
		return false, drivers.Unsupportedf("ip_address, gateway, dns_servers: a VM configures its addresses itself")
	}
	l, err := d.conn()
	if err != nil {
		return false, err
	}
	if _, err := call(ctx, func() (golibvirt.Network, error) { return l.NetworkLookupByName(cfg.NetworkName) }); err != nil {
		return false, fmt.Errorf("network %s: %w", cfg.NetworkName, err)
	}
	dom, err := d.lookup(ctx, l, name)
	if err != nil {
		return false, err
	}
	x, err := d.load(ctx, l, dom, golibvirt.DomainXMLInactive)
	if err != nil {
		return false, err
	}
	for _, n := range networksOf(x.def) {
		if n.NetworkName == cfg.NetworkName {
			return false, nil
		}
	}
	ifc := networkInterface(cfg.NetworkName, randomMAC())
	dev, err := ifc.Marshal()
	if err != nil {
		return false, err
	}
	flags := golibvirt.DomainDeviceModifyConfig
	if active(x.state) {
		flags |= golibvirt.DomainDeviceModifyLive
	}
	if err := call0(ctx, func() error { return l.DomainAttachDeviceFlags(dom, dev, uint32(flags)) }); err != nil {
		return false, fmt.Errorf("attaching domain %s to network %s: %w", name, cfg.NetworkName, err)
	}
	return true, nil
}

// DetachNetwork removes the domain's NICs on the network from its
// definition and, when it runs, unplugs them (a live unplug completes when
// the guest releases the device). A domain not on the network is NotFound.
func (d *Driver) DetachNetwork(ctx context.Context, name, network string) error {
	l, err := d.conn()
	if err != nil {
		return err
	}
	dom, err := d.lookup(ctx, l, name)
	if err != nil {
		return err
	}
	x, err := d.load(ctx, l, dom, golibvirt.DomainXMLInactive)
	if err != nil {
		return err
	}
	found := false
	for _, ifc := range x.def.Devices.Interfaces {
		if ifc.Source == nil || ifc.Source.Network == nil || ifc.Source.Network.Network != network {
			continue
		}
		found = true
		dev, err := (&libvirtxml.DomainInterface{MAC: ifc.MAC, Source: ifc.Source}).Marshal()
		if err != nil {
			return err
		}
		flags := golibvirt.DomainDeviceModifyConfig
		if active(x.state) {
			flags |= golibvirt.DomainDeviceModifyLive
		}
		if err := call0(ctx, func() error { return l.DomainDetachDeviceFlags(dom, dev, uint32(flags)) }); err != nil {
			return fmt.Errorf("detaching domain %s from network %s: %w", name, network, err)
		}
	}
	if !found {
		return drivers.Errorf(drivers.NotFound, "domain %s is not attached to network %s", name, network)
	}
	return nil
}
