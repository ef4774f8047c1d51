package process

import (
	"context"
	"sync"

	"github.com/subbus/subbus/internal/drivers"
)

// watcherBuffer bounds the events queued for one slow watcher; beyond it
// events are dropped (and counted) rather than blocking the driver.
const watcherBuffer = 1024

// watchers fans driver events out to every Watch call.
type watchers struct {
	mu      sync.Mutex
	list    map[*watcher]struct{}
	dropped int
}

type watcher struct {
	ch     chan drivers.Event
	closed chan struct{}
	once   sync.Once
}

func (w *watcher) close() { w.once.Do(func() { close(w.closed) }) }

func (ws *watchers) add() *watcher {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if ws.list == nil {
		ws.list = map[*watcher]struct{}{}
	}
	w := &watcher{ch: make(chan drivers.Event, watcherBuffer), closed: make(chan struct{})}
	ws.list[w] = struct{}{}
	return w
}

func (ws *watchers) remove(w *watcher) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	delete(ws.list, w)
}

// emit queues ev for every watcher without blocking.
func (ws *watchers) emit(ev drivers.Event) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	for w := range ws.list {
		select {
		case w.ch <- ev:
		default:
			ws.dropped++
		}
	}
}

// closeAll ends every Watch (the driver is closing).
func (ws *watchers) closeAll() {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	for w := range ws.list {
		w.close()
	}
}

// Watch is the native event feed: it reports every start, stop and exit
// of instance processes, including processes that exit by themselves or
// are killed from outside (EventStopped for a clean exit or a stop,
// EventFailed with State error for a non-zero exit or a signal). Each call
// first emits the changes found while connecting (instances that exited
// while no worker watched). It returns nil when ctx ends and an
// Unavailable error when the driver is closed. Several Watch calls may run
// at once.
func (d *Driver) Watch(ctx context.Context, emit func(drivers.Event)) error {
	d.mu.Lock()
	if !d.connected {
		d.mu.Unlock()
		return drivers.Errorf(drivers.Unavailable, "process: not connected")
	}
	backlog := append([]drivers.Event(nil), d.backlog...)
	w := d.events.add()
	d.mu.Unlock()
	defer d.events.remove(w)
	for _, ev := range backlog {
		emit(ev)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-w.closed:
			return drivers.Errorf(drivers.Unavailable, "process: driver closed")
		case ev := <-w.ch:
			emit(ev)
		}
	}
}
