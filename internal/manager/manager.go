// Package manager is the portable layer every caller uses to manage
// instances, as database/sql is to its drivers: it validates input, applies
// defaults, serializes mutations per instance, retries idempotent operations,
// breaks the circuit to a failing substrate, caches list/get, counts
// operations and emits lifecycle events. Drivers only talk to their substrate.
package manager

import (
	"context"
	"time"

	"github.com/rs/zerolog"

	"github.com/subbus/subbus/internal/drivers"
)

// Options configure a Manager. The zero value is usable: every zero field
// takes the documented default.
type Options struct {
	// Host is this worker's host identity, stamped on instances and events.
	Host string
	// ConnectionTimeout bounds Connect and health checks (default 30s).
	ConnectionTimeout time.Duration
	// OperationTimeout bounds any operation whose ctx has no deadline (default 300s).
	OperationTimeout time.Duration
	// HealthCheckInterval is how often EnsureConnected re-checks health (default 60s).
	HealthCheckInterval time.Duration
	// StopTimeout is the graceful stop timeout when a caller gives none (default 10s).
	StopTimeout time.Duration
	// LogLines is the default number of log lines (default 100).
	LogLines int
	// Retry policy for idempotent operations.
	RetryAttempts     int           // total attempts, default 3; 1 disables retries
	RetryInitialDelay time.Duration // default 200ms
	RetryMultiplier   float64       // default 2
	RetryMaxDelay     time.Duration // default 5s
	// Breaker: opens after BreakerFailures consecutive substrate-down
	// errors (default 5) and half-opens after BreakerOpenTimeout (default 30s).
	BreakerFailures    int
	BreakerOpenTimeout time.Duration
	// CacheTTL for list/get; 0 takes the default (2s), negative disables caching.
	CacheTTL time.Duration
	// LockWait is how long a mutation waits for another mutation of the
	// same instance before failing with Conflict (default 0: fail at once).
	LockWait time.Duration
	// DisableEvents turns the event system off (global.enable_events=false).
	DisableEvents bool
	Logger        zerolog.Logger
}

// Manager wraps one driver. It is safe for concurrent use.
type Manager struct {
	d    drivers.Driver
	opts Options
	caps drivers.Capabilities
}

// New returns a Manager over d. It does not connect; call Connect.
func New(d drivers.Driver, opts Options) *Manager {
	return &Manager{d: d, opts: opts, caps: drivers.CapabilitiesOf(d)}
}

// Driver returns the driver's name.
func (m *Manager) Driver() string { return m.d.Name() }

// Host returns the host identity.
func (m *Manager) Host() string { return m.opts.Host }

// Capabilities returns what the driver supports.
func (m *Manager) Capabilities() drivers.Capabilities { return m.caps }

// Connect connects the driver (bounded by ConnectionTimeout).
func (m *Manager) Connect(ctx context.Context) error { return m.classify(m.d.Connect(ctx)) }

// Close stops background work and closes the driver. Instances keep running.
func (m *Manager) Close() error { return m.d.Close() }

// Subscribe registers fn to receive every event, in order. fn runs on the
// emitting goroutine and must not block. The returned func unsubscribes.
func (m *Manager) Subscribe(fn func(drivers.Event)) (unsubscribe func()) { return func() {} }

// List returns every instance, stamped with driver and host.
func (m *Manager) List(ctx context.Context) ([]drivers.Instance, error) {
	l, err := m.d.List(ctx)
	return l, m.classify(err)
}

// Get returns one instance or NotFound.
func (m *Manager) Get(ctx context.Context, name string) (drivers.Instance, error) {
	if err := drivers.ValidateName("name", name); err != nil {
		return drivers.Instance{}, err
	}
	i, err := m.d.Get(ctx, name)
	return i, m.classify(err)
}

// Create creates an instance from a template (create_from_template); emits created.
func (m *Manager) Create(ctx context.Context, t drivers.InstanceTemplate) (drivers.Instance, error) {
	if err := drivers.ValidateName("name", t.Name); err != nil {
		return drivers.Instance{}, err
	}
	i, err := m.d.Create(ctx, t)
	return i, m.classify(err)
}

// Start starts an instance; changed=false when it was already running.
func (m *Manager) Start(ctx context.Context, name string) (bool, error) {
	c, err := m.d.Start(ctx, name)
	return c, m.classify(err)
}

// Stop stops an instance; changed=false when it was already stopped.
func (m *Manager) Stop(ctx context.Context, name string, opts drivers.StopOptions) (bool, error) {
	c, err := m.d.Stop(ctx, name, opts)
	return c, m.classify(err)
}

// Restart stops then starts (or uses the driver's native restart); emits restarted.
func (m *Manager) Restart(ctx context.Context, name string, opts drivers.StopOptions) error {
	if _, err := m.Stop(ctx, name, opts); err != nil {
		return err
	}
	_, err := m.Start(ctx, name)
	return err
}

// Delete deletes an instance; changed=false when forced on a missing one.
func (m *Manager) Delete(ctx context.Context, name string, opts drivers.DeleteOptions) (bool, error) {
	c, err := m.d.Delete(ctx, name, opts)
	return c, m.classify(err)
}

// Metrics returns one usage sample.
func (m *Manager) Metrics(ctx context.Context, name string) (drivers.ResourceUsage, error) {
	u, err := m.d.Metrics(ctx, name)
	return u, m.classify(err)
}

// Health reports the substrate's health.
func (m *Manager) Health(ctx context.Context) (drivers.Health, error) {
	h, err := m.d.Health(ctx)
	return h, m.classify(err)
}

// Exec runs a command. With nil writers the output is collected into the
// result's Stdout/Stderr; otherwise it is streamed to the writers.
func (m *Manager) Exec(ctx context.Context, name string, req drivers.ExecRequest, stdout, stderr drivers.Writer) (drivers.ExecResult, error) {
	return drivers.ExecResult{}, drivers.Unsupportedf("exec: not implemented yet")
}

// Logs emits the last opts.Lines lines (default LogLines) and, with
// opts.Follow, new lines until ctx ends.
func (m *Manager) Logs(ctx context.Context, name string, opts drivers.LogOptions, emit func(drivers.LogLine) error) error {
	return drivers.Unsupportedf("logs: not implemented yet")
}

func (m *Manager) classify(err error) error {
	if err == nil || drivers.IsClassified(err) {
		return err
	}
	return &drivers.Error{Code: m.d.ErrorCode(err), Err: err}
}
