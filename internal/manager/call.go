package manager

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/resilience"
	"github.com/subbus/subbus/messages"
)

// driverCall describes how one driver call is run: its policies (retry, timeout, goroutine, flight).
type driverCall struct {
	op string
	// subj is what the call is about, for the message of its error (shape).
	subj subject
	// retry: the operation is idempotent, retry retryable errors.
	retry bool
	// timeout bounds the call (ConnectionTimeout for connect/health);
	// 0 means OperationTimeout when ctx has no deadline.
	timeout time.Duration
	// unbounded: no default deadline (log follow runs until ctx ends).
	unbounded bool
	// sync: call the driver on the caller's goroutine (exec and logs,
	// whose writers and callbacks must not run after we return). Other
	// calls run on their own goroutine and are abandoned, with Timeout,
	// when ctx ends even if the driver ignores ctx.
	sync bool
	// flight, for mutations: tracks an abandoned driver call so the
	// instance lock is held until it really returns.
	flight *flight
}

// flight remembers the completion channel of the latest driver call of a
// mutation.
type flight struct {
	mu   sync.Mutex
	done chan struct{}
}

func (f *flight) set(done chan struct{}) {
	f.mu.Lock()
	f.done = done
	f.mu.Unlock()
}

// release runs fn now if no driver call is still running, else once it
// returns.
func (f *flight) release(fn func()) {
	f.mu.Lock()
	done := f.done
	f.mu.Unlock()
	if done == nil {
		fn()
		return
	}
	select {
	case <-done:
		fn()
	default:
		go func() { <-done; fn() }()
	}
}

// run calls fn through the manager's policies: a deadline, retries (when
// c.retry), the circuit breaker around each try, error classification
// and operation metrics.
func run[T any](m *Manager, ctx context.Context, c driverCall, fn func(ctx context.Context) (T, error)) (T, error) {
	start := time.Now()
	caller := ctx
	ctx, cancel := m.bound(ctx, c)
	defer cancel()

	attempt := func(ctx context.Context) (T, error) {
		var v T
		err := m.breaker.Do(caller, func() error {
			var err error
			v, err = invoke(m, ctx, c, fn)
			return err
		})
		m.flushBreaker()
		return v, err
	}
	var (
		v       T
		err     error
		retries int
	)
	if c.retry && m.opts.RetryAttempts > 1 {
		p := m.policy()
		p.OnRetry = func(n int, err error, d time.Duration) {
			retries++
			m.log.Debug().Str("driver", m.d.Name()).Str("op", c.op).Int("attempt", n).Dur("delay", d).Err(err).Msg("retrying")
		}
		v, err = resilience.Call(ctx, p, attempt)
	} else {
		v, err = attempt(ctx)
	}
	if err != nil && drivers.CodeOf(err) == drivers.Unavailable && !errors.Is(err, resilience.ErrOpen) {
		m.setConnected(false)
	}
	m.stats.record(c.op, time.Since(start), err, retries)
	return v, m.shape(caller, c, err)
}

// policy is the retry policy of the options.
func (m *Manager) policy() resilience.Policy {
	return resilience.Policy{
		Attempts:     m.opts.RetryAttempts,
		InitialDelay: m.opts.RetryInitialDelay,
		Multiplier:   m.opts.RetryMultiplier,
		MaxDelay:     m.opts.RetryMaxDelay,
		Sleep:        m.sleep,
	}
}

// bound derives the call's context: c.timeout, else OperationTimeout when
// ctx has no deadline. A caller's shorter deadline always wins.
func (m *Manager) bound(ctx context.Context, c driverCall) (context.Context, context.CancelFunc) {
	if c.timeout > 0 {
		return context.WithTimeout(ctx, c.timeout)
	}
	if _, ok := ctx.Deadline(); !ok && !c.unbounded {
		return context.WithTimeout(ctx, m.opts.OperationTimeout)
	}
	return context.WithCancel(ctx)
}

