package libvirt

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/subbus/subbus/internal/drivers"
)

// Template metadata keys that choose a direct kernel boot (they override
// the section's kernel, initrd and cmdline).
const (
	MetaKernel  = "libvirt.kernel"
	MetaInitrd  = "libvirt.initrd"
	MetaCmdline = "libvirt.cmdline"
)

// envName is what an environment variable name must look like to be passed
// on the kernel command line.
var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// spec is a validated template.
type spec struct {
	name                    string
	image                   string
	vcpus, maxVCPUs         int
	quota                   float64 // fractional cpu_cores, 0 = none
	memMiB, maxMemMiB       int64
	diskBytes               uint64
	kernel, initrd, cmdline string
	env                     map[string]string
	networks                []string
	meta                    map[string]string
}

// specOf checks a template against what a domain can be. Fields a VM has
// no equivalent for are Unsupported naming the field; malformed values are
// InvalidArgument. Nothing is changed.
func (d *Driver) specOf(t drivers.InstanceTemplate) (*spec, error) {
	switch {
	case len(t.Command) > 0:
		return nil, drivers.Unsupportedf("command: a libvirt domain boots its own init (kernel arguments go in metadata %s)", MetaCmdline)
	case t.WorkDir != "":
		return nil, drivers.Unsupportedf("workdir: not a property of a libvirt domain")
	case t.User != "":
		return nil, drivers.Unsupportedf("user: not a property of a libvirt domain")
	case len(t.Volumes) > 0:
		return nil, drivers.Unsupportedf("volumes: not supported by the libvirt driver (the domain gets one root disk)")
	case t.Resources.NetworkMbps != 0:
		return nil, drivers.Unsupportedf("resources.network_mbps: not supported by the libvirt driver")
	case t.Resources.PIDs != 0:
		return nil, drivers.Unsupportedf("resources.pids: a VM has no process limit")
	case t.BaseImage == "":
		return nil, drivers.Errorf(drivers.InvalidArgument, "base_image: required (a volume of pool %q or a volume path)", d.opts.Pool)
	}
	s := &spec{name: t.Name, image: t.BaseImage, meta: t.Metadata,
		kernel: d.opts.Kernel, initrd: d.opts.Initrd, cmdline: d.opts.Cmdline}
	if v, ok := t.Metadata[MetaKernel]; ok {
		s.kernel = v
	}
	if v, ok := t.Metadata[MetaInitrd]; ok {
		s.initrd = v
	}
	if v, ok := t.Metadata[MetaCmdline]; ok {
		s.cmdline = v
	}
	for _, p := range []struct{ key, v string }{{MetaKernel, s.kernel}, {MetaInitrd, s.initrd}} {
		if p.v != "" && !filepath.IsAbs(p.v) {
			return nil, drivers.Errorf(drivers.InvalidArgument, "metadata %s: %q is not an absolute path", p.key, p.v)
		}
	}
	if s.kernel == "" && s.initrd != "" {
		return nil, drivers.Errorf(drivers.InvalidArgument, "metadata %s: an initrd needs a kernel", MetaInitrd)
	}

	cores := t.Resources.CPUCores
	switch {
	case cores < 0 || math.IsNaN(cores) || math.IsInf(cores, 0):
		return nil, drivers.Errorf(drivers.InvalidArgument, "resources.cpu_cores: %v", cores)
	case cores == 0:
		s.vcpus = d.opts.VCPUs
	default:
		s.vcpus = int(math.Ceil(cores))
		if float64(s.vcpus) != cores {
			s.quota = cores
		}
	}
	s.maxVCPUs = d.opts.MaxVCPUs
	if s.maxVCPUs == 0 {
		s.maxVCPUs = 2 * s.vcpus
	}
	s.maxVCPUs = max(s.maxVCPUs, s.vcpus)
	switch m := t.Resources.MemoryMB; {
	case m < 0:
		return nil, drivers.Errorf(drivers.InvalidArgument, "resources.memory_mb: %d", m)
	case m == 0:
		s.memMiB = d.opts.MemoryMB
	default:
		s.memMiB = m
	}
	s.maxMemMiB = d.opts.MaxMemoryMB
	if s.maxMemMiB == 0 {
		s.maxMemMiB = 2 * s.memMiB
	}
	s.maxMemMiB = max(s.maxMemMiB, s.memMiB)
	if g := t.Resources.DiskGB; g < 0 || math.IsNaN(g) || math.IsInf(g, 0) {
		return nil, drivers.Errorf(drivers.InvalidArgument, "resources.disk_gb: %v", g)
	} else if g > 0 {
		s.diskBytes = uint64(g * (1 << 30))
	}

	if len(t.Environment) > 0 {
		if s.kernel == "" {
			return nil, drivers.Unsupportedf("environment: passed on the kernel command line, which needs a direct kernel boot (libvirt.kernel)")
		}
		if len(t.Environment) > 32 {
			return nil, drivers.Errorf(drivers.InvalidArgument, "environment: at most 32 variables (the kernel passes no more to init)")
		}
		for k, v := range t.Environment {
			if !envName.MatchString(k) {
				return nil, drivers.Errorf(drivers.InvalidArgument, "environment: %q is not a variable name for the kernel command line", k)
			}
			if strings.ContainsAny(v, " \t\r\n\"'\\") || strings.ContainsFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
				return nil, drivers.Errorf(drivers.InvalidArgument, "environment.%s: whitespace, quotes and control characters cannot pass the kernel command line", k)
			}
		}
		s.env = t.Environment
	}
	for i, n := range t.Networks {
		switch {
		case n.NetworkName == "":
			return nil, drivers.Errorf(drivers.InvalidArgument, "networks[%d].network_name: required", i)
		case n.IPAddress != "" || n.Gateway != "" || len(n.DNSServers) > 0:
			return nil, drivers.Unsupportedf("networks[%d]: ip_address, gateway and dns_servers are configured inside the guest, not by libvirt", i)
		}
		s.networks = append(s.networks, n.NetworkName)
	}
	return s, nil
}

