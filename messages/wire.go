package messages

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

// The wire forms of the driver contract's types. The contract types in
// internal/drivers carry no JSON tags: these structs are the JSON of the
// bus (and of template files, whose YAML keys are the JSON keys), so
// schemas/ changes only when this package does. Each has a conversion
// from the contract type (…From) and, where a caller sends it, back
// (Contract). Fields the manager owns (Instance.Driver/Host, the event's
// ID, RequestID, Source, Driver, Host) are filled when converting.

// ResourceLimits is the wire form of drivers.ResourceLimits.
type ResourceLimits struct {
	CPUCores    float64 `json:"cpu_cores,omitempty"`
	MemoryMB    int64   `json:"memory_mb,omitempty"`
	DiskGB      float64 `json:"disk_gb,omitempty"`
	NetworkMbps float64 `json:"network_mbps,omitempty"`
	PIDs        int64   `json:"pids,omitempty"`
}

// LimitsFrom converts contract limits to the wire.
func LimitsFrom(l drivers.ResourceLimits) ResourceLimits {
	return ResourceLimits{CPUCores: l.CPUCores, MemoryMB: l.MemoryMB, DiskGB: l.DiskGB, NetworkMbps: l.NetworkMbps, PIDs: l.PIDs}
}

// Contract converts wire limits to the contract type.
func (l ResourceLimits) Contract() drivers.ResourceLimits {
	return drivers.ResourceLimits{CPUCores: l.CPUCores, MemoryMB: l.MemoryMB, DiskGB: l.DiskGB, NetworkMbps: l.NetworkMbps, PIDs: l.PIDs}
}

// IsZero reports whether no limit is set.
func (l ResourceLimits) IsZero() bool { return l == ResourceLimits{} }

// Measure is the wire form of drivers.Measure: a JSON list of the
// measured field groups ("cpu", "memory", "disk", "disk_io", "network").
type Measure drivers.Measure

// measureBits lists every defined bit of drivers.Measure.
var measureBits = []drivers.Measure{drivers.MeasureCPU, drivers.MeasureMemory, drivers.MeasureDisk, drivers.MeasureDiskIO, drivers.MeasureNetwork}

// Has reports whether every bit of f is set in m.
func (m Measure) Has(f drivers.Measure) bool { return drivers.Measure(m).Has(f) }

// Names returns the names of the set bits, e.g. ["cpu","memory"].
func (m Measure) Names() []string { return drivers.Measure(m).Names() }

// MarshalJSON encodes the mask as the list of measured field groups.
func (m Measure) MarshalJSON() ([]byte, error) { return json.Marshal(m.Names()) }

// UnmarshalJSON decodes a list of names; unknown names are an error.
func (m *Measure) UnmarshalJSON(b []byte) error {
	var names []string
	if err := json.Unmarshal(b, &names); err != nil {
		return err
	}
	var out drivers.Measure
	for _, s := range names {
		found := false
		for _, bit := range measureBits {
			if bit.Names()[0] == s {
				out |= bit
				found = true
			}
		}
		if !found {
			return fmt.Errorf("unknown measure %q", s)
		}
	}
	*m = Measure(out)
	return nil
}

// UsageCounters is the wire form of drivers.UsageCounters.
type UsageCounters struct {
	CPUTimeNs      uint64 `json:"cpu_time_ns"`
	MemoryBytes    uint64 `json:"memory_bytes"`
	DiskUsedBytes  uint64 `json:"disk_used_bytes"`
	DiskReadBytes  uint64 `json:"disk_read_bytes"`
	DiskWriteBytes uint64 `json:"disk_write_bytes"`
	NetRxBytes     uint64 `json:"net_rx_bytes"`
	NetTxBytes     uint64 `json:"net_tx_bytes"`
}

// ResourceUsage is the wire form of drivers.ResourceUsage.
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

// UsageFrom converts a contract usage sample to the wire.
func UsageFrom(u drivers.ResourceUsage) ResourceUsage {
	return ResourceUsage{
		Time: u.Time, CPUPercent: u.CPUPercent, MemoryMB: u.MemoryMB, DiskGB: u.DiskGB,
		DiskReadMBps: u.DiskReadMBps, DiskWriteMBps: u.DiskWriteMBps,
		NetworkRxMbps: u.NetworkRxMbps, NetworkTxMbps: u.NetworkTxMbps,
		Counters: UsageCounters(u.Counters),
		Measured: Measure(u.Measured),
	}
}

// NetworkConfig is the wire form of drivers.NetworkConfig.
type NetworkConfig struct {
	NetworkName string   `json:"network_name"`
	IPAddress   string   `json:"ip_address,omitempty"`
	Gateway     string   `json:"gateway,omitempty"`
	DNSServers  []string `json:"dns_servers,omitempty"`
}

