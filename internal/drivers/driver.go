// Package drivers defines the contract every substrate driver implements:
// a small core Driver interface, optional capabilities as separate small
// interfaces, the portable types they exchange, and the closed set of error
// codes they classify their errors into.
//
// Application code does not call drivers directly: it uses the manager
// (internal/manager), which adds validation, per-instance locking, retries,
// circuit breaking, caching, operation metrics and events. The manager
// guarantees drivers validated arguments: names match the instance-name
// pattern, templates are checked, StopOptions.Timeout > 0 unless Force.
//
// Errors: a driver returns its substrate's native errors, wrapped with
// context that names the instance and what failed
// (fmt.Errorf("stop %s: %w", name, err)), and classifies them in exactly
// one place, its ErrorCode method. It builds an *Error (Errorf) only for a
// code with no native error behind it: Unsupported, InvalidArgument, or a
// wrong state it detected itself (Conflict on deleting a running
// instance). The manager classifies every error once (Classify): an *Error
// keeps its code, context errors are Timeout, anything else goes through
// ErrorCode; errors.Is and errors.As reach the native cause.
package drivers

import "context"

// Driver is the core contract. Every method takes ctx first and must give
// up when ctx ends, returning an error whose code is Timeout.
type Driver interface {
	// Name is the driver's name as used in subjects ("process", "docker").
	Name() string

	// Connect establishes the connection to the substrate. It is called
	// before any other method and again to reconnect; it must be idempotent.
	// An unreachable substrate is Unavailable.
	Connect(ctx context.Context) error

	// Close releases connections and background work. The driver's
	// instances keep running.
	Close() error

	// Health reports the substrate's health. A reachable but degraded
	// substrate returns Healthy=false with Issues and a nil error; an
	// unreachable one returns an Unavailable error.
	Health(ctx context.Context) (Health, error)

	// List returns every instance the substrate has (managed or not).
	List(ctx context.Context) ([]Instance, error)

	// Get returns one instance, or NotFound.
	Get(ctx context.Context, name string) (Instance, error)

	// Create creates (but does not start) an instance from a template.
	// A taken name is AlreadyExists; a missing image is NotFound naming it.
	// A Create that fails leaves nothing half-made behind.
	Create(ctx context.Context, t InstanceTemplate) (Instance, error)

	// Start starts a stopped instance. Starting a running instance succeeds
	// with changed=false. A missing instance is NotFound.
	Start(ctx context.Context, name string) (changed bool, err error)

	// Stop stops a running instance: gracefully, killing it after
	// opts.Timeout, or at once when opts.Force. Stopping a stopped instance
	// succeeds with changed=false. A missing instance is NotFound.
	Stop(ctx context.Context, name string, opts StopOptions) (changed bool, err error)

	// Delete removes an instance. A running instance is Conflict unless
	// opts.Force (then it is killed first). A missing instance is NotFound
	// unless opts.Force, when Delete succeeds with changed=false.
	Delete(ctx context.Context, name string, opts DeleteOptions) (changed bool, err error)

	// Metrics returns one usage sample; fields the substrate cannot measure
	// are left zero with their Measured bit clear. A stopped instance gives
	// a sample with zero rates (not an error).
	Metrics(ctx context.Context, name string) (ResourceUsage, error)

	// ErrorCode classifies a native error this driver returned (possibly
	// wrapped with context). It is the one place a driver maps its
	// substrate's errors to codes; errors built with Errorf and context
	// errors never reach it.
	ErrorCode(err error) Code
}

// Execer runs commands inside instances. Output is written to stdout and
// stderr (never nil) as it is produced; the exit code is returned.
// A stopped instance is Conflict.
type Execer interface {
	Exec(ctx context.Context, name string, req ExecRequest, stdout, stderr Writer) (exitCode int, err error)
}

// Writer is io.Writer; named here so driver packages need not import io
// just to implement Execer.
type Writer interface {
	Write(p []byte) (int, error)
}

// LogReader reads an instance's output. It calls emit for each of the last
// opts.Lines lines (opts.Lines > 0 is guaranteed) in order; with
// opts.Follow it then keeps calling emit for new lines until ctx ends, and
// returns nil. An error from emit stops reading and is returned.
//
// What "in order" and the lines' Time mean is what the driver's
// LogFormat says; a LogReader without LogFormatter promises neither.
type LogReader interface {
	Logs(ctx context.Context, name string, opts LogOptions, emit func(LogLine) error) error
}

// LogFormat says what a LogReader's lines carry.
type LogFormat struct {
	// Times: every line carries the time it was written (the substrate's
	// timestamp, or the time the driver took it from the instance). A
	// driver without it leaves Time zero: it never makes up a time (such
	// as the time it read the line).
	Times bool
	// Ordered: the lines of a tail, and of a follow, are in the order they
	// were written across all of the instance's streams, so the last N
	// lines are the N written last. Without it only the lines of each
	// stream are in order among themselves.
	Ordered bool
}

// LogFormatter is implemented by LogReaders to declare their LogFormat.
type LogFormatter interface {
	LogFormat() LogFormat
}

// Limiter reads and changes resource limits. SetLimits applies the
// non-zero fields of limits (a zero field leaves that limit unchanged) and
// returns the limits now in force. Fields the substrate cannot limit are
// Unsupported naming the field.
type Limiter interface {
	GetLimits(ctx context.Context, name string) (ResourceLimits, error)
	SetLimits(ctx context.Context, name string, limits ResourceLimits) (ResourceLimits, error)
}