// fullCmdline is the kernel command line with the environment appended
// (sorted, so the definition is deterministic).
func (s *spec) fullCmdline() string {
	parts := []string{}
	if s.cmdline != "" {
		parts = append(parts, s.cmdline)
	}
	keys := make([]string, 0, len(s.env))
	for k := range s.env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		parts = append(parts, k+"="+s.env[k])
	}
	return strings.Join(parts, " ")
}

// consoleLog is where a domain's serial console is logged.
func (d *Driver) consoleLog(name string) string {
	return filepath.Join(d.opts.ConsoleLogDir, name+".console.log")
}

// domainXML renders the definition of a new domain.
func (d *Driver) domainXML(s *spec, domType, diskPath string, o *owner) (string, error) {
	meta, err := marshalOwner(o)
	if err != nil {
		return "", err
	}
	port := uint(0)
	def := &libvirtxml.Domain{
		Type:          domType,
		Name:          s.name,
		Metadata:      &libvirtxml.DomainMetadata{XML: meta},
		Memory:        &libvirtxml.DomainMemory{Value: uint(s.maxMemMiB), Unit: "MiB"},
		CurrentMemory: &libvirtxml.DomainCurrentMemory{Value: uint(s.memMiB), Unit: "MiB"},
		VCPU:          &libvirtxml.DomainVCPU{Placement: "static", Current: uint(s.vcpus), Value: uint(s.maxVCPUs)},
		OS: &libvirtxml.DomainOS{
			Type:    &libvirtxml.DomainOSType{Arch: "x86_64", Machine: d.opts.Machine, Type: "hvm"},
			Kernel:  s.kernel,
			Initrd:  s.initrd,
			Cmdline: s.fullCmdline(),
		},
		Features:   &libvirtxml.DomainFeatureList{ACPI: &libvirtxml.DomainFeature{}},
		OnPoweroff: "destroy",
		OnReboot:   "restart",
		OnCrash:    "destroy",
		Devices: &libvirtxml.DomainDeviceList{
			Disks: []libvirtxml.DomainDisk{{
				Device: "disk",
				Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: "qcow2"},
				Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: diskPath}},
				Target: &libvirtxml.DomainDiskTarget{Dev: "vda", Bus: "virtio"},
			}},
			Serials: []libvirtxml.DomainSerial{{
				Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
				Target: &libvirtxml.DomainSerialTarget{Port: &port},
				Log:    &libvirtxml.DomainChardevLog{File: d.consoleLog(s.name), Append: "off"},
			}},
			Consoles: []libvirtxml.DomainConsole{{
				Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
				Target: &libvirtxml.DomainConsoleTarget{Type: "serial", Port: &port},
			}},
			Channels: []libvirtxml.DomainChannel{{
				Source: &libvirtxml.DomainChardevSource{UNIX: &libvirtxml.DomainChardevSourceUNIX{Mode: "bind"}},
				Target: &libvirtxml.DomainChannelTarget{VirtIO: &libvirtxml.DomainChannelTargetVirtIO{Name: agentChannel}},
			}},
			Controllers: []libvirtxml.DomainController{{Type: "usb", Model: "none"}},
			MemBalloon:  &libvirtxml.DomainMemBalloon{Model: "virtio"},
		},
	}
	if s.kernel == "" {
		def.OS.Cmdline = "" // QEMU takes -append only with -kernel: a disk boot has no command line
	}
	for _, n := range s.networks {
		def.Devices.Interfaces = append(def.Devices.Interfaces, networkInterface(n, ""))
	}
	if s.quota > 0 {
		const period = 100000
		def.CPUTune = &libvirtxml.DomainCPUTune{
			Period: &libvirtxml.DomainCPUTunePeriod{Value: period},
			Quota:  &libvirtxml.DomainCPUTuneQuota{Value: int64(s.quota / float64(s.vcpus) * period)},
		}
	}
	return def.Marshal()
}

