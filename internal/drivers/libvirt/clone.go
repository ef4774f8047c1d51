package libvirt

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/subbus/subbus/internal/drivers"
)

// Clone copies a shut-off domain under a new name with virt-clone's
// semantics: a new UUID and new MACs (libvirt generates them), agent
// channel paths and interface device names cleared, graphics ports
// automatic, each writable, non-shared file disk copied in full into the
// pool (StorageVolCreateXMLFrom; the copy has no backing file and no
// snapshots), read-only and shared disks shared, the NVRAM file copied
// (local URIs), its own console log, and an owner marker listing the new
// volumes. A running source is Conflict; a taken target AlreadyExists.
func (d *Driver) Clone(ctx context.Context, source, target string) (drivers.Instance, error) {
	l, err := d.conn()
	if err != nil {
		return drivers.Instance{}, err
	}
	dom, err := d.lookup(ctx, l, source)
	if err != nil {
		return drivers.Instance{}, err
	}
	src, err := d.load(ctx, l, dom, golibvirt.DomainXMLInactive|golibvirt.DomainXMLSecure)
	if err != nil {
		return drivers.Instance{}, err
	}
	if src.state != int32(golibvirt.DomainShutoff) {
		return drivers.Instance{}, drivers.Errorf(drivers.Conflict, "clone: domain %s is %s; it must be shut off", source, nativeWord(src.state))
	}
	if _, err := call(ctx, func() (golibvirt.Domain, error) { return l.DomainLookupByName(target) }); err == nil {
		return drivers.Instance{}, drivers.Errorf(drivers.AlreadyExists, "domain %s already exists", target)
	} else if classify(err) != drivers.NotFound {
		return drivers.Instance{}, fmt.Errorf("domain %s: %w", target, err)
	}
	pool, err := call(ctx, func() (golibvirt.StoragePool, error) { return l.StoragePoolLookupByName(d.opts.Pool) })
	if err != nil {
		return drivers.Instance{}, fmt.Errorf("storage pool %s: %w", d.opts.Pool, err)
	}

	def := src.def
	def.Name, def.UUID, def.ID = target, "", nil
	if def.SysInfo != nil {
		for i := range def.SysInfo {
			if def.SysInfo[i].SMBIOS != nil && def.SysInfo[i].SMBIOS.System != nil {
				entries := def.SysInfo[i].SMBIOS.System.Entry[:0]
				for _, e := range def.SysInfo[i].SMBIOS.System.Entry {
					if e.Name != "uuid" {
						entries = append(entries, e)
					}
				}
				def.SysInfo[i].SMBIOS.System.Entry = entries
			}
		}
	}
	o := &owner{Created: time.Now().UTC().Format(time.RFC3339)}
	if src.owner != nil {
		o.Image, o.Env, o.Meta = src.owner.Image, src.owner.Env, src.owner.Meta
	}
	var made []golibvirt.StorageVol
	undo := func() {
		for _, v := range made {
			_ = l.StorageVolDelete(v, golibvirt.StorageVolDeleteNormal)
		}
	}
	if def.Devices != nil {
		for i := range def.Devices.Interfaces {
			def.Devices.Interfaces[i].MAC = nil
			def.Devices.Interfaces[i].Target = nil
			def.Devices.Interfaces[i].Alias = nil
		}
		for i := range def.Devices.Channels {
			c := &def.Devices.Channels[i]
			if c.Source != nil && c.Source.UNIX != nil {
				c.Source.UNIX.Path = ""
			}
		}
		for i := range def.Devices.Graphics {
			g := &def.Devices.Graphics[i]
			if g.VNC != nil {
				g.VNC.Port, g.VNC.AutoPort = 0, "yes"
			}
			if g.Spice != nil {
				g.Spice.Port, g.Spice.TLSPort, g.Spice.AutoPort = 0, 0, "yes"
			}
		}
		for i := range def.Devices.Serials {
			if s := &def.Devices.Serials[i]; s.Log != nil {
				s.Log.File = d.consoleLog(target)
			}
		}
		for i := range def.Devices.Disks {
			disk := &def.Devices.Disks[i]
			if disk.Device == "cdrom" || disk.Device == "floppy" || disk.ReadOnly != nil || disk.Shareable != nil ||
				disk.Source == nil || disk.Source.File == nil || disk.Source.File.File == "" {
				continue
			}
			nv, path, err := d.copyVolume(ctx, l, pool, disk.Source.File.File, fmt.Sprintf("%s-%d.qcow2", target, i))
			if err != nil {
				undo()
				return drivers.Instance{}, err
			}
			made = append(made, nv)
			o.Volumes = append(o.Volumes, path)
			disk.Source.File.File = path
			disk.BackingStore = nil
			if disk.Driver != nil {
				disk.Driver.Type = "qcow2"
			}
		}
	}
	if def.OS != nil && def.OS.NVRam != nil && def.OS.NVRam.NVRam != "" {
		old := def.OS.NVRam.NVRam
		nvram := filepath.Join(filepath.Dir(old), target+"_VARS.fd")
		if b, err := os.ReadFile(old); err == nil && d.local() {
			if err := os.WriteFile(nvram, b, 0o600); err != nil {
				undo()
				return drivers.Instance{}, fmt.Errorf("copying the NVRAM of %s: %w", source, err)
			}
		}
		def.OS.NVRam.NVRam = nvram
	}
	meta, err := replaceOwner(def.Metadata, o)
	if err != nil {
		undo()
		return drivers.Instance{}, err
	}
	def.Metadata = &libvirtxml.DomainMetadata{XML: meta}
	x, err := def.Marshal()
	if err != nil {
		undo()
		return drivers.Instance{}, err
	}
	nd, err := l.DomainDefineXMLFlags(x, golibvirt.DomainDefineValidate)
	if err != nil {
		undo()
		return drivers.Instance{}, fmt.Errorf("defining clone %s: %w", target, err)
	}
	if err := ctx.Err(); err != nil {
		_ = l.DomainUndefineFlags(nd, undefineFlags)
		undo()
		return drivers.Instance{}, err
	}
	got, err := d.load(ctx, l, nd, 0)
	if err != nil {
		return drivers.Instance{}, err
	}
	return d.instance(got), nil
}

