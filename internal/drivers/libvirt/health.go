package libvirt

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/subbus/subbus/internal/drivers"
)

// local reports whether the URI names a libvirtd on this host (files it
// writes, like console logs and /dev/kvm, are then readable here).
func (d *Driver) local() bool {
	u, err := url.Parse(d.opts.URI)
	if err != nil {
		return false
	}
	return u.Host == "" && !strings.Contains(u.Scheme, "+ssh") && !strings.Contains(u.Scheme, "+tcp") &&
		!strings.Contains(u.Scheme, "+tls")
}

// domainType returns the domain type created domains get ("kvm" or
// "qemu") and why. With domain_type auto it is probed once per driver:
// KVM must be offered by the hypervisor's capabilities and a probe domain
// must really boot under it (its guest agent must answer), because on some
// hosts /dev/kvm opens but a Linux guest dies with an emulation failure.
func (d *Driver) domainType(ctx context.Context, l *golibvirt.Libvirt) (string, string) {
	if d.opts.DomainType != "auto" {
		return d.opts.DomainType, "forced by libvirt.domain_type"
	}
	// The answer is kept per URI for the process: a probe boots a guest.
	probes.mu.Lock()
	defer probes.mu.Unlock()
	if r, ok := probes.done[d.opts.URI]; ok {
		return r[0], r[1]
	}
	t, note, final := d.probeKVM(ctx, l)
	if final {
		probes.done[d.opts.URI] = [2]string{t, note}
	}
	return t, note
}

// probes are the KVM probe results of this process, per URI.
var probes = struct {
	mu   sync.Mutex
	done map[string][2]string
}{done: map[string][2]string{}}

// probeKVM decides between kvm and qemu; final=false when the answer came
// from an interrupted probe and should be asked again.
func (d *Driver) probeKVM(ctx context.Context, l *golibvirt.Libvirt) (typ, note string, final bool) {
	if d.local() {
		if _, err := os.Stat("/dev/kvm"); err != nil {
			return "qemu", "TCG: /dev/kvm does not exist", true
		}
	}
	capsXML, err := call(ctx, l.ConnectGetCapabilities)
	if err != nil {
		return "qemu", fmt.Sprintf("TCG: capabilities unreadable: %v", err), false
	}
	var caps libvirtxml.Caps
	if err := caps.Unmarshal(capsXML); err != nil {
		return "qemu", fmt.Sprintf("TCG: capabilities unparsable: %v", err), true
	}
	offered := false
	for _, g := range caps.Guests {
		if g.Arch.Name != "x86_64" {
			continue
		}
		for _, dom := range g.Arch.Domains {
			if dom.Type == "kvm" {
				offered = true
			}
		}
	}
	if !offered {
		return "qemu", "TCG: the hypervisor offers no kvm domain type", true
	}
	kernel, initrd := d.opts.ProbeKernel, d.opts.ProbeInitrd
	if kernel == "" {
		kernel, initrd = d.opts.Kernel, d.opts.Initrd
	}
	if kernel == "" {
		return "qemu", "TCG: KVM is offered but cannot be boot-checked without libvirt.probe_kernel; set libvirt.domain_type: kvm to force it", true
	}
	ok, why := d.bootProbe(ctx, l, kernel, initrd)
	if ctx.Err() != nil {
		return "qemu", "TCG: the KVM probe was interrupted", false
	}
	if ok {
		return "kvm", "KVM: a probe guest booted under KVM", true
	}
	return "qemu", "TCG: a probe guest did not boot under KVM: " + why, true
}

// bootProbe starts a transient KVM domain from kernel/initrd and waits
// (at most 40 s) for its guest agent to answer.
func (d *Driver) bootProbe(ctx context.Context, l *golibvirt.Libvirt, kernel, initrd string) (bool, string) {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	s := &spec{name: "subbus-kvm-probe-" + hex.EncodeToString(b), vcpus: 1, maxVCPUs: 1, memMiB: 256, maxMemMiB: 256,
		kernel: kernel, initrd: initrd, cmdline: "console=ttyS0 panic=-1"}
	x, err := d.domainXML(s, "kvm", "", &owner{})
	if err != nil {
		return false, err.Error()
	}
	def := &libvirtxml.Domain{}
	if err := def.Unmarshal(x); err != nil {
		return false, err.Error()
	}
	def.Devices.Disks = nil // a transient probe needs no disk
	def.Devices.Serials[0].Log = nil
	x, err = def.Marshal()
	if err != nil {
		return false, err.Error()
	}
	dom, err := l.DomainCreateXML(x, 0)
	if err != nil {
		return false, err.Error()
	}
	defer func() { _ = l.DomainDestroyFlags(dom, golibvirt.DomainDestroyDefault) }()
	deadline := time.Now().Add(40 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		st, _, err := l.DomainGetState(dom, 0)
		if err != nil {
			return false, err.Error()
		}
		if st != int32(golibvirt.DomainRunning) {
			return false, "the probe domain is " + nativeWord(st)
		}
		if _, err := l.QEMUDomainAgentCommand(dom, `{"execute":"guest-ping"}`, 2, 0); err == nil {
			return true, ""
		}
		time.Sleep(500 * time.Millisecond)
	}
	return false, "its guest agent did not answer within 40 s"
}