// networkInterface is a virtio NIC on a libvirt network (mac empty: libvirt
// generates one).
func networkInterface(network, mac string) libvirtxml.DomainInterface {
	ifc := libvirtxml.DomainInterface{
		Source: &libvirtxml.DomainInterfaceSource{Network: &libvirtxml.DomainInterfaceSourceNetwork{Network: network}},
		Model:  &libvirtxml.DomainInterfaceModel{Type: "virtio"},
	}
	if mac != "" {
		ifc.MAC = &libvirtxml.DomainInterfaceMAC{Address: mac}
	}
	return ifc
}

// volumeOf finds the base image: a path, or a volume name in the pool.
func (d *Driver) volumeOf(ctx context.Context, l *golibvirt.Libvirt, pool golibvirt.StoragePool, image string) (golibvirt.StorageVol, error) {
	v, err := call(ctx, func() (golibvirt.StorageVol, error) {
		if filepath.IsAbs(image) {
			return l.StorageVolLookupByPath(image)
		}
		return l.StorageVolLookupByName(pool, image)
	})
	if err != nil {
		return v, fmt.Errorf("base_image %q (pool %s): %w", image, d.opts.Pool, err)
	}
	return v, nil
}

// volumeInfo reads a volume's path, capacity and format.
func volumeInfo(ctx context.Context, l *golibvirt.Libvirt, v golibvirt.StorageVol) (*libvirtxml.StorageVolume, error) {
	x, err := call(ctx, func() (string, error) { return l.StorageVolGetXMLDesc(v, 0) })
	if err != nil {
		return nil, fmt.Errorf("volume %s: %w", v.Name, err)
	}
	vol := &libvirtxml.StorageVolume{}
	if err := vol.Unmarshal(x); err != nil {
		return nil, fmt.Errorf("volume %s: %w", v.Name, err)
	}
	if vol.Target == nil {
		vol.Target = &libvirtxml.StorageVolumeTarget{}
	}
	if vol.Capacity == nil {
		vol.Capacity = &libvirtxml.StorageVolumeSize{}
	}
	return vol, nil
}

