// Package manager is the portable layer every caller uses to manage
// instances, as database/sql is to its drivers: it validates input, applies
// defaults, serializes mutations per instance, retries idempotent operations,
// breaks the circuit to a failing substrate, caches list/get, counts
// operations and emits lifecycle events. Drivers only talk to their substrate.
//
// Validation: the manager is the one place that checks meaning (decoders
// check shape, the CLI parses flags only). Names go through drivers.ValidateName, templates are checked
// field by field (ValidateTemplate), exec requests, limits and network
// configs likewise; a bad request is InvalidArgument naming the field and
// never reaches the driver. Drivers always get StopOptions.Timeout > 0
// unless Force (Options.StopTimeout) and LogOptions.Lines > 0.
//
// Locking: one mutation at a time per instance. A mutation (create, start,
// stop, restart, delete, limits-set, snapshot create/restore/delete, clone,
// network attach/detach) takes the instance's lock; a second mutation of
// the same instance waits up to Options.LockWait (default 0: not at all)
// and then fails with Conflict "instance x is busy: <op> in progress". We
// chose fail-fast over queueing because callers are remote requests with
// their own deadlines and retry policies: a queue would hide contention
// and let stale requests run late. Reads (list, get, metrics, logs, limits
// get, snapshot/network lists, health) and exec never wait. Clone locks
// source and target, in name order. When a caller's deadline ends while
// the driver is still working, the call returns Timeout at once but the
// lock is held until the driver call really returns.
//
// Retries (resilience.Call): only idempotent operations — list, get,
// metrics, health, start, stop, limits-get, snapshot-list, network-list and
// forced delete — and only for retryable codes (unavailable, timeout),
// within the caller's deadline. Create, clone, snapshot-create, exec and
// the other mutations are tried once. A circuit breaker
// (resilience.Breaker) wraps every driver call; its state changes are
// logged and emitted as breaker_* events.
//
// See docs/manager.md for the full semantics.
package manager

import (
	"context"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/resilience"
	"github.com/subbus/subbus/messages"
)

// Options configure a Manager. The zero value is usable: every zero field
// takes the documented default.
type Options struct {
	// Host is this worker's host identity, stamped on events (and, by the
	// worker, on instances on the wire).
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
	// EchoWindow: a native-feed event about an instance that a mutation
	// of this manager is changing, or changed less than EchoWindow ago,
	// is that mutation's echo and is not re-emitted (the manager already
	// emitted it, with the request id). Native failed events always pass.
	// 0 takes the default (3s); negative re-emits every native event.
	EchoWindow time.Duration
	// DisableEvents turns the event system off (global.enable_events=false).
	DisableEvents bool
	Logger        zerolog.Logger
}

// Manager wraps one driver. It is safe for concurrent use.
type Manager struct {
	d     drivers.Driver
	opts  Options
	caps  drivers.Capabilities
	names drivers.NameRule // the driver's rule for instance names
	log   zerolog.Logger
	now   func() time.Time
	sleep func(ctx context.Context, d time.Duration) error // nil: real timers

	breaker  *resilience.Breaker
	bmu      sync.Mutex
	bpending []breakerChange

	locks keyedLock
	echo  echoFilter
	cache cache
	stats opRecorder
	bus   bus

	mu        sync.Mutex
	connected bool
	lastCheck time.Time
	closed    bool

	watchDelay  time.Duration // tests: fixed re-watch delay
	watchCancel context.CancelFunc
	watchDone   chan struct{}
}

// New returns a Manager over d. It does not connect; call Connect.
func New(d drivers.Driver, opts Options) *Manager {
	opts = opts.withDefaults()
	m := &Manager{d: d, opts: opts, caps: drivers.CapabilitiesOf(d), names: drivers.NameRuleOf(d), log: opts.Logger, now: time.Now}
	m.cache = cache{ttl: opts.CacheTTL, now: func() time.Time { return m.now() }}
	m.echo = echoFilter{window: opts.EchoWindow}
	m.stats.since = time.Now().UTC()
	m.breaker = resilience.NewBreaker(resilience.BreakerSettings{
		Name:          d.Name(),
		Failures:      opts.BreakerFailures,
		OpenTimeout:   opts.BreakerOpenTimeout,
		OnStateChange: m.breakerChanged,
	})
	m.bus.log = func(v any, ev messages.Event) {
		m.log.Error().Str("driver", d.Name()).Str("event", string(ev.Type)).Interface("panic", v).Msg("event subscriber panicked")
	}
	return m
}

// Driver returns the driver's name.
func (m *Manager) Driver() string { return m.d.Name() }

// NameRule returns the driver's rule for instance names, which the
// manager checks before any driver call.
func (m *Manager) NameRule() drivers.NameRule { return m.names }

// Host returns the host identity.
func (m *Manager) Host() string { return m.opts.Host }

