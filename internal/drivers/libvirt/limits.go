package libvirt

import (
	"context"
	"fmt"
	"math"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/subbus/subbus/internal/drivers"
)

// cpuPeriod is the scheduler period a fractional cpu_cores is expressed in.
const cpuPeriod = 100000

// GetLimits returns the domain's configured vcpus (reduced by a cpu quota
// when one is set) and memory (the balloon target, <currentMemory>). These
// are the persistent values, which SetLimits also applies live.
func (d *Driver) GetLimits(ctx context.Context, name string) (drivers.ResourceLimits, error) {
	l, err := d.conn()
	if err != nil {
		return drivers.ResourceLimits{}, err
	}
	dom, err := d.lookup(ctx, l, name)
	if err != nil {
		return drivers.ResourceLimits{}, err
	}
	x, err := d.load(ctx, l, dom, golibvirt.DomainXMLInactive)
	if err != nil {
		return drivers.ResourceLimits{}, err
	}
	return limitsOf(x.def), nil
}

// SetLimits changes vcpus and memory, live (on a running domain) and in
// the persistent definition. A running domain can go up to the maxima set
// at create (<vcpu> and <memory>); beyond them only a stopped domain can
// be raised (the maxima are raised too). A fractional cpu_cores sets the
// scheduler's vcpu_quota (needs the cgroup cpu controller on a running
// domain). Memory is changed through the balloon, so a live change takes
// effect when the guest's balloon driver follows. disk_gb, network_mbps
// and pids are Unsupported.
func (d *Driver) SetLimits(ctx context.Context, name string, lim drivers.ResourceLimits) (drivers.ResourceLimits, error) {
	switch {
	case lim.DiskGB != 0:
		return drivers.ResourceLimits{}, drivers.Unsupportedf("disk_gb: the libvirt driver does not resize disks")
	case lim.NetworkMbps != 0:
		return drivers.ResourceLimits{}, drivers.Unsupportedf("network_mbps: not supported by the libvirt driver")
	case lim.PIDs != 0:
		return drivers.ResourceLimits{}, drivers.Unsupportedf("pids: a VM has no process limit")
	case lim.CPUCores < 0 || math.IsNaN(lim.CPUCores) || math.IsInf(lim.CPUCores, 0):
		return drivers.ResourceLimits{}, drivers.Errorf(drivers.InvalidArgument, "cpu_cores: %v", lim.CPUCores)
	case lim.MemoryMB < 0:
		return drivers.ResourceLimits{}, drivers.Errorf(drivers.InvalidArgument, "memory_mb: %d", lim.MemoryMB)
	}
	l, err := d.conn()
	if err != nil {
		return drivers.ResourceLimits{}, err
	}
	dom, err := d.lookup(ctx, l, name)
	if err != nil {
		return drivers.ResourceLimits{}, err
	}
	x, err := d.load(ctx, l, dom, golibvirt.DomainXMLInactive)
	if err != nil {
		return drivers.ResourceLimits{}, err
	}
	running := active(x.state)
	var maxMiB int64
	if x.def.Memory != nil {
		maxMiB = toMiB(x.def.Memory.Value, x.def.Memory.Unit)
	}
	maxVCPUs := 0
	if x.def.VCPU != nil {
		maxVCPUs = int(x.def.VCPU.Value)
	}
	if lim.MemoryMB > 0 {
		if lim.MemoryMB > maxMiB && running {
			return drivers.ResourceLimits{}, drivers.Errorf(drivers.Conflict,
				"memory_mb: %d is above the maximum of %d MiB set at create; a running domain cannot go beyond it (stop it first)", lim.MemoryMB, maxMiB)
		}
		if lim.MemoryMB > maxMiB {
			if err := call0(ctx, func() error {
				return l.DomainSetMemoryFlags(dom, uint64(lim.MemoryMB)<<10, uint32(golibvirt.DomainMemConfig|golibvirt.DomainMemMaximum))
			}); err != nil {
				return drivers.ResourceLimits{}, fmt.Errorf("raising the maximum memory of %s: %w", name, err)
			}
		}
		flags := golibvirt.DomainMemConfig
		if running {
			flags |= golibvirt.DomainMemLive
		}
		if err := call0(ctx, func() error { return l.DomainSetMemoryFlags(dom, uint64(lim.MemoryMB)<<10, uint32(flags)) }); err != nil {
			return drivers.ResourceLimits{}, fmt.Errorf("setting the memory of %s: %w", name, err)
		}
	}
	if lim.CPUCores > 0 {
		n := int(math.Ceil(lim.CPUCores))
		if n > maxVCPUs && running {
			return drivers.ResourceLimits{}, drivers.Errorf(drivers.Conflict,
				"cpu_cores: %v needs %d vcpus, above the maximum of %d set at create; a running domain cannot go beyond it (stop it first)", lim.CPUCores, n, maxVCPUs)
		}
		if n > maxVCPUs {
			if err := call0(ctx, func() error {
				return l.DomainSetVcpusFlags(dom, uint32(n), uint32(golibvirt.DomainVCPUConfig|golibvirt.DomainVCPUMaximum))
			}); err != nil {
				return drivers.ResourceLimits{}, fmt.Errorf("raising the maximum vcpus of %s: %w", name, err)
			}
		}
		cur := 0
		if x.def.VCPU != nil {
			cur = int(x.def.VCPU.Value)
			if x.def.VCPU.Current > 0 {
				cur = int(x.def.VCPU.Current)
			}
		}
		if n != cur {
			flags := golibvirt.DomainVCPUConfig
			if running {
				flags |= golibvirt.DomainVCPULive
			}
			if err := call0(ctx, func() error { return l.DomainSetVcpusFlags(dom, uint32(n), uint32(flags)) }); err != nil {
				return drivers.ResourceLimits{}, fmt.Errorf("setting the vcpus of %s: %w", name, err)
			}
		}
		quota := int64(-1) // unlimited
		if float64(n) != lim.CPUCores {
			quota = int64(lim.CPUCores / float64(n) * cpuPeriod)
		}
		if quota > 0 || hasQuota(x.def) {
			flags := golibvirt.DomainAffectConfig
			if running {
				flags |= golibvirt.DomainAffectLive
			}
			ps := []golibvirt.TypedParam{
				{Field: "vcpu_period", Value: *golibvirt.NewTypedParamValueUllong(cpuPeriod)},
				{Field: "vcpu_quota", Value: *golibvirt.NewTypedParamValueLlong(quota)},
			}
			if err := call0(ctx, func() error { return l.DomainSetSchedulerParametersFlags(dom, ps, uint32(flags)) }); err != nil {
				return drivers.ResourceLimits{}, fmt.Errorf("setting the cpu quota of %s: %w", name, err)
			}
		}
	}
	return d.GetLimits(ctx, name)
}

func hasQuota(def *libvirtxml.Domain) bool {
	return def.CPUTune != nil && def.CPUTune.Quota != nil && def.CPUTune.Quota.Value > 0
}
