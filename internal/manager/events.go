package manager

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sync"
	"time"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/resilience"
	"github.com/subbus/subbus/messages"
)

// newEventID returns a random 128-bit id in hex.
func newEventID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// bus delivers events to subscribers synchronously and in one global
// order. Emitters append to a queue; whichever emitter finds no delivery
// in progress delivers the queue (outside any lock) until it is empty.
// So a lone caller's events are delivered before its call returns, and a
// subscriber that calls back into the manager does not deadlock (its
// events are queued and delivered right after it returns).
type bus struct {
	log func(v any, ev messages.Event) // reports a panicking subscriber

	mu         sync.Mutex
	subs       map[int]func(messages.Event)
	order      []int
	next       int
	queue      []messages.Event
	delivering bool
}

func (b *bus) subscribe(fn func(messages.Event)) func() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.subs == nil {
		b.subs = map[int]func(messages.Event){}
	}
	id := b.next
	b.next++
	b.subs[id] = fn
	b.order = append(b.order, id)
	var once sync.Once
	return func() {
		once.Do(func() {
			b.mu.Lock()
			defer b.mu.Unlock()
			delete(b.subs, id)
			for i, o := range b.order {
				if o == id {
					b.order = append(b.order[:i:i], b.order[i+1:]...)
					break
				}
			}
		})
	}
}

func (b *bus) publish(ev messages.Event) {
	b.mu.Lock()
	b.queue = append(b.queue, ev)
	if b.delivering {
		b.mu.Unlock()
		return
	}
	b.delivering = true
	for len(b.queue) > 0 {
		ev := b.queue[0]
		b.queue = b.queue[1:]
		fns := make([]func(messages.Event), 0, len(b.order))
		for _, id := range b.order {
			fns = append(fns, b.subs[id])
		}
		b.mu.Unlock()
		for _, fn := range fns {
			b.deliver(fn, ev)
		}
		b.mu.Lock()
	}
	b.queue = nil
	b.delivering = false
	b.mu.Unlock()
}

func (b *bus) deliver(fn func(messages.Event), ev messages.Event) {
	defer func() {
		if v := recover(); v != nil && b.log != nil {
			b.log(v, ev)
		}
	}()
	fn(ev)
}

// emit stamps and publishes an event of the manager's own making.
func (m *Manager) emit(ctx context.Context, typ drivers.EventType, instance string, details map[string]string, err error) {
	m.publish(messages.Event{
		Type:      typ,
		Instance:  instance,
		RequestID: drivers.RequestID(ctx),
		Source:    messages.SourceManager,
		Details:   details,
		Error:     messages.InfoOf(err),
	})
}

// publish fills the fields the manager owns (id, time, driver, host,
// source) and hands ev to the bus.
func (m *Manager) publish(ev messages.Event) {
	m.stats.event(ev.Type)
	if m.opts.DisableEvents {
		return
	}
	if ev.ID == "" {
		ev.ID = newEventID()
	}
	if ev.Time.IsZero() {
		ev.Time = m.now().UTC()
	}
	ev.Driver = m.d.Name()
	ev.Host = m.opts.Host
	if ev.Source == "" {
		ev.Source = messages.SourceManager
	}
	m.bus.publish(ev)
}

// emitFailed emits failed for a mutation that got past validation and
// failed on the substrate. A refused request (see Refused) emits nothing:
// failed means something went wrong, and anything alerting on it must not
// fire because a user asked for a taken name or a missing instance. The
// refusal is still counted in the operation metrics.
func (m *Manager) emitFailed(ctx context.Context, op, instance string, details map[string]string, err error) {
	if Refused(err) {
		return
	}
	d := map[string]string{"op": op}
	for k, v := range details {
		d[k] = v
	}
	m.emit(ctx, drivers.EventFailed, instance, d, err)
}

