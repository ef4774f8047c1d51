package drivers

import (
	"encoding/json"
	"fmt"
	"time"
)

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
	CPUCores    float64 `json:"cpu_cores,omitempty"`
	MemoryMB    int64   `json:"memory_mb,omitempty"`
	DiskGB      float64 `json:"disk_gb,omitempty"`
	NetworkMbps float64 `json:"network_mbps,omitempty"`
	// PIDs caps the number of processes/threads, where the substrate can.
	PIDs int64 `json:"pids,omitempty"`
}

// IsZero reports whether no limit is set.
func (l ResourceLimits) IsZero() bool { return l == ResourceLimits{} }

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

// MarshalJSON encodes the mask as the list of measured field groups.
func (m Measure) MarshalJSON() ([]byte, error) { return json.Marshal(m.Names()) }

// UnmarshalJSON decodes a list of names; unknown names are an error.
func (m *Measure) UnmarshalJSON(b []byte) error {
	var names []string
	if err := json.Unmarshal(b, &names); err != nil {
		return err
	}
	var out Measure
	for _, s := range names {
		found := false
		for _, n := range measureNames {
			if n.name == s {
				out |= n.m
				found = true
			}
		}
		if !found {
			return fmt.Errorf("unknown measure %q", s)
		}
	}
	*m = out
	return nil
}

// UsageCounters are raw cumulative counters, as the substrate reports them,
// so consumers can compute their own rates.
type UsageCounters struct {
	CPUTimeNs      uint64 `json:"cpu_time_ns"`
	MemoryBytes    uint64 `json:"memory_bytes"`
	DiskUsedBytes  uint64 `json:"disk_used_bytes"`
	DiskReadBytes  uint64 `json:"disk_read_bytes"`
	DiskWriteBytes uint64 `json:"disk_write_bytes"`
	NetRxBytes     uint64 `json:"net_rx_bytes"`
	NetTxBytes     uint64 `json:"net_tx_bytes"`
}

// ResourceUsage is one sample of an instance's usage. Rates are computed
// from the previous sample the driver keeps; the first sample of an
// instance reports rates of 0 with the counters filled in.
type ResourceUsage struct {
	Time          time.Time     `json:"time"`
	CPUPercent    float64       `json:"cpu_percent"` // 100 = one core busy
	MemoryMB      float64       `json:"memory_mb"`
	DiskGB        float64       `json:"disk_gb"`
	DiskReadMBps  float64       `json:"disk_read_mbps"`
	DiskWriteMBps float64       `json:"disk_write_mbps"`
	NetworkRxMbps float64       `json:"network_rx_mbps"`
	NetworkTxMbps float64       `json:"network_tx_mbps"`
	Counters      UsageCounters `json:"counters"`
	Measured      Measure       `json:"measured"`
}

// NetworkConfig attaches an instance to a network. IPAddress is optional
// (static address where the substrate allows it).
type NetworkConfig struct {
	NetworkName string   `json:"network_name"`
	IPAddress   string   `json:"ip_address,omitempty"`
	Gateway     string   `json:"gateway,omitempty"`
	DNSServers  []string `json:"dns_servers,omitempty"`
}