// LimitUnsetter is an optional addition to Limiter: UnsetLimits removes
// the named limits (the instance then has no such limit, as if it had
// been created without it) and returns the limits now in force. The
// manager guarantees fields is non-empty, without duplicates, and that
// the driver is a Limiter. Removing a limit that is not set succeeds. A
// field the substrate cannot remove is Unsupported naming the field, and
// nothing is changed. A Limiter without it answers unsupported for every
// removal.
type LimitUnsetter interface {
	UnsetLimits(ctx context.Context, name string, fields []LimitField) (ResourceLimits, error)
}

// Snapshotter manages point-in-time snapshots. A taken snapshot name is
// AlreadyExists; a missing one NotFound.
type Snapshotter interface {
	CreateSnapshot(ctx context.Context, name, snapshot string) (Snapshot, error)
	RestoreSnapshot(ctx context.Context, name, snapshot string) error
	ListSnapshots(ctx context.Context, name string) ([]Snapshot, error)
	DeleteSnapshot(ctx context.Context, name, snapshot string) error
}

// Cloner copies an instance under a new name. The clone is created stopped.
// A taken target name is AlreadyExists.
type Cloner interface {
	Clone(ctx context.Context, source, target string) (Instance, error)
}

// Networker lists networks and attaches instances to them.
//
// ListNetworks returns every network the substrate has, attachable or
// not (Network.Attachable says which).
//
// AttachNetwork attaches an instance to a network. Attaching to a network
// the instance is already on succeeds with changed=false when no other
// address is asked for (another address is Conflict). A missing instance
// or network is NotFound; an address the network cannot give (outside its
// subnet, or a substrate that takes no static address) is InvalidArgument
// or Unsupported. A failed attach leaves the instance as it was.
//
// DetachNetwork removes an instance from a network; an instance not on the
// network is NotFound.
type Networker interface {
	ListNetworks(ctx context.Context) ([]Network, error)
	AttachNetwork(ctx context.Context, name string, cfg NetworkConfig) (changed bool, err error)
	DetachNetwork(ctx context.Context, name, network string) error
}

// MetricsBatcher is implemented by drivers that sample many instances at
// once more cheaply than one by one (one bulk API call, or bounded parallel
// calls). The result has a sample for each name it could sample and an
// error for each it could not; a failure of the whole batch is returned as
// err. The manager falls back to bounded parallel Metrics calls.
type MetricsBatcher interface {
	MetricsBatch(ctx context.Context, names []string) (samples map[string]ResourceUsage, failed map[string]error, err error)
}

// Restarter is implemented by drivers whose substrate restarts natively;
// otherwise the manager stops then starts.
type Restarter interface {
	Restart(ctx context.Context, name string, opts StopOptions) error
}

// ClusterWide is implemented by drivers whose instances several workers
// can reach (a Proxmox cluster, an LXD cluster or a remote LXD over
// HTTPS). Their workers keep the pooled subject, write no inventory
// records (a request without a host goes to any of them), and serialize
// the mutations of one instance with a lease (docs/fleet.md). A driver
// that does not implement it, or returns false, is per-host.
type ClusterWide interface {
	ClusterWide() bool
}

// EventSource is the substrate's own change feed, so changes made outside
// this system are seen. Watch calls emit for each change until ctx ends
// (returning nil) or the feed breaks (returning the error); the manager
// calls Watch again with backoff. On each (re)connection the driver resyncs
// and emits what changed while it was not watching (at least
// EventAppeared/EventVanished and state changes).
type EventSource interface {
	Watch(ctx context.Context, emit func(Event)) error
}

// Capabilities says which optional operations a driver supports. It is
// derived from the interfaces the driver implements (CapabilitiesOf).
type Capabilities struct {
	Exec      bool
	Logs      bool
	Limits    bool
	Snapshots bool
	Clone     bool
	Networks  bool
	Events    bool
	// LogTimes and LogOrder are the driver's LogFormat (Times, Ordered);
	// false without Logs.
	LogTimes bool
	LogOrder bool
}

// CapabilitiesReporter lets a driver narrow what its interfaces claim (for
// instance when a capability depends on the machine, like cgroup limits).
// The result is ANDed with what the interfaces say.
type CapabilitiesReporter interface {
	Capabilities() Capabilities
}

// CapabilitiesOf derives a driver's capabilities from its interfaces.
func CapabilitiesOf(d Driver) Capabilities {
	_, exec := d.(Execer)
	_, logs := d.(LogReader)
	_, lim := d.(Limiter)
	_, snap := d.(Snapshotter)
	_, clone := d.(Cloner)
	_, nets := d.(Networker)
	_, ev := d.(EventSource)
	c := Capabilities{Exec: exec, Logs: logs, Limits: lim, Snapshots: snap, Clone: clone, Networks: nets, Events: ev}
	if f, ok := d.(LogFormatter); ok && logs {
		lf := f.LogFormat()
		c.LogTimes, c.LogOrder = lf.Times, lf.Ordered
	}
	if r, ok := d.(CapabilitiesReporter); ok {
		n := r.Capabilities()
		c.Exec = c.Exec && n.Exec
		c.Logs = c.Logs && n.Logs
		c.Limits = c.Limits && n.Limits
		c.Snapshots = c.Snapshots && n.Snapshots
		c.Clone = c.Clone && n.Clone
		c.Networks = c.Networks && n.Networks
		c.Events = c.Events && n.Events
		c.LogTimes = c.LogTimes && n.LogTimes && c.Logs
		c.LogOrder = c.LogOrder && n.LogOrder && c.Logs
	}
	return c
}
