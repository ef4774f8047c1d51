package drivers

import "time"

// State is the normalized state of an instance, the same on every substrate.
// The substrate's own word for it is kept in Instance.NativeState.
type State string

const (
	StateRunning  State = "running"
	StateStopped  State = "stopped" // created but not running, exited, shut off
	StateStarting State = "starting"
	StateStopping State = "stopping"
	StatePaused   State = "paused"
	StateError    State = "error"   // crashed, FATAL, failed to start
	StateUnknown  State = "unknown" // the substrate could not be asked; never reported as stopped
)

// States lists every normalized state.
func States() []State {
	return []State{StateRunning, StateStopped, StateStarting, StateStopping, StatePaused, StateError, StateUnknown}
}

// ResourceLimits are the limits of an instance. A zero field means "no
// limit" (or "not set").
type ResourceLimits struct {
	CPUCores    float64
	MemoryMB    int64
	DiskGB      float64
	NetworkMbps float64
	// PIDs caps the number of processes/threads, where the substrate can.
	PIDs int64
}

// IsZero reports whether no limit is set.
func (l ResourceLimits) IsZero() bool { return l == ResourceLimits{} }

// LimitField names one field of ResourceLimits, spelled as on the wire.
type LimitField string

// The limit fields.
const (
	LimitCPUCores    LimitField = "cpu_cores"
	LimitMemoryMB    LimitField = "memory_mb"
	LimitDiskGB      LimitField = "disk_gb"
	LimitNetworkMbps LimitField = "network_mbps"
	LimitPIDs        LimitField = "pids"
)

// LimitFields lists every limit field.
func LimitFields() []LimitField {
	return []LimitField{LimitCPUCores, LimitMemoryMB, LimitDiskGB, LimitNetworkMbps, LimitPIDs}
}

// Value returns l's value of field f (0: no limit).
func (l ResourceLimits) Value(f LimitField) float64 {
	switch f {
	case LimitCPUCores:
		return l.CPUCores
	case LimitMemoryMB:
		return float64(l.MemoryMB)
	case LimitDiskGB:
		return l.DiskGB
	case LimitNetworkMbps:
		return l.NetworkMbps
	case LimitPIDs:
		return float64(l.PIDs)
	}
	return 0
}

// Measure is a bit mask saying which fields of a ResourceUsage the substrate
// really measured: a zero value with its bit clear means "not measurable",
// with its bit set it means a measured zero.
type Measure uint32

const (
	MeasureCPU Measure = 1 << iota
	MeasureMemory
	MeasureDisk   // disk space used (DiskGB)
	MeasureDiskIO // DiskReadMBps/DiskWriteMBps and their counters
	MeasureNetwork
)

var measureNames = []struct {
	m    Measure
	name string
}{
	{MeasureCPU, "cpu"}, {MeasureMemory, "memory"}, {MeasureDisk, "disk"},
	{MeasureDiskIO, "disk_io"}, {MeasureNetwork, "network"},
}

// Has reports whether every bit of f is set in m.
func (m Measure) Has(f Measure) bool { return m&f == f }

// Names returns the names of the set bits, e.g. ["cpu","memory"].
func (m Measure) Names() []string {
	out := []string{}
	for _, n := range measureNames {
		if m.Has(n.m) {
			out = append(out, n.name)
		}
	}
	return out
}

// UsageCounters are raw cumulative counters, as the substrate reports them,
// so consumers can compute their own rates.
type UsageCounters struct {
	CPUTimeNs      uint64
	MemoryBytes    uint64
	DiskUsedBytes  uint64
	DiskReadBytes  uint64
	DiskWriteBytes uint64
	NetRxBytes     uint64
	NetTxBytes     uint64
}

// ResourceUsage is one sample of an instance's usage. Rates are computed
// from the previous sample the driver keeps; the first sample of an
// instance reports rates of 0 with the counters filled in.
type ResourceUsage struct {
	Time          time.Time
	CPUPercent    float64 // 100 = one core busy
	MemoryMB      float64
	DiskGB        float64
	DiskReadMBps  float64
	DiskWriteMBps float64
	NetworkRxMbps float64
	NetworkTxMbps float64
	Counters      UsageCounters
	Measured      Measure
}

// NetworkConfig attaches an instance to a network. IPAddress is optional
// (static address where the substrate allows it).
type NetworkConfig struct {
	NetworkName string
	IPAddress   string
	Gateway     string
	DNSServers  []string
}