// overlayXML is a qcow2 volume backed by base (copy-on-write).
func overlayXML(name string, capacity uint64, base *libvirtxml.StorageVolume) (string, error) {
	format := "raw"
	if base.Target.Format != nil && base.Target.Format.Type != "" {
		format = base.Target.Format.Type
	}
	v := &libvirtxml.StorageVolume{
		Name:     name,
		Capacity: &libvirtxml.StorageVolumeSize{Unit: "bytes", Value: capacity},
		Target:   &libvirtxml.StorageVolumeTarget{Format: &libvirtxml.StorageVolumeTargetFormat{Type: "qcow2"}},
		BackingStore: &libvirtxml.StorageVolumeBackingStore{
			Path:   base.Target.Path,
			Format: &libvirtxml.StorageVolumeTargetFormat{Type: format},
		},
	}
	return v.Marshal()
}

// bytesOf converts a volume size with its unit to bytes.
func bytesOf(s *libvirtxml.StorageVolumeSize) uint64 {
	if s == nil {
		return 0
	}
	switch strings.ToLower(s.Unit) {
	case "", "b", "bytes":
		return s.Value
	case "k", "kib":
		return s.Value << 10
	case "m", "mib":
		return s.Value << 20
	case "g", "gib":
		return s.Value << 30
	}
	return s.Value
}

// Create defines a stopped domain: a qcow2 overlay of the base image in the
// pool, then the domain. When ctx ends or a step fails, what was made is
// removed again before Create returns, so nothing half-made remains.
func (d *Driver) Create(ctx context.Context, t drivers.InstanceTemplate) (drivers.Instance, error) {
	s, err := d.specOf(t)
	if err != nil {
		return drivers.Instance{}, err
	}
	l, err := d.conn()
	if err != nil {
		return drivers.Instance{}, err
	}
	if _, err := call(ctx, func() (golibvirt.Domain, error) { return l.DomainLookupByName(s.name) }); err == nil {
		return drivers.Instance{}, drivers.Errorf(drivers.AlreadyExists, "domain %s already exists", s.name)
	} else if classify(err) != drivers.NotFound {
		return drivers.Instance{}, fmt.Errorf("domain %s: %w", s.name, err)
	}
	for _, n := range s.networks {
		if _, err := call(ctx, func() (golibvirt.Network, error) { return l.NetworkLookupByName(n) }); err != nil {
			return drivers.Instance{}, fmt.Errorf("network %s: %w", n, err)
		}
	}
	domType, _ := d.domainType(ctx, l)
	pool, err := call(ctx, func() (golibvirt.StoragePool, error) { return l.StoragePoolLookupByName(d.opts.Pool) })
	if err != nil {
		return drivers.Instance{}, fmt.Errorf("storage pool %s: %w", d.opts.Pool, err)
	}
	baseVol, err := d.volumeOf(ctx, l, pool, s.image)
	if err != nil {
		return drivers.Instance{}, err
	}
	base, err := volumeInfo(ctx, l, baseVol)
	if err != nil {
		return drivers.Instance{}, err
	}
	capacity := max(bytesOf(base.Capacity), s.diskBytes)
	volXML, err := overlayXML(s.name+".qcow2", capacity, base)
	if err != nil {
		return drivers.Instance{}, err
	}
	if err := ctx.Err(); err != nil {
		return drivers.Instance{}, err
	}

	// From here on every step is undone if a later one fails or ctx ends.
	// The mutations are called directly (not through call) so that a
	// cancelled ctx never leaves one running unobserved.
	vol, err := l.StorageVolCreateXML(pool, volXML, 0)
	if err != nil {
		return drivers.Instance{}, fmt.Errorf("creating the overlay volume %s.qcow2 in pool %s: %w", s.name, d.opts.Pool, err)
	}
	undoVol := func() { _ = l.StorageVolDelete(vol, golibvirt.StorageVolDeleteNormal) }
	d.step("volume")
	path, err := l.StorageVolGetPath(vol)
	if err != nil {
		undoVol()
		return drivers.Instance{}, fmt.Errorf("overlay volume %s: %w", vol.Name, err)
	}
	if err := ctx.Err(); err != nil {
		undoVol()
		return drivers.Instance{}, err
	}
	o := &owner{Image: s.image, Created: time.Now().UTC().Format(time.RFC3339), Volumes: []string{path},
		Env: toKeyVals(s.env), Meta: toKeyVals(s.meta)}
	domXML, err := d.domainXML(s, domType, path, o)
	if err != nil {
		undoVol()
		return drivers.Instance{}, err
	}
	dom, err := l.DomainDefineXMLFlags(domXML, golibvirt.DomainDefineValidate)
	if err != nil {
		undoVol()
		return drivers.Instance{}, fmt.Errorf("defining domain %s: %w", s.name, err)
	}
	d.step("domain")
	if err := ctx.Err(); err != nil {
		_ = l.DomainUndefineFlags(dom, undefineFlags)
		undoVol()
		return drivers.Instance{}, err
	}
	x, err := d.load(ctx, l, dom, 0)
	if err != nil {
		return drivers.Instance{}, err
	}
	return d.instance(x), nil
}

