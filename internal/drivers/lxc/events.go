package lxc

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/coder/websocket"

	"github.com/subbus/subbus/internal/drivers"
)

// lifecycleEvent is one frame of /1.0/events?type=lifecycle.
type lifecycleEvent struct {
	Type      string    `json:"type"`
	Timestamp time.Time `json:"timestamp"`
	Project   string    `json:"project"`
	Metadata  struct {
		Action  string         `json:"action"`
		Source  string         `json:"source"`
		Context map[string]any `json:"context"`
	} `json:"metadata"`
}

// actions maps lifecycle actions to event types and the state the
// instance is in afterwards ("" when unchanged or unknown). Creation and
// deletion seen natively are Appeared/Vanished (as in every driver): the
// manager reports its own creates and deletes as Created/Deleted.
var actions = map[string]struct {
	typ   drivers.EventType
	state drivers.State
}{
	"instance-created":   {drivers.EventAppeared, drivers.StateStopped},
	"instance-started":   {drivers.EventStarted, drivers.StateRunning},
	"instance-ready":     {drivers.EventStateChanged, drivers.StateRunning}, // Incus
	"instance-stopped":   {drivers.EventStopped, drivers.StateStopped},
	"instance-shutdown":  {drivers.EventStopped, drivers.StateStopped},
	"instance-restarted": {drivers.EventRestarted, drivers.StateRunning},
	"instance-paused":    {drivers.EventStateChanged, drivers.StatePaused},
	"instance-resumed":   {drivers.EventStateChanged, drivers.StateRunning},
	"instance-deleted":   {drivers.EventVanished, ""},
	"instance-updated":   {drivers.EventStateChanged, ""},
	"instance-renamed":   {drivers.EventAppeared, ""}, // under the new name; see renamed

	"instance-restored":         {drivers.EventSnapshotRestored, ""},
	"instance-snapshot-created": {drivers.EventSnapshotCreated, ""},
	"instance-snapshot-deleted": {drivers.EventSnapshotDeleted, ""},
}

// toEvent maps a lifecycle frame to an Event; ok is false for frames that
// are not about an instance.
func toEvent(le lifecycleEvent) (drivers.Event, bool) {
	a, ok := actions[le.Metadata.Action]
	if !ok {
		return drivers.Event{}, false
	}
	u, err := url.Parse(le.Metadata.Source)
	if err != nil {
		return drivers.Event{}, false
	}
	parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	// /1.0/instances/<name>[/snapshots/<snap>]
	if len(parts) < 3 || parts[1] != "instances" {
		return drivers.Event{}, false
	}
	name, _ := url.PathUnescape(parts[2])
	ev := drivers.Event{
		Type:     a.typ,
		Time:     le.Timestamp,
		Instance: name,
		State:    a.state,
		Details:  map[string]string{"action": le.Metadata.Action},
	}
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	if len(parts) >= 5 && parts[3] == "snapshots" {
		ev.Details["snapshot"], _ = url.PathUnescape(parts[4])
	}
	if le.Project != "" {
		ev.Details["project"] = le.Project
	}
	for k, v := range le.Metadata.Context {
		if s, ok := v.(string); ok && s != "" {
			ev.Details[k] = s
		}
	}
	return ev, true
}

// Watch follows the lifecycle event websocket. On every connection it
// first subscribes, then lists the instances and emits what changed since
// the previous connection (EventAppeared, EventVanished, EventStateChanged),
// because the server replays nothing. It returns nil when ctx ends and the
// error when the feed breaks.
func (d *Driver) Watch(ctx context.Context, emit func(drivers.Event)) error {
	c, _, err := d.conn()
	if err != nil {
		return err
	}
	wsURL := strings.Replace(c.url("/1.0/events?type=lifecycle"), "http", "ws", 1)
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, _, err := websocket.Dial(dctx, wsURL, &websocket.DialOptions{HTTPClient: c.http})
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return &connError{Err: fmt.Errorf("events websocket: %w", err)}
	}
	defer conn.CloseNow()
	conn.SetReadLimit(4 << 20)

	if err := d.resync(ctx, emit); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	for {
		_, data, err := conn.Read(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return &connError{Err: fmt.Errorf("events websocket: %w", err)}
		}
		var le lifecycleEvent
		if json.Unmarshal(data, &le) != nil || le.Type != "lifecycle" {
			continue
		}
		if d.opts.Project != "" && le.Project != "" && le.Project != d.opts.Project {
			continue
		}
		ev, ok := toEvent(le)
		if !ok {
			continue
		}
		if old := ev.Details["old_name"]; le.Metadata.Action == "instance-renamed" && old != "" {
			gone := drivers.Event{Type: drivers.EventVanished, Time: ev.Time, Instance: old,
				Details: map[string]string{"action": le.Metadata.Action, "new_name": ev.Instance}}
			d.remember(gone)
			emit(gone)
			ev.State = d.stateOf(ctx, ev.Instance)
		}
		d.remember(ev)
		emit(ev)
	}
}

// stateOf asks for an instance's state ("" when it cannot be had).
func (d *Driver) stateOf(ctx context.Context, name string) drivers.State {
	in, _, err := d.get(ctx, name)
	if err != nil {
		return ""
	}
	return normState(in.StatusCode, in.Status)
}

// remember keeps the known states current so that the next resync only
// reports what the feed missed.
func (d *Driver) remember(ev drivers.Event) {
	d.watchMu.Lock()
	defer d.watchMu.Unlock()
	if d.known == nil {
		return
	}
	switch {
	case ev.Type == drivers.EventVanished:
		delete(d.known, ev.Instance)
	case ev.State != "":
		d.known[ev.Instance] = ev.State
	}
}

// resync lists the instances and emits the differences with the states
// known from the previous connection. The first connection only records.
func (d *Driver) resync(ctx context.Context, emit func(drivers.Event)) error {
	list, err := d.List(ctx)
	if err != nil {
		return err
	}
	now := time.Now()
	cur := make(map[string]drivers.State, len(list))
	for _, in := range list {
		cur[in.Name] = in.State
	}
	d.watchMu.Lock()
	prev := d.known
	d.known = cur
	d.watchMu.Unlock()
	if prev == nil {
		return nil
	}
	details := map[string]string{"resync": "true"}
	for name, st := range cur {
		old, ok := prev[name]
		switch {
		case !ok:
			emit(drivers.Event{Type: drivers.EventAppeared, Time: now, Instance: name, State: st, Details: details})
		case old != st:
			emit(drivers.Event{Type: drivers.EventStateChanged, Time: now, Instance: name, State: st, Details: details})
		}
	}
	for name := range prev {
		if _, ok := cur[name]; !ok {
			emit(drivers.Event{Type: drivers.EventVanished, Time: now, Instance: name, Details: details})
		}
	}
	return nil
}