// invoke makes one driver call and classifies its error.
func invoke[T any](m *Manager, ctx context.Context, c driverCall, fn func(ctx context.Context) (T, error)) (T, error) {
	if err := ctx.Err(); err != nil {
		var zero T
		return zero, m.classify(ctx, c.op, err)
	}
	if c.sync {
		v, err := guard(m, ctx, c.op, fn)
		return v, m.classify(ctx, c.op, err)
	}
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	done := make(chan struct{})
	if c.flight != nil {
		c.flight.set(done)
	}
	go func() {
		v, err := guard(m, ctx, c.op, fn)
		close(done) // before the result: whoever sees it sees the call finished
		ch <- result{v, err}
	}()
	select {
	case r := <-ch:
		return r.v, m.classify(ctx, c.op, r.err)
	case <-ctx.Done():
		select {
		case r := <-ch:
			return r.v, m.classify(ctx, c.op, r.err)
		default:
		}
		var zero T
		return zero, drivers.Wrap(drivers.Timeout, ctx.Err(), fmt.Sprintf("%s %s: no answer from the driver in time", m.d.Name(), c.op))
	}
}

// guard turns a driver panic into an Internal error.
func guard[T any](m *Manager, ctx context.Context, op string, fn func(ctx context.Context) (T, error)) (v T, err error) {
	defer func() {
		if p := recover(); p != nil {
			m.log.Error().Str("driver", m.d.Name()).Str("op", op).Interface("panic", p).Msg("driver panicked")
			err = drivers.Errorf(drivers.Internal, "%s %s: driver panicked: %v", m.d.Name(), op, p)
		}
	}()
	return fn(ctx)
}

// classify gives err its code, once: classified errors pass unchanged,
// context errors (and anything returned after ctx ended) are Timeout,
// other raw errors go through the driver's ErrorCode. The text stays the
// driver's: run then shapes the message (shape).
func (m *Manager) classify(ctx context.Context, op string, err error) error {
	if err == nil || drivers.IsClassified(err) {
		return err
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || ctx.Err() != nil {
		return drivers.Wrap(drivers.Timeout, err, "")
	}
	return drivers.Wrap(m.errorCode(err), err, "")
}

func (m *Manager) errorCode(err error) (c drivers.Code) {
	defer func() {
		if recover() != nil {
			c = drivers.Internal
		}
	}()
	c = m.d.ErrorCode(err)
	if _, ok := drivers.ParseCode(c.String()); !ok {
		c = drivers.Internal
	}
	return c
}

// mutate runs fn holding the instance lock of every name, then
// invalidates their cache entries. The lock is held until the driver call
// really returns, even when the caller stopped waiting for it.
//
// Native events held while it ran (see echoFilter) are emitted or dropped
// when it ends; err is its outcome.
func (m *Manager) mutate(ctx context.Context, op string, names []string, fn func(ctx context.Context, fl *flight) error) (err error) {
	unlock, err := m.locks.acquire(ctx, m.opts.LockWait, op, names...)
	if err != nil {
		m.stats.record(op, 0, err, 0)
		return err
	}
	fl := &flight{}
	m.echo.begin(messages.Op(op), names)
	defer fl.release(func() {
		held, dropped := m.echo.end(messages.Op(op), names, m.now(), drivers.CodeOf(err) == drivers.Exited)
		for range dropped {
			m.stats.echo()
		}
		for _, ev := range held {
			m.publishNative(ev)
		}
		m.cache.invalidate(names...)
		unlock()
	})
	m.cache.invalidate(names...)
	err = fn(ctx, fl)
	return err
}

// reject records a request refused before any driver call.
func (m *Manager) reject(op string, err error) error {
	m.stats.record(op, 0, err, 0)
	return err
}

// unsupported is the error for an operation the driver lacks.
func (m *Manager) unsupported(op string) error {
	return m.reject(op, drivers.Errorf(drivers.Unsupported, "%s: driver %s does not support it", op, m.d.Name()))
}