// Volume mounts Source (a host path, or a substrate volume name) at Target
// inside the instance.
type Volume struct {
	Source   string `json:"source"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

// InstanceTemplate describes an instance to create.
type InstanceTemplate struct {
	Name      string `json:"name"`
	BaseImage string `json:"base_image"` // image, alias, or (process driver) executable
	// Command and its arguments, for substrates that run one (process,
	// supervisor, docker's CMD). For the process driver BaseImage is argv[0]
	// when Command is empty.
	Command     []string          `json:"command,omitempty"`
	WorkDir     string            `json:"workdir,omitempty"`
	User        string            `json:"user,omitempty"`
	Resources   ResourceLimits    `json:"resources,omitempty"`
	Networks    []NetworkConfig   `json:"networks,omitempty"`
	Environment map[string]string `json:"environment,omitempty"`
	Volumes     []Volume          `json:"volumes,omitempty"`
	Metadata    map[string]string `json:"metadata,omitempty"`
}

// Instance is what the substrate reports about one instance.
type Instance struct {
	Name        string            `json:"name"`
	ID          string            `json:"id"`
	Driver      string            `json:"driver"`
	Host        string            `json:"host"`
	State       State             `json:"state"`
	NativeState string            `json:"native_state,omitempty"` // the substrate's own word
	Image       string            `json:"image,omitempty"`
	Created     time.Time         `json:"created,omitzero"`
	Metadata    map[string]string `json:"metadata,omitempty"`
	Limits      ResourceLimits    `json:"limits,omitzero"`
	Networks    []NetworkConfig   `json:"networks,omitempty"`
	// Managed is true when this fleet created the instance; unmanaged ones
	// are listed (and may be started/stopped) but some drivers refuse to
	// delete them.
	Managed bool `json:"managed"`
}

// Snapshot is a point-in-time copy of an instance.
type Snapshot struct {
	Name        string    `json:"name"`
	Instance    string    `json:"instance"`
	Created     time.Time `json:"created,omitzero"`
	Description string    `json:"description,omitempty"`
	SizeBytes   int64     `json:"size_bytes,omitempty"`
}

// Network is a network the substrate can attach instances to.
type Network struct {
	Name     string `json:"name"`
	ID       string `json:"id,omitempty"`
	Type     string `json:"type,omitempty"` // bridge, macvlan, …
	Subnet   string `json:"subnet,omitempty"`
	Gateway  string `json:"gateway,omitempty"`
	Internal bool   `json:"internal"` // no route out
	Managed  bool   `json:"managed"`
}

// Health is the state of a substrate as a whole.
type Health struct {
	Healthy    bool   `json:"healthy"`
	Version    string `json:"version,omitempty"` // substrate version
	APIVersion string `json:"api_version,omitempty"`
	// Issues are human-readable problems; a healthy substrate may still
	// have some (warnings).
	Issues []string `json:"issues,omitempty"`
	// Instances counts instances by normalized state.
	Instances map[State]int `json:"instances,omitempty"`
	// Usage is the substrate's own resource usage where it reports one.
	Usage   *ResourceUsage    `json:"usage,omitempty"`
	Details map[string]string `json:"details,omitempty"`
}

// CountStates fills h.Instances from a list.
func (h *Health) CountStates(list []Instance) {
	h.Instances = map[State]int{}
	for _, i := range list {
		h.Instances[i.State]++
	}
}

// StopOptions control Stop. The manager guarantees Timeout > 0 unless Force.
type StopOptions struct {
	Force   bool          `json:"force,omitempty"`   // kill at once (SIGKILL, destroy, …)
	Timeout time.Duration `json:"timeout,omitempty"` // graceful wait before killing
}

// DeleteOptions control Delete.
type DeleteOptions struct {
	// Force removes a running instance (killing it) and makes deleting a
	// missing instance succeed.
	Force bool `json:"force,omitempty"`
}

// ExecRequest runs a command inside an instance.
type ExecRequest struct {
	Command []string          `json:"command"`
	Env     map[string]string `json:"env,omitempty"`
	WorkDir string            `json:"workdir,omitempty"`
	User    string            `json:"user,omitempty"`
	Stdin   []byte            `json:"stdin,omitempty"`
}

// ExecResult is the outcome of Exec. Stdout and Stderr are filled only
// when the caller collected output (manager.Exec without writers).
type ExecResult struct {
	ExitCode int    `json:"exit_code"`
	Stdout   []byte `json:"stdout,omitempty"`
	Stderr   []byte `json:"stderr,omitempty"`
}

// LogOptions select log lines. Lines <= 0 means the manager's default.
type LogOptions struct {
	Lines  int  `json:"lines,omitempty"`
	Follow bool `json:"follow,omitempty"`
}

// LogLine is one line of an instance's output.
type LogLine struct {
	Time   time.Time `json:"time,omitzero"`
	Stream string    `json:"stream"` // stdout, stderr, console
	Line   string    `json:"line"`
}
