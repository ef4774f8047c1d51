package docker

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/moby/moby/api/types/events"
	"github.com/moby/moby/client"

	"github.com/subbus/subbus/internal/drivers"
)

// watchedActions are the container events Watch subscribes to.
var watchedActions = []string{"create", "start", "restart", "die", "oom", "kill", "destroy", "pause", "unpause", "rename", "health_status"}

// known is what a watcher last saw of one container.
type known struct {
	id    string
	state drivers.State
}

// watchCursor is where a watcher stopped: the time of the last event it
// saw and the containers it knew, so the next Watch asks the daemon for
// events since then and reports what changed in between.
type watchCursor struct {
	since int64 // unix nanoseconds of the last event seen; 0 = none
	known map[string]known
}

// watchState hands the cursor of a Watch that ended (or of Connect) to
// the next Watch. Concurrent watchers each keep their own cursor.
type watchState struct {
	mu     sync.Mutex
	cursor *watchCursor
}

func (w *watchState) take() *watchCursor {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := w.cursor
	w.cursor = nil
	return c
}

func (w *watchState) put(c *watchCursor) {
	w.mu.Lock()
	w.cursor = c
	w.mu.Unlock()
}

func knownOf(list []drivers.Instance) map[string]known {
	m := make(map[string]known, len(list))
	for _, i := range list {
		m[i.Name] = known{id: i.ID, state: i.State}
	}
	return m
}

