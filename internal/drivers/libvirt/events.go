package libvirt

import (
	"context"
	"fmt"
	"sync"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/subbus/subbus/internal/drivers"
)

// Capabilities narrows what the interfaces claim: logs need the console
// log files on this host, so a remote URI has no logs.
func (d *Driver) Capabilities() drivers.Capabilities {
	return drivers.Capabilities{Exec: true, Logs: d.local(), Limits: true, Snapshots: true, Clone: true,
		Networks: true, Events: true, LogOrder: d.local()}
}

// hub is the one lifecycle-event registration of a connection (libvirt
// refuses a second identical registration on one connection), fanned out
// to every Watch. It ends when the connection is lost or the driver closes.
type hub struct {
	l      *golibvirt.Libvirt
	cancel context.CancelFunc
	done   chan struct{} // closed when the stream ended

	mu   sync.Mutex
	subs map[*subscriber]bool
}

// subscriber is one Watch's queue. A watcher that falls more than
// subBuffer events behind is told to resync (overflow closes).
type subscriber struct {
	ch       chan golibvirt.DomainEventLifecycleMsg
	overflow chan struct{}
	once     sync.Once
}

const subBuffer = 4096

// subscribe adds a watcher to the hub of connection l, registering the
// callback on l first if no live hub exists for it.
func (d *Driver) subscribe(ctx context.Context, l *golibvirt.Libvirt) (*hub, *subscriber, error) {
	d.hubMu.Lock()
	defer d.hubMu.Unlock()
	h := d.hub
	if h != nil {
		select {
		case <-h.done:
			h = nil
		default:
			if h.l != l || !l.IsConnected() {
				h.cancel()
				h = nil
			}
		}
	}
	if h == nil {
		hctx, cancel := context.WithCancel(context.Background())
		stream, err := call(ctx, func() (<-chan golibvirt.DomainEventLifecycleMsg, error) { return l.LifecycleEvents(hctx) })
		if err != nil {
			cancel()
			return nil, nil, fmt.Errorf("registering for lifecycle events: %w", err)
		}
		h = &hub{l: l, cancel: cancel, done: make(chan struct{}), subs: map[*subscriber]bool{}}
		go h.pump(stream)
		d.hub = h
	}
	s := &subscriber{ch: make(chan golibvirt.DomainEventLifecycleMsg, subBuffer), overflow: make(chan struct{})}
	h.mu.Lock()
	h.subs[s] = true
	h.mu.Unlock()
	return h, s, nil
}

// pump hands every event to every subscriber, never blocking on one (a
// slow consumer must not stall go-libvirt's event routing).
func (h *hub) pump(stream <-chan golibvirt.DomainEventLifecycleMsg) {
	defer close(h.done)
	for ev := range stream {
		h.mu.Lock()
		for s := range h.subs {
			select {
			case s.ch <- ev:
			default:
				s.once.Do(func() { close(s.overflow) })
			}
		}
		h.mu.Unlock()
	}
}

func (h *hub) unsubscribe(s *subscriber) {
	h.mu.Lock()
	delete(h.subs, s)
	h.mu.Unlock()
}

// closeHub ends the event registration (Close).
func (d *Driver) closeHub() {
	d.hubMu.Lock()
	defer d.hubMu.Unlock()
	if d.hub != nil {
		d.hub.cancel()
		d.hub = nil
	}
}

// Watch subscribes to the connection's lifecycle events, resyncs
// (emitting appeared, vanished and state changes against the states the
// driver last saw), then turns each lifecycle event of any domain into an
// Event. It returns nil when ctx ends, and an Unavailable error when the
// connection is lost (the manager calls Watch again after reconnecting,
// and the callback is then registered on the new connection). Several
// watchers may run at once; one that falls far behind returns an error so
// that it is called again and resyncs.
func (d *Driver) Watch(ctx context.Context, emit func(drivers.Event)) error {
	l, err := d.conn()
	if err != nil {
		return err
	}
	h, s, err := d.subscribe(ctx, l)
	if err != nil {
		return err
	}
	defer h.unsubscribe(s)
	if err := d.resync(ctx, emit); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.overflow:
			return fmt.Errorf("libvirt events: this watcher fell %d events behind; resyncing", subBuffer)
		case <-h.done:
			if ctx.Err() != nil {
				return nil
			}
			return &connError{uri: d.opts.URI, err: errConnectionLost}
		case <-l.Disconnected():
			return &connError{uri: d.opts.URI, err: errConnectionLost}
		case ev := <-s.ch:
			if e, ok := d.event(ev); ok {
				emit(e)
			}
		}
	}
}

