package libvirt

import (
	"context"
	"fmt"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/subbus/subbus/internal/drivers"
)

// domain is one looked-up domain with its definition and state.
type domain struct {
	dom   golibvirt.Domain
	def   *libvirtxml.Domain
	owner *owner // nil when not created by this driver
	state int32
}

func (x *domain) uuid() string { return uuidString(x.dom.UUID) }

func uuidString(u golibvirt.UUID) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// lookup finds a domain by name (NotFound when missing).
func (d *Driver) lookup(ctx context.Context, l *golibvirt.Libvirt, name string) (golibvirt.Domain, error) {
	dom, err := call(ctx, func() (golibvirt.Domain, error) { return l.DomainLookupByName(name) })
	if err != nil {
		return dom, fmt.Errorf("domain %s: %w", name, err)
	}
	return dom, nil
}

// load reads a domain's definition (live when running; inactive with
// flags DomainXMLInactive) and state.
func (d *Driver) load(ctx context.Context, l *golibvirt.Libvirt, dom golibvirt.Domain, flags golibvirt.DomainXMLFlags) (*domain, error) {
	state, err := call(ctx, func() (int32, error) {
		s, _, err := l.DomainGetState(dom, 0)
		return s, err
	})
	if err != nil {
		return nil, fmt.Errorf("state of domain %s: %w", dom.Name, err)
	}
	x, err := call(ctx, func() (string, error) { return l.DomainGetXMLDesc(dom, flags) })
	if err != nil {
		return nil, fmt.Errorf("definition of domain %s: %w", dom.Name, err)
	}
	def := &libvirtxml.Domain{}
	if err := def.Unmarshal(x); err != nil {
		return nil, fmt.Errorf("parsing the definition of domain %s: %w", dom.Name, err)
	}
	return &domain{dom: dom, def: def, owner: findOwner(def.Metadata), state: state}, nil
}

// get looks a domain up by name and loads it.
func (d *Driver) get(ctx context.Context, name string) (*golibvirt.Libvirt, *domain, error) {
	l, err := d.conn()
	if err != nil {
		return nil, nil, err
	}
	dom, err := d.lookup(ctx, l, name)
	if err != nil {
		return nil, nil, err
	}
	x, err := d.load(ctx, l, dom, 0)
	return l, x, err
}

// instance converts a loaded domain.
func (d *Driver) instance(x *domain) drivers.Instance {
	st, native := normalize(x.state)
	in := drivers.Instance{
		Name:        x.dom.Name,
		ID:          x.uuid(),
		State:       st,
		NativeState: native,
		Limits:      limitsOf(x.def),
		Networks:    networksOf(x.def),
		Managed:     x.owner != nil,
	}
	in.Volumes = volumesOf(x.def)
	if st == drivers.StateRunning || st == drivers.StatePaused {
		in.PID, in.StartedAt = d.qemuProcess(x.dom.Name)
	}
	if x.owner != nil {
		in.Image = x.owner.Image
		in.Created = x.owner.created
		in.Metadata = fromKeyVals(x.owner.Meta)
	}
	return in
}

// volumesOf lists the domain's disks (device "disk" or "lun"; CD-ROMs
// and floppies are not): Source is the file, block device or pool/volume
// behind it, Target the guest's device name (vda).
func volumesOf(def *libvirtxml.Domain) []drivers.Volume {
	if def.Devices == nil {
		return nil
	}
	var out []drivers.Volume
	for _, disk := range def.Devices.Disks {
		if disk.Device != "" && disk.Device != "disk" && disk.Device != "lun" {
			continue
		}
		v := drivers.Volume{ReadOnly: disk.ReadOnly != nil}
		if disk.Target != nil {
			v.Target = disk.Target.Dev
		}
		if src := disk.Source; src != nil {
			switch {
			case src.File != nil:
				v.Source = src.File.File
			case src.Block != nil:
				v.Source = src.Block.Dev
			case src.Volume != nil:
				v.Source = src.Volume.Pool + "/" + src.Volume.Volume
			case src.Network != nil:
				v.Source = src.Network.Protocol + ":" + src.Network.Name
			}
		}
		if v.Source == "" && v.Target == "" {
			continue
		}
		out = append(out, v)
	}
	return out
}

// Get returns one domain.
func (d *Driver) Get(ctx context.Context, name string) (drivers.Instance, error) {
	_, x, err := d.get(ctx, name)
	if err != nil {
		return drivers.Instance{}, err
	}
	return d.instance(x), nil
}

// List returns every domain of the connection, defined or transient,
// running or not, managed or not.
func (d *Driver) List(ctx context.Context) ([]drivers.Instance, error) {
	l, err := d.conn()
	if err != nil {
		return nil, err
	}
	doms, err := call(ctx, func() ([]golibvirt.Domain, error) {
		ds, _, err := l.ConnectListAllDomains(1, golibvirt.ConnectListDomainsActive|golibvirt.ConnectListDomainsInactive)
		return ds, err
	})
	if err != nil {
		return nil, fmt.Errorf("listing domains: %w", err)
	}
	out := make([]drivers.Instance, 0, len(doms))
	for _, dom := range doms {
		x, err := d.load(ctx, l, dom, 0)
		if err != nil {
			if classify(err) == drivers.NotFound {
				continue // undefined meanwhile
			}
			return nil, err
		}
		out = append(out, d.instance(x))
	}
	return out, nil
}