// NetworkConfigFrom converts a contract network attachment to the wire.
func NetworkConfigFrom(n drivers.NetworkConfig) NetworkConfig { return NetworkConfig(n) }

// Contract converts a wire network attachment to the contract type.
func (n NetworkConfig) Contract() drivers.NetworkConfig { return drivers.NetworkConfig(n) }

func networkConfigsFrom(l []drivers.NetworkConfig) []NetworkConfig {
	if l == nil {
		return nil
	}
	out := make([]NetworkConfig, len(l))
	for i, n := range l {
		out[i] = NetworkConfigFrom(n)
	}
	return out
}

func networkConfigsContract(l []NetworkConfig) []drivers.NetworkConfig {
	if l == nil {
		return nil
	}
	out := make([]drivers.NetworkConfig, len(l))
	for i, n := range l {
		out[i] = n.Contract()
	}
	return out
}

// Volume is the wire form of drivers.Volume.
type Volume struct {
	Source   string `json:"source"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

// Template is the wire form of drivers.InstanceTemplate: the body of a
// create request and the format of the template files `subbus create -f`
// reads (YAML keys are the JSON keys).
type Template struct {
	Name        string            `json:"name"`
	BaseImage   string            `json:"base_image"`
	Command     []string          `json:"command,omitempty"`
	WorkDir     string            `json:"workdir,omitempty"`
	User        string            `json:"user,omitempty"`
	Resources   ResourceLimits    `json:"resources,omitempty"`
	Networks    []NetworkConfig   `json:"networks,omitempty"`
	Environment map[string]string `json:"environment,omitempty"`
	Volumes     []Volume          `json:"volumes,omitempty"`
	Metadata    map[string]string `json:"metadata,omitempty"`
}

// TemplateFrom converts a contract template to the wire.
func TemplateFrom(t drivers.InstanceTemplate) Template {
	w := Template{Name: t.Name, BaseImage: t.BaseImage, Command: t.Command, WorkDir: t.WorkDir, User: t.User,
		Resources: LimitsFrom(t.Resources), Networks: networkConfigsFrom(t.Networks),
		Environment: t.Environment, Metadata: t.Metadata}
	if t.Volumes != nil {
		w.Volumes = make([]Volume, len(t.Volumes))
		for i, v := range t.Volumes {
			w.Volumes[i] = Volume(v)
		}
	}
	return w
}

// Contract converts a wire template to the contract type.
func (t Template) Contract() drivers.InstanceTemplate {
	c := drivers.InstanceTemplate{Name: t.Name, BaseImage: t.BaseImage, Command: t.Command, WorkDir: t.WorkDir, User: t.User,
		Resources: t.Resources.Contract(), Networks: networkConfigsContract(t.Networks),
		Environment: t.Environment, Metadata: t.Metadata}
	if t.Volumes != nil {
		c.Volumes = make([]drivers.Volume, len(t.Volumes))
		for i, v := range t.Volumes {
			c.Volumes[i] = drivers.Volume(v)
		}
	}
	return c
}

// Instance is the wire form of drivers.Instance, with the driver and host
// that serve it.
type Instance struct {
	Name        string            `json:"name"`
	ID          string            `json:"id"`
	Driver      string            `json:"driver"`
	Host        string            `json:"host"`
	State       drivers.State     `json:"state"`
	NativeState string            `json:"native_state,omitempty"`
	Image       string            `json:"image,omitempty"`
	Created     time.Time         `json:"created,omitzero"`
	Metadata    map[string]string `json:"metadata,omitempty"`
	Limits      ResourceLimits    `json:"limits,omitzero"`
	Networks    []NetworkConfig   `json:"networks,omitempty"`
	Managed     bool              `json:"managed"`
	// What the user gave and the substrate knows, where the substrate
	// reports it (absent: not known). Environment values of keys that
	// look secret (SecretKey) are MaskedValue: a reader of the bus never
	// sees them.
	Command     []string          `json:"command,omitempty"`
	Environment map[string]string `json:"environment,omitempty"`
	Volumes     []Volume          `json:"volumes,omitempty"`
	WorkDir     string            `json:"workdir,omitempty"`
	User        string            `json:"user,omitempty"`
	PID         int               `json:"pid,omitempty"`
	ExitCode    *int              `json:"exit_code,omitempty"`
	StartedAt   time.Time         `json:"started_at,omitzero"`
}

// MaskedValue replaces the value of a secret-looking environment variable
// in Instance.Environment.
const MaskedValue = "********"

// secretWords are the parts of an environment variable name that make it
// look secret.
var secretWords = []string{"PASSWORD", "PASSWD", "PASS", "SECRET", "TOKEN", "KEY", "CREDENTIAL", "AUTH", "PRIVATE",
	"SESSION", "COOKIE", "SALT", "CERT", "DSN"}

// SecretKey reports whether an environment variable named k looks like it
// holds a secret: its upper-cased name contains PASSWORD, SECRET, TOKEN,
// KEY, CREDENTIAL, AUTH, PRIVATE, … (API_KEY, DB_PASSWORD, GITHUB_TOKEN,
// aws_secret_access_key). A false positive only hides a value.
func SecretKey(k string) bool {
	u := strings.ToUpper(k)
	for _, w := range secretWords {
		if strings.Contains(u, w) {
			return true
		}
	}
	return false
}

// maskEnv copies env with the values of secret-looking keys masked.
func maskEnv(env map[string]string) map[string]string {
	if env == nil {
		return nil
	}
	out := make(map[string]string, len(env))
	for k, v := range env {
		if SecretKey(k) {
			v = MaskedValue
		}
		out[k] = v
	}
	return out
}

func volumesFrom(l []drivers.Volume) []Volume {
	if l == nil {
		return nil
	}
	out := make([]Volume, len(l))
	for i, v := range l {
		out[i] = Volume(v)
	}
	return out
}

// InstanceFrom converts a contract instance to the wire, stamping the
// driver and host that serve it.
func InstanceFrom(i drivers.Instance, driver, host string) Instance {
	return Instance{Name: i.Name, ID: i.ID, Driver: driver, Host: host, State: i.State, NativeState: i.NativeState,
		Image: i.Image, Created: i.Created, Metadata: i.Metadata, Limits: LimitsFrom(i.Limits),
		Networks: networkConfigsFrom(i.Networks), Managed: i.Managed,
		Command: i.Command, Environment: maskEnv(i.Environment), Volumes: volumesFrom(i.Volumes), WorkDir: i.WorkDir,
		User: i.User, PID: i.PID, ExitCode: i.ExitCode, StartedAt: i.StartedAt}
}

// Contract converts a wire instance to the contract type (dropping the
// driver and host; masked environment values stay masked).
func (i Instance) Contract() drivers.Instance {
	c := drivers.Instance{Name: i.Name, ID: i.ID, State: i.State, NativeState: i.NativeState,
		Image: i.Image, Created: i.Created, Metadata: i.Metadata, Limits: i.Limits.Contract(),
		Networks: networkConfigsContract(i.Networks), Managed: i.Managed,
		Command: i.Command, Environment: i.Environment, WorkDir: i.WorkDir, User: i.User, PID: i.PID,
		ExitCode: i.ExitCode, StartedAt: i.StartedAt}
	if i.Volumes != nil {
		c.Volumes = make([]drivers.Volume, len(i.Volumes))
		for j, v := range i.Volumes {
			c.Volumes[j] = drivers.Volume(v)
		}
	}
	return c
}

// Snapshot is the wire form of drivers.Snapshot.
type Snapshot struct {
	Name        string    `json:"name"`
	Instance    string    `json:"instance"`
	Created     time.Time `json:"created,omitzero"`
	Description string    `json:"description,omitempty"`
	SizeBytes   int64     `json:"size_bytes,omitempty"`
}

// Network is the wire form of drivers.Network.
type Network struct {
	Name     string `json:"name"`
	ID       string `json:"id,omitempty"`
	Type     string `json:"type,omitempty"`
	Subnet   string `json:"subnet,omitempty"`
	Gateway  string `json:"gateway,omitempty"`
	Internal bool   `json:"internal"`
	// Managed: created by subbus (drivers.Network.Managed).
	Managed bool `json:"managed"`
	// Attachable: network-attach can put an instance on it.
	Attachable bool `json:"attachable"`
}

// Health is the wire form of drivers.Health.
type Health struct {
	Healthy    bool                  `json:"healthy"`
	Version    string                `json:"version,omitempty"`
	APIVersion string                `json:"api_version,omitempty"`
	Issues     []string              `json:"issues,omitempty"`
	Instances  map[drivers.State]int `json:"instances,omitempty"`
	Usage      *ResourceUsage        `json:"usage,omitempty"`
	Details    map[string]string     `json:"details,omitempty"`
}

// HealthFrom converts a contract health report to the wire.
func HealthFrom(h drivers.Health) Health {
	w := Health{Healthy: h.Healthy, Version: h.Version, APIVersion: h.APIVersion, Issues: h.Issues,
		Instances: h.Instances, Details: h.Details}
	if h.Usage != nil {
		u := UsageFrom(*h.Usage)
		w.Usage = &u
	}
	return w
}

// LogLine is the wire form of drivers.LogLine.
type LogLine struct {
	Time   time.Time `json:"time,omitzero"`
	Stream string    `json:"stream"` // stdout, stderr, console
	Line   string    `json:"line"`
}

// Capabilities is the wire form of drivers.Capabilities.
type Capabilities struct {
	Exec      bool `json:"exec"`
	Logs      bool `json:"logs"`
	Limits    bool `json:"limits"`
	Snapshots bool `json:"snapshots"`
	Clone     bool `json:"clone"`
	Networks  bool `json:"networks"`
	Events    bool `json:"events"`
	// LogTimes: log lines carry the time they were written.
	LogTimes bool `json:"log_times"`
	// LogOrder: log lines are in the order they were written across streams.
	LogOrder bool `json:"log_order"`
}

// ExecResult is the outcome of exec. Stdout and Stderr are filled only
// when the output was collected (not streamed).
type ExecResult struct {
	ExitCode int    `json:"exit_code"`
	Stdout   []byte `json:"stdout,omitempty"`
	Stderr   []byte `json:"stderr,omitempty"`
}

// ErrorInfo is the wire form of a classified error. Message has one
// shape per code, built by the manager from the code and what the request
// named (`instance "web" not found`); Detail, when present, is the
// substrate's own account (`docker: no container "web"`).
type ErrorInfo struct {
	Code      drivers.Code `json:"code"`
	Message   string       `json:"message"`
	Detail    string       `json:"detail,omitempty"`
	Retryable bool         `json:"retryable"`
}

// InfoOf returns the wire form of err (nil for nil).
func InfoOf(err error) *ErrorInfo {
	if err == nil {
		return nil
	}
	c := drivers.CodeOf(err)
	var e *drivers.Error
	if errors.As(err, &e) && e.Detail != "" && e.Message != "" && error(e) == err {
		return &ErrorInfo{Code: c, Message: e.Message, Detail: e.Detail, Retryable: c.Retryable()}
	}
	return &ErrorInfo{Code: c, Message: err.Error(), Retryable: c.Retryable()}
}

// Err returns the error an ErrorInfo describes, as a *drivers.Error, so
// errors.Is(err, drivers.ErrNotFound) and drivers.CodeOf work on it (nil
// for nil).
func (e *ErrorInfo) Err() error {
	if e == nil {
		return nil
	}
	return &drivers.Error{Code: e.Code, Message: e.Message, Detail: e.Detail}
}

// Event sources.
const (
	SourceManager = "manager" // a mutation made through this system
	SourceNative  = "native"  // the substrate's own feed (changes made elsewhere)
)

// Event is the wire form of an instance (or substrate) lifecycle event:
// the driver's drivers.Event plus what the manager adds (ID, Driver, Host,
// RequestID, Source), with the error in wire form.
type Event struct {
	ID        string            `json:"id"`
	Type      drivers.EventType `json:"type"`
	Time      time.Time         `json:"time"`
	Driver    string            `json:"driver"`
	Host      string            `json:"host"`
	Instance  string            `json:"instance,omitempty"`
	RequestID string            `json:"request_id,omitempty"`
	Source    string            `json:"source"`
	State     drivers.State     `json:"state,omitempty"`
	Details   map[string]string `json:"details,omitempty"`
	// Error is set on failed.
	Error *ErrorInfo `json:"error,omitempty"`
}

// EventFrom converts a driver's event to the wire; the caller fills the
// manager-owned fields.
func EventFrom(e drivers.Event) Event {
	return Event{Type: e.Type, Time: e.Time, Instance: e.Instance, State: e.State, Details: e.Details, Error: InfoOf(e.Err)}
}

func listFrom[C, W any](l []C, conv func(C) W) []W {
	out := make([]W, len(l)) // never nil: an empty list is [] on the wire
	for i, c := range l {
		out[i] = conv(c)
	}
	return out
}

// ToWire converts a result of the manager (a contract value, or a list of
// them) into its wire form, stamping driver and host where the wire type
// has them; values that are already wire types pass through. It is the
// one place the worker converts replies.
func ToWire(v any, driver, host string) any {
	switch v := v.(type) {
	case drivers.Instance:
		return InstanceFrom(v, driver, host)
	case []drivers.Instance:
		return listFrom(v, func(i drivers.Instance) Instance { return InstanceFrom(i, driver, host) })
	case drivers.ResourceUsage:
		return UsageFrom(v)
	case drivers.ResourceLimits:
		return LimitsFrom(v)
	case drivers.Health:
		return HealthFrom(v)
	case drivers.Snapshot:
		return Snapshot(v)
	case []drivers.Snapshot:
		return listFrom(v, func(s drivers.Snapshot) Snapshot { return Snapshot(s) })
	case []drivers.Network:
		return listFrom(v, func(n drivers.Network) Network { return Network(n) })
	case drivers.LogLine:
		return LogLine(v)
	case []drivers.LogLine:
		return listFrom(v, func(l drivers.LogLine) LogLine { return LogLine(l) })
	case drivers.Capabilities:
		return Capabilities(v)
	}
	return v
}