// Watch implements drivers.EventSource over Docker's event stream
// (container events, including changes made with the docker CLI). It
// subscribes first, then lists the containers and reports what changed
// since the previous Watch (appeared, vanished, state changes); the
// stream is asked for events since the last one the previous Watch saw,
// so nothing in between is lost. It returns nil when ctx ends and an
// Unavailable error when the stream breaks.
func (d *Driver) Watch(ctx context.Context, emit func(drivers.Event)) error {
	c, err := d.client()
	if err != nil {
		return err
	}
	cur := d.watch.take()
	if cur == nil {
		cur = &watchCursor{}
	}
	emit = withoutRestoreAsides(emit)
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	f := make(client.Filters).Add("type", "container").Add("event", watchedActions...)
	opts := client.EventsListOptions{Filters: f}
	if cur.since > 0 {
		opts.Since = fmt.Sprintf("%d.%09d", cur.since/1e9, cur.since%1e9)
	}
	stream := c.Events(sctx, opts)

	list, err := d.List(ctx)
	if err != nil {
		d.watch.put(cur)
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	resyncAt := time.Now().UnixNano()
	now := knownOf(list)
	if cur.known != nil {
		for _, ev := range resync(cur.known, list) {
			emit(ev)
		}
	}
	w := &watcher{d: d, known: now, resyncAt: resyncAt, killed: map[string]bool{}, oom: map[string]bool{}}
	last := cur.since
	for {
		select {
		case m := <-stream.Messages:
			if m.TimeNano > last {
				last = m.TimeNano
			}
			if ev, ok := w.event(ctx, m); ok {
				emit(ev)
			}
		case err := <-stream.Err:
			d.watch.put(&watchCursor{since: last, known: w.known})
			if ctx.Err() != nil {
				return nil
			}
			if err == nil {
				return drivers.Errorf(drivers.Unavailable, "docker event stream closed")
			}
			return fmt.Errorf("docker event stream: %w", err)
		case <-ctx.Done():
			d.watch.put(&watchCursor{since: last, known: w.known})
			return nil
		}
	}
}

// withoutRestoreAsides drops the events of a container while a snapshot
// restore has it renamed aside (<name>-subbus-restore-<hex>): its rename
// away and back, and its removal. The instance itself is seen stopping,
// appearing anew and starting under its own name.
func withoutRestoreAsides(emit func(drivers.Event)) func(drivers.Event) {
	return func(ev drivers.Event) {
		if isRestoreAside(ev.Instance) || isRestoreAside(ev.Details["old_name"]) {
			return
		}
		emit(ev)
	}
}

// resync reports the differences between what a watcher knew and now.
func resync(before map[string]known, list []drivers.Instance) []drivers.Event {
	var out []drivers.Event
	t := time.Now().UTC()
	seen := map[string]bool{}
	for _, i := range list {
		seen[i.Name] = true
		k, ok := before[i.Name]
		d := map[string]string{"id": shortID(i.ID), "resync": "true", "managed": fmt.Sprint(i.Managed)}
		switch {
		case !ok || k.id != i.ID:
			if ok {
				out = append(out, drivers.Event{Type: drivers.EventVanished, Instance: i.Name, Time: t, Details: map[string]string{"id": shortID(k.id), "resync": "true"}})
			}
			out = append(out, drivers.Event{Type: drivers.EventAppeared, Instance: i.Name, Time: t, State: i.State, Details: d})
		case k.state != i.State:
			out = append(out, drivers.Event{Type: drivers.EventStateChanged, Instance: i.Name, Time: t, State: i.State, Details: d})
		}
	}
	for name, k := range before {
		if !seen[name] {
			out = append(out, drivers.Event{Type: drivers.EventVanished, Instance: name, Time: t, Details: map[string]string{"id": shortID(k.id), "resync": "true"}})
		}
	}
	return out
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// watcher maps one stream's messages to events.
type watcher struct {
	d        *Driver
	known    map[string]known
	resyncAt int64
	killed   map[string]bool // a kill preceded the next die: not a crash
	oom      map[string]bool // an oom preceded the next die
}

// event maps a Docker message; ok is false for messages that change
// nothing (or that the resync already reported).
func (w *watcher) event(ctx context.Context, m events.Message) (drivers.Event, bool) {
	attrs := m.Actor.Attributes
	name := attrs["name"]
	id := m.Actor.ID
	if name == "" {
		return drivers.Event{}, false
	}
	action := string(m.Action)
	ev := drivers.Event{
		Instance: name,
		Time:     time.Unix(0, m.TimeNano).UTC(),
		Details:  map[string]string{"id": shortID(id), "action": action, "managed": fmt.Sprint(attrs[LabelManaged] == "true")},
	}
	if img := attrs["image"]; img != "" {
		ev.Details["image"] = img
	}
	prev, had := w.known[name]
	// replayed is an event from before the resync whose outcome the
	// resync already saw.
	replayed := func(st drivers.State) bool {
		return m.TimeNano < w.resyncAt && had && prev.id == id && prev.state == st
	}
	set := func(st drivers.State) { w.known[name] = known{id: id, state: st} }
	switch {
	case action == "create":
		if m.TimeNano < w.resyncAt && had && prev.id == id {
			return ev, false
		}
		ev.Type, ev.State = drivers.EventAppeared, drivers.StateStopped
		set(ev.State)
	case action == "start", action == "restart", action == "unpause":
		if replayed(drivers.StateRunning) {
			return ev, false
		}
		ev.Type, ev.State = drivers.EventStarted, drivers.StateRunning
		if action == "restart" {
			ev.Type = drivers.EventRestarted
		} else if action == "unpause" {
			ev.Type = drivers.EventStateChanged
		}
		delete(w.killed, id)
		delete(w.oom, id)
		set(ev.State)
	case action == "pause":
		ev.Type, ev.State = drivers.EventStateChanged, drivers.StatePaused
		set(ev.State)
	case action == "oom":
		ev.Type, ev.State = drivers.EventFailed, drivers.StateError
		ev.Details["oom"] = "true"
		ev.Err = drivers.Errorf(drivers.Internal, "container %s ran out of memory (OOM)", name)
		w.oom[id] = true
	case action == "kill":
		w.killed[id] = true
		ev.Type, ev.State = drivers.EventStateChanged, prev.state
		if ev.State == "" {
			ev.State = drivers.StateRunning
		}
		ev.Details["signal"] = attrs["signal"]
	case action == "die":
		exit := attrs["exitCode"]
		ev.Details["exit_code"] = exit
		oom := w.oom[id]
		if !oom && exit == "137" && !w.killed[id] {
			oom = w.d.oomKilled(ctx, id)
		}
		switch {
		case oom:
			ev.Type, ev.State = drivers.EventFailed, drivers.StateError
			ev.Details["oom"] = "true"
			ev.Err = drivers.Errorf(drivers.Internal, "container %s was OOM-killed (exit code %s)", name, exit)
		case exit != "0" && !w.killed[id]:
			ev.Type, ev.State = drivers.EventFailed, drivers.StateStopped
			ev.Err = drivers.Errorf(drivers.Internal, "container %s exited with code %s", name, exit)
		default:
			if replayed(drivers.StateStopped) {
				return ev, false
			}
			ev.Type, ev.State = drivers.EventStopped, drivers.StateStopped
		}
		delete(w.killed, id)
		delete(w.oom, id)
		set(ev.State)
	case action == "destroy":
		if m.TimeNano < w.resyncAt && !had {
			return ev, false
		}
		ev.Type = drivers.EventVanished
		delete(w.known, name)
		delete(w.killed, id)
		delete(w.oom, id)
		w.d.stats.forget(id)
	case action == "rename":
		old := strings.TrimPrefix(attrs["oldName"], "/")
		ev.Type, ev.State = drivers.EventStateChanged, prev.state
		ev.Details["old_name"] = old
		if k, ok := w.known[old]; ok {
			delete(w.known, old)
			w.known[name] = k
			ev.State = k.state
		}
	case strings.HasPrefix(action, "health_status"):
		ev.Type, ev.State = drivers.EventStateChanged, drivers.StateRunning
		ev.Details["health"] = strings.TrimSpace(strings.TrimPrefix(action, "health_status:"))
	default:
		return ev, false
	}
	return ev, true
}

// oomKilled asks the daemon whether a container that died was OOM-killed.
func (d *Driver) oomKilled(ctx context.Context, id string) bool {
	c, err := d.client()
	if err != nil {
		return false
	}
	res, err := c.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
	return err == nil && res.Container.State != nil && res.Container.State.OOMKilled
}