// step calls the test hook after a mutating step of Create.
func (d *Driver) step(name string) {
	if d.afterStep != nil {
		d.afterStep(name)
	}
}

// undefineFlags remove a domain's snapshot, checkpoint, NVRAM and
// managed-save metadata together with it.
const undefineFlags = golibvirt.DomainUndefineManagedSave | golibvirt.DomainUndefineSnapshotsMetadata |
	golibvirt.DomainUndefineNvram | golibvirt.DomainUndefineCheckpointsMetadata

// Start starts a shut-off domain (or resumes a paused one).
func (d *Driver) Start(ctx context.Context, name string) (bool, error) {
	l, err := d.conn()
	if err != nil {
		return false, err
	}
	dom, err := d.lookup(ctx, l, name)
	if err != nil {
		return false, err
	}
	state, err := d.state(ctx, l, dom)
	if err != nil {
		return false, err
	}
	switch state {
	case int32(golibvirt.DomainRunning), 2: // running, blocked
		return false, nil
	case 3, 7: // paused, pmsuspended
		if err := call0(ctx, func() error { return l.DomainResume(dom) }); err != nil {
			return false, fmt.Errorf("resuming domain %s: %w", name, err)
		}
		return true, nil
	case 4: // being shut down
		return false, drivers.Errorf(drivers.Conflict, "domain %s is shutting down", name)
	}
	if err := call0(ctx, func() error { _, err := l.DomainCreateWithFlags(dom, 0); return err }); err != nil {
		return false, fmt.Errorf("starting domain %s: %w", name, err)
	}
	return true, nil
}

// state reads a domain's libvirt state.
func (d *Driver) state(ctx context.Context, l *golibvirt.Libvirt, dom golibvirt.Domain) (int32, error) {
	s, err := call(ctx, func() (int32, error) {
		s, _, err := l.DomainGetState(dom, 0)
		return s, err
	})
	if err != nil {
		return 0, fmt.Errorf("state of domain %s: %w", dom.Name, err)
	}
	return s, nil
}

// shutdownResend is how often a graceful stop repeats its request (a guest
// still booting does not yet listen to the ACPI button).
const shutdownResend = 2 * time.Second