// copyVolume copies the volume at path into pool as a new qcow2 volume.
func (d *Driver) copyVolume(ctx context.Context, l *golibvirt.Libvirt, pool golibvirt.StoragePool, path, newName string) (golibvirt.StorageVol, string, error) {
	sv, err := call(ctx, func() (golibvirt.StorageVol, error) { return l.StorageVolLookupByPath(path) })
	if err != nil {
		return sv, "", fmt.Errorf("disk %s (not a volume of a libvirt pool, cannot be cloned): %w", path, err)
	}
	info, err := volumeInfo(ctx, l, sv)
	if err != nil {
		return sv, "", err
	}
	v := &libvirtxml.StorageVolume{
		Name:     newName,
		Capacity: &libvirtxml.StorageVolumeSize{Unit: "bytes", Value: bytesOf(info.Capacity)},
		Target:   &libvirtxml.StorageVolumeTarget{Format: &libvirtxml.StorageVolumeTargetFormat{Type: "qcow2"}},
	}
	x, err := v.Marshal()
	if err != nil {
		return sv, "", err
	}
	if err := ctx.Err(); err != nil {
		return sv, "", err
	}
	nv, err := l.StorageVolCreateXMLFrom(pool, x, sv, 0)
	if err != nil {
		return nv, "", fmt.Errorf("copying disk %s to %s: %w", path, newName, err)
	}
	p, err := l.StorageVolGetPath(nv)
	if err != nil {
		_ = l.StorageVolDelete(nv, golibvirt.StorageVolDeleteNormal)
		return nv, "", fmt.Errorf("volume %s: %w", newName, err)
	}
	if !strings.HasPrefix(p, "/") {
		_ = l.StorageVolDelete(nv, golibvirt.StorageVolDeleteNormal)
		return nv, "", drivers.Unsupportedf("clone: pool %s gives volume paths that are not files (%s)", d.opts.Pool, p)
	}
	return nv, p, nil
}