// event converts one lifecycle message and records the domain's state.
func (d *Driver) event(m golibvirt.DomainEventLifecycleMsg) (drivers.Event, bool) {
	name := m.Dom.Name
	e := drivers.Event{Instance: name, Time: time.Now(),
		Details: map[string]string{"libvirt_event": lifecycleName(m.Event), "libvirt_detail": fmt.Sprint(m.Detail)}}
	d.watchMu.Lock()
	defer d.watchMu.Unlock()
	if d.known == nil {
		d.known = map[string]drivers.State{}
	}
	prev, had := d.known[name]
	switch golibvirt.DomainEventType(m.Event) {
	case golibvirt.DomainEventDefined:
		if had {
			e.Type, e.State = drivers.EventStateChanged, prev
			e.Details["change"] = "definition updated"
		} else {
			e.Type, e.State = drivers.EventAppeared, drivers.StateStopped
		}
	case golibvirt.DomainEventUndefined:
		delete(d.known, name)
		e.Type = drivers.EventVanished
		return e, true
	case golibvirt.DomainEventStarted:
		e.Type, e.State = drivers.EventStarted, drivers.StateRunning
	case golibvirt.DomainEventSuspended, golibvirt.DomainEventPmsuspended:
		e.Type, e.State = drivers.EventStateChanged, drivers.StatePaused
	case golibvirt.DomainEventResumed:
		e.Type, e.State = drivers.EventStateChanged, drivers.StateRunning
	case golibvirt.DomainEventShutdown:
		e.Type, e.State = drivers.EventStateChanged, drivers.StateStopping
	case golibvirt.DomainEventStopped:
		switch golibvirt.DomainEventStoppedDetailType(m.Detail) {
		case golibvirt.DomainEventStoppedCrashed, golibvirt.DomainEventStoppedFailed:
			e.Type, e.State = drivers.EventFailed, drivers.StateStopped
		default:
			e.Type, e.State = drivers.EventStopped, drivers.StateStopped
		}
	case golibvirt.DomainEventCrashed:
		e.Type, e.State = drivers.EventFailed, drivers.StateError
	default:
		return e, false
	}
	if e.State != "" {
		d.known[name] = e.State
	}
	return e, true
}

func lifecycleName(ev int32) string {
	switch golibvirt.DomainEventType(ev) {
	case golibvirt.DomainEventDefined:
		return "defined"
	case golibvirt.DomainEventUndefined:
		return "undefined"
	case golibvirt.DomainEventStarted:
		return "started"
	case golibvirt.DomainEventSuspended:
		return "suspended"
	case golibvirt.DomainEventResumed:
		return "resumed"
	case golibvirt.DomainEventStopped:
		return "stopped"
	case golibvirt.DomainEventShutdown:
		return "shutdown"
	case golibvirt.DomainEventPmsuspended:
		return "pmsuspended"
	case golibvirt.DomainEventCrashed:
		return "crashed"
	}
	return fmt.Sprint(ev)
}

// resync lists every domain and emits what changed since the states the
// driver last recorded (at its first connection, or by the previous
// Watch): appeared, vanished and state changes. Without any record (the
// baseline listing failed) it only records.
func (d *Driver) resync(ctx context.Context, emit func(drivers.Event)) error {
	list, err := d.List(ctx)
	if err != nil {
		return err
	}
	now := time.Now()
	var out []drivers.Event
	d.watchMu.Lock()
	first := d.known == nil
	if first {
		d.known = map[string]drivers.State{}
	}
	seen := map[string]bool{}
	for _, in := range list {
		seen[in.Name] = true
		prev, had := d.known[in.Name]
		d.known[in.Name] = in.State
		switch {
		case first:
		case !had:
			out = append(out, drivers.Event{Type: drivers.EventAppeared, Instance: in.Name, Time: now, State: in.State,
				Details: map[string]string{"resync": "true"}})
		case prev != in.State:
			out = append(out, drivers.Event{Type: drivers.EventStateChanged, Instance: in.Name, Time: now, State: in.State,
				Details: map[string]string{"resync": "true"}})
		}
	}
	for n := range d.known {
		if !seen[n] {
			delete(d.known, n)
			out = append(out, drivers.Event{Type: drivers.EventVanished, Instance: n, Time: now,
				Details: map[string]string{"resync": "true"}})
		}
	}
	d.watchMu.Unlock()
	for _, e := range out {
		emit(e)
	}
	return nil
}