// Stop shuts a domain down: the guest agent's shutdown when an agent is
// connected, else the ACPI power button, repeated every 2 s, waiting until
// the domain is off. After opts.Timeout it destroys the domain; when ctx
// ends first, Stop answers Timeout and the domain keeps running. Force
// destroys at once.
func (d *Driver) Stop(ctx context.Context, name string, opts drivers.StopOptions) (bool, error) {
	l, err := d.conn()
	if err != nil {
		return false, err
	}
	dom, err := d.lookup(ctx, l, name)
	if err != nil {
		return false, err
	}
	state, err := d.state(ctx, l, dom)
	if err != nil {
		return false, err
	}
	if !active(state) {
		return false, nil
	}
	if opts.Force {
		return true, d.destroy(ctx, l, dom)
	}
	graceful := time.Now().Add(opts.Timeout)
	var lastSent time.Time
	for {
		if time.Since(lastSent) >= shutdownResend {
			lastSent = time.Now()
			err := call0(ctx, func() error {
				return l.DomainShutdownFlags(dom, golibvirt.DomainShutdownAcpiPowerBtn|golibvirt.DomainShutdownGuestAgent)
			})
			if err != nil && classify(err) != drivers.Conflict { // Conflict: it stopped meanwhile
				return false, fmt.Errorf("shutting domain %s down: %w", name, err)
			}
		}
		state, err := d.state(ctx, l, dom)
		if err != nil {
			return false, err
		}
		if !active(state) {
			return true, nil
		}
		if time.Now().After(graceful) {
			return true, d.destroy(ctx, l, dom)
		}
		select {
		case <-ctx.Done():
			return false, fmt.Errorf("domain %s did not shut down before the deadline (still running): %w", name, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// destroy kills a domain's QEMU process; a domain already off is fine.
func (d *Driver) destroy(ctx context.Context, l *golibvirt.Libvirt, dom golibvirt.Domain) error {
	err := call0(ctx, func() error { return l.DomainDestroyFlags(dom, golibvirt.DomainDestroyDefault) })
	if err != nil && classify(err) == drivers.Conflict {
		if s, serr := d.state(ctx, l, dom); serr == nil && !active(s) {
			return nil
		}
	}
	if err != nil {
		return fmt.Errorf("destroying domain %s: %w", dom.Name, err)
	}
	return nil
}

// Delete undefines a domain with its snapshot, checkpoint, NVRAM and
// managed-save metadata, then deletes the volumes its owner marker lists
// (the ones this driver created) and its console log. Volumes it did not
// create are never deleted. A running domain is Conflict unless Force.
func (d *Driver) Delete(ctx context.Context, name string, opts drivers.DeleteOptions) (bool, error) {
	l, x, err := d.get(ctx, name)
	if err != nil {
		if opts.Force && classify(err) == drivers.NotFound {
			return false, nil
		}
		return false, err
	}
	if active(x.state) {
		if !opts.Force {
			return false, drivers.Errorf(drivers.Conflict, "domain %s is %s: stop it first or delete with force", name, nativeWord(x.state))
		}
		if err := d.destroy(ctx, l, x.dom); err != nil {
			return false, err
		}
	}
	if err := call0(ctx, func() error { return l.DomainUndefineFlags(x.dom, undefineFlags) }); err != nil {
		return false, fmt.Errorf("undefining domain %s: %w", name, err)
	}
	if x.owner != nil {
		for _, p := range x.owner.Volumes {
			v, err := call(ctx, func() (golibvirt.StorageVol, error) { return l.StorageVolLookupByPath(p) })
			if err != nil {
				if classify(err) == drivers.NotFound {
					continue
				}
				return true, fmt.Errorf("domain %s undefined, but its volume %s: %w", name, p, err)
			}
			if err := call0(ctx, func() error { return l.StorageVolDelete(v, golibvirt.StorageVolDeleteNormal) }); err != nil &&
				classify(err) != drivers.NotFound {
				return true, fmt.Errorf("domain %s undefined, but deleting its volume %s: %w", name, p, err)
			}
		}
		if f := consoleLogOf(x.def); f == d.consoleLog(name) {
			removeLocal(f)
		}
	}
	d.metricsMu.Lock()
	delete(d.prev, x.uuid())
	d.metricsMu.Unlock()
	return true, nil
}

func nativeWord(state int32) string { _, w := normalize(state); return w }