// Volume mounts Source (a host path, or a substrate volume name) at Target
// inside the instance.
type Volume struct {
	Source   string
	Target   string
	ReadOnly bool
}

// InstanceTemplate describes an instance to create.
type InstanceTemplate struct {
	Name      string
	BaseImage string // image, alias, or (process driver) executable
	// Command and its arguments, for substrates that run one (process,
	// supervisor, docker's CMD). For the process driver BaseImage is argv[0]
	// when Command is empty.
	Command     []string
	WorkDir     string
	User        string
	Resources   ResourceLimits
	Networks    []NetworkConfig
	Environment map[string]string
	Volumes     []Volume
	Metadata    map[string]string
}

// Instance is what the substrate reports about one instance. The driver
// and host serving it are not part of it: the manager knows them, and the
// wire form (messages.Instance) carries them.
type Instance struct {
	Name        string
	ID          string
	State       State
	NativeState string // the substrate's own word
	Image       string
	Created     time.Time
	Metadata    map[string]string
	Limits      ResourceLimits
	Networks    []NetworkConfig
	// What the user gave and the substrate knows, where it knows it (a
	// zero field: not reported by this substrate). Environment holds
	// the values as the substrate has them; the wire masks secret ones.
	Command     []string
	Environment map[string]string
	Volumes     []Volume
	WorkDir     string
	User        string
	// PID is the main process's id on the host while running (0: not
	// running or not known).
	PID int
	// ExitCode is the status of the last exit, once the instance has
	// exited (nil: never exited, or not known).
	ExitCode *int
	// StartedAt is when the instance last started (zero: not known).
	StartedAt time.Time
	// Managed is true when this fleet created the instance; unmanaged ones
	// are listed (and may be started/stopped) but some drivers refuse to
	// delete them.
	Managed bool
}

// Snapshot is a point-in-time copy of an instance.
type Snapshot struct {
	Name        string
	Instance    string
	Created     time.Time
	Description string
	SizeBytes   int64
}

// Network is a network of the substrate.
type Network struct {
	Name     string
	ID       string
	Type     string // bridge, macvlan, …
	Subnet   string
	Gateway  string
	Internal bool // no route out
	// Managed is true when this fleet created the network, the meaning
	// Instance.Managed has (on Docker the io.subbus.managed label, on LXD
	// the user.subbus.managed config key; libvirt and Proxmox networks
	// carry no such mark and are never Managed).
	Managed bool
	// Attachable is true when AttachNetwork can put an instance on the
	// network through this driver (false for Docker's host and none
	// networks, LXD's host interfaces, inactive libvirt networks).
	Attachable bool
}

// Health is the state of a substrate as a whole.
type Health struct {
	Healthy    bool
	Version    string // substrate version
	APIVersion string
	// Issues are human-readable problems; a healthy substrate may still
	// have some (warnings).
	Issues []string
	// Instances counts instances by normalized state.
	Instances map[State]int
	// Usage is the substrate's own resource usage where it reports one.
	Usage   *ResourceUsage
	Details map[string]string
}

// Health.Details keys every driver that knows the host's size uses, with
// the unit in the name (MiB = 2^20 bytes), so the same key means the same
// thing on every driver.
const (
	DetailHostCPUs          = "host_cpus"            // logical CPUs of the substrate's host
	DetailHostMemoryMiB     = "host_memory_mib"      // its total memory
	DetailHostMemoryUsedMiB = "host_memory_used_mib" // memory in use
	DetailHostMemoryFreeMiB = "host_memory_free_mib" // memory free
)

// CountStates fills h.Instances from a list.
func (h *Health) CountStates(list []Instance) {
	h.Instances = map[State]int{}
	for _, i := range list {
		h.Instances[i.State]++
	}
}

// StopOptions control Stop. The manager guarantees Timeout > 0 unless Force.
type StopOptions struct {
	Force   bool          // kill at once (SIGKILL, destroy, …)
	Timeout time.Duration // graceful wait before killing
}

// DeleteOptions control Delete.
type DeleteOptions struct {
	// Force removes a running instance (killing it) and makes deleting a
	// missing instance succeed.
	Force bool
}

// ExecRequest runs a command inside an instance.
type ExecRequest struct {
	Command []string
	Env     map[string]string
	WorkDir string
	User    string
	Stdin   []byte
}

// LogOptions select log lines. Lines <= 0 means the manager's default.
type LogOptions struct {
	Lines  int
	Follow bool
}

// LogLine is one line of an instance's output.
type LogLine struct {
	Time   time.Time
	Stream string // stdout, stderr, console
	Line   string
}