// ClusterWide reports whether the driver's instances are reachable from
// several workers (drivers.ClusterWide).
func (m *Manager) ClusterWide() bool {
	c, ok := m.d.(drivers.ClusterWide)
	return ok && c.ClusterWide()
}

// Capabilities returns what the driver supports.
func (m *Manager) Capabilities() drivers.Capabilities { return m.caps }

// Options returns the options in force (defaults applied).
func (m *Manager) Options() Options { return m.opts }

// BreakerState returns the circuit breaker's state: closed, open or half_open.
func (m *Manager) BreakerState() string {
	s := m.breaker.State()
	m.flushBreaker()
	return string(s)
}

// Connect connects the driver (bounded by ConnectionTimeout) and, when the
// driver has a native event feed and events are enabled, starts watching
// it. Calling it again reconnects.
func (m *Manager) Connect(ctx context.Context) error { return m.connect(ctx) }

func (m *Manager) connect(ctx context.Context) error {
	_, err := run(m, ctx, driverCall{op: "connect", timeout: m.opts.ConnectionTimeout}, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, m.d.Connect(ctx)
	})
	if err != nil {
		m.setConnected(false)
		return err
	}
	m.mu.Lock()
	m.lastCheck = m.now()
	m.mu.Unlock()
	m.setConnected(true)
	m.cache.invalidate()
	m.startWatch()
	return nil
}

// IsConnected reports whether the last Connect or health check succeeded
// and no call has since found the substrate unavailable.
func (m *Manager) IsConnected() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.connected
}

// EnsureConnected reconnects when disconnected; when connected, it
// re-checks the substrate's health if HealthCheckInterval has passed
// since the last check, and reconnects when that check finds the
// substrate unavailable. It returns nil when the substrate is reachable.
// Concurrent calls may each reconnect (driver Connect is idempotent); no
// lock is held while events are delivered, so subscribers may call it.
func (m *Manager) EnsureConnected(ctx context.Context) error {
	m.mu.Lock()
	connected, last := m.connected, m.lastCheck
	m.mu.Unlock()
	if !connected {
		return m.connect(ctx)
	}
	if m.now().Sub(last) < m.opts.HealthCheckInterval {
		return nil
	}
	_, err := m.Health(ctx)
	if err == nil {
		return nil
	}
	if c := drivers.CodeOf(err); c == drivers.Unavailable || c == drivers.Timeout {
		m.setConnected(false)
		return m.connect(ctx)
	}
	return err
}

// setConnected records the connection state, emitting connected or
// disconnected when it changes.
func (m *Manager) setConnected(v bool) {
	m.mu.Lock()
	changed := m.connected != v
	m.connected = v
	m.mu.Unlock()
	if !changed {
		return
	}
	if v {
		m.log.Info().Str("driver", m.d.Name()).Msg("connected")
		m.publish(messages.Event{Type: drivers.EventConnected})
	} else {
		m.log.Warn().Str("driver", m.d.Name()).Msg("substrate unavailable: disconnected")
		m.publish(messages.Event{Type: drivers.EventDisconnected})
	}
}

func (m *Manager) startWatch() {
	src, ok := m.d.(drivers.EventSource)
	if !ok || !m.caps.Events || m.opts.DisableEvents {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.watchCancel != nil || m.closed {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	m.watchCancel = cancel
	m.watchDone = make(chan struct{})
	go func(done chan struct{}) {
		defer close(done)
		m.watch(ctx, src)
	}(m.watchDone)
}

// Close stops background work and closes the driver. Instances keep running.
func (m *Manager) Close() error {
	m.mu.Lock()
	m.closed = true
	cancel, done := m.watchCancel, m.watchDone
	m.watchCancel, m.watchDone = nil, nil
	m.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
	err := m.d.Close()
	m.mu.Lock()
	m.connected = false
	m.mu.Unlock()
	return err
}

// Subscribe registers fn to receive every event, in order. fn runs on the
// emitting goroutine and must not block; a panic in fn is logged and
// does not reach the manager. The returned func unsubscribes.
func (m *Manager) Subscribe(fn func(messages.Event)) (unsubscribe func()) { return m.bus.subscribe(fn) }

// Stats returns the operation metrics.
func (m *Manager) Stats() OpStats {
	ops, events, since := m.stats.snapshot()
	return OpStats{
		Driver:  m.d.Name(),
		Host:    m.opts.Host,
		Since:   since,
		Breaker: m.BreakerState(),
		Ops:     ops,
		Events:  events,
	}
}

// stamp normalizes an instance the driver returned: an empty state is
// unknown. (The driver and host serving it are added on the wire, by
// messages.InstanceFrom.)
func (m *Manager) stamp(i drivers.Instance) drivers.Instance {
	if i.State == "" {
		i.State = drivers.StateUnknown
	}
	return i
}