// breakerChanged is the breaker's state hook. It runs under the breaker's
// lock, so it only queues the change; flushBreaker logs and emits it.
func (m *Manager) breakerChanged(_ string, from, to resilience.BreakerState) {
	m.bmu.Lock()
	m.bpending = append(m.bpending, breakerChange{from: from, to: to, at: m.now()})
	m.bmu.Unlock()
}

type breakerChange struct {
	from, to resilience.BreakerState
	at       time.Time
}

// flushBreaker logs and emits the queued breaker state changes.
func (m *Manager) flushBreaker() {
	m.bmu.Lock()
	pending := m.bpending
	m.bpending = nil
	m.bmu.Unlock()
	for _, c := range pending {
		var typ drivers.EventType
		switch c.to {
		case resilience.BreakerOpen:
			typ = drivers.EventBreakerOpened
			m.log.Warn().Str("driver", m.d.Name()).Str("from", string(c.from)).Msg("circuit breaker opened: failing fast")
		case resilience.BreakerHalfOpen:
			typ = drivers.EventBreakerHalfOpen
			m.log.Info().Str("driver", m.d.Name()).Msg("circuit breaker half-open: trying the substrate")
		default:
			typ = drivers.EventBreakerClosed
			m.log.Info().Str("driver", m.d.Name()).Str("from", string(c.from)).Msg("circuit breaker closed")
		}
		m.publish(messages.Event{
			Type:    typ,
			Time:    c.at.UTC(),
			Source:  messages.SourceManager,
			Details: map[string]string{"from": string(c.from), "to": string(c.to)},
		})
	}
}

// watch runs the driver's native feed until ctx ends, re-running Watch
// with backoff when it fails, and re-emits its events.
func (m *Manager) watch(ctx context.Context, src drivers.EventSource) {
	p := resilience.Policy{InitialDelay: 500 * time.Millisecond, Multiplier: 2, MaxDelay: 30 * time.Second}
	if m.watchDelay > 0 {
		p.InitialDelay, p.MaxDelay = m.watchDelay, m.watchDelay
	}
	b := p.BackOff()
	for {
		got := false
		err := m.safeWatch(ctx, src, func(ev drivers.Event) {
			got = true
			m.native(ev)
		})
		if ctx.Err() != nil {
			return
		}
		if got {
			b.Reset()
		}
		d := b.NextBackOff()
		m.log.Warn().Err(err).Str("driver", m.d.Name()).Dur("retry_in", d).Msg("native event feed ended; watching again")
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

func (m *Manager) safeWatch(ctx context.Context, src drivers.EventSource, emit func(drivers.Event)) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("driver %s: Watch panicked: %v", m.d.Name(), v)
		}
	}()
	return src.Watch(ctx, emit)
}

// native re-emits an event of the driver's feed and invalidates the cache.
func (m *Manager) native(ev drivers.Event) {
	if ev.Instance != "" {
		m.cache.invalidate(ev.Instance)
	} else {
		m.cache.invalidate()
	}
	switch m.echo.check(ev, m.now()) {
	case dropEcho:
		m.stats.echo()
		return
	case holdEcho:
		return // emitted or dropped when the op in flight ends
	}
	m.publishNative(ev)
}

// publishNative publishes an event of the driver's feed.
func (m *Manager) publishNative(ev drivers.Event) {
	w := messages.EventFrom(ev)
	w.Source = messages.SourceNative
	m.publish(w)
}

// Refused reports whether err refuses a request rather than reporting a
// substrate operation that failed: the request was invalid
// (invalid_argument, unsupported), named something missing (not_found) or
// taken (already_exists), or met the instance in the wrong state or busy
// (conflict). Drivers answer these codes only when they changed nothing.
// The other codes (internal, unavailable, timeout, permission_denied) mean
// the substrate did not do what it was asked, and emit failed.
func Refused(err error) bool {
	switch drivers.CodeOf(err) {
	case drivers.InvalidArgument, drivers.Unsupported, drivers.NotFound, drivers.AlreadyExists, drivers.Conflict:
		return true
	}
	return false
}