// Health reports libvirt's and the hypervisor's versions, the host's CPUs
// and memory, the pools with their free space, the domains by state and
// whether created domains use KVM or TCG. A pool that is not running is
// an issue (healthy only when the configured pool runs).
func (d *Driver) Health(ctx context.Context) (drivers.Health, error) {
	l, err := d.conn()
	if err != nil {
		return drivers.Health{}, err
	}
	libVer, err := call(ctx, l.ConnectGetLibVersion)
	if err != nil {
		return drivers.Health{}, fmt.Errorf("libvirt version: %w", err)
	}
	h := drivers.Health{Healthy: true, Version: versionString(libVer), Details: map[string]string{"uri": d.opts.URI}}
	if hv, err := call(ctx, l.ConnectGetVersion); err == nil {
		h.APIVersion = versionString(hv)
		h.Details["hypervisor_version"] = versionString(hv)
	}
	if host, err := call(ctx, l.ConnectGetHostname); err == nil {
		h.Details["hostname"] = host
	}
	type nodeInfo struct {
		mem  uint64
		cpus int32
		mhz  int32
	}
	if ni, err := call(ctx, func() (nodeInfo, error) {
		_, mem, cpus, mhz, _, _, _, _, err := l.NodeGetInfo()
		return nodeInfo{mem, cpus, mhz}, err
	}); err == nil {
		h.Details[drivers.DetailHostCPUs] = fmt.Sprint(ni.cpus)
		h.Details[drivers.DetailHostMemoryMiB] = fmt.Sprint(ni.mem / 1024)
	}
	if free, err := call(ctx, l.NodeGetFreeMemory); err == nil {
		h.Details[drivers.DetailHostMemoryFreeMiB] = fmt.Sprint(free >> 20)
	}
	typ, note := d.domainType(ctx, l)
	h.Details["domain_type"] = typ
	h.Details["accelerator"] = map[string]string{"kvm": "kvm", "qemu": "tcg"}[typ]
	h.Details["domain_type_reason"] = note

	pools, err := call(ctx, func() ([]golibvirt.StoragePool, error) {
		ps, _, err := l.ConnectListAllStoragePools(1, 0)
		return ps, err
	})
	if err != nil {
		return drivers.Health{}, fmt.Errorf("listing storage pools: %w", err)
	}
	found := false
	for _, p := range pools {
		type poolInfo struct {
			state                uint8
			capacity, alloc, avl uint64
		}
		pi, err := call(ctx, func() (poolInfo, error) {
			s, c, a, v, err := l.StoragePoolGetInfo(p)
			return poolInfo{s, c, a, v}, err
		})
		if err != nil {
			continue
		}
		running := pi.state == 2 // VIR_STORAGE_POOL_RUNNING
		h.Details["pool."+p.Name] = fmt.Sprintf("running=%v capacity=%dMiB available=%dMiB", running, pi.capacity>>20, pi.avl>>20)
		if p.Name == d.opts.Pool {
			found = true
			if !running {
				h.Healthy = false
				h.Issues = append(h.Issues, fmt.Sprintf("storage pool %s is not running", p.Name))
			}
		}
	}
	if !found {
		h.Healthy = false
		h.Issues = append(h.Issues, fmt.Sprintf("storage pool %s (libvirt.pool) does not exist", d.opts.Pool))
	}
	list, err := d.List(ctx)
	if err != nil {
		return drivers.Health{}, err
	}
	h.CountStates(list)
	return h, nil
}

// versionString renders libvirt's major*1e6+minor*1e3+release.
func versionString(v uint64) string {
	return fmt.Sprintf("%d.%d.%d", v/1000000, v/1000%1000, v%1000)
}
