package supervisor

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

// Watch is the native event feed: it diffs getAllProcessInfo every
// PollInterval (default 1s) and emits what changed, so changes made
// outside subbus (supervisorctl, crashes, FATAL) are seen within about one
// interval. Transitions that start and end between two polls are seen
// only as their net effect (a restart as a new pid).
//
// The last view is kept across calls: Connect records the first one, and
// every Watch (also one after a broken one) resyncs against it, emitting
// what changed while nobody watched.
func (d *Driver) Watch(ctx context.Context, emit func(drivers.Event)) error {
	t := time.NewTicker(time.Duration(d.opts.PollInterval))
	defer t.Stop()
	for {
		c, cancel := d.ctx(ctx)
		procs, err := d.rpc.getAllProcessInfo(c)
		var exit map[string][]int
		if err == nil {
			exit, err = d.exitCodes(c)
		}
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		for _, ev := range d.diff(procs, exit, time.Now().UTC()) {
			emit(ev)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// diff updates the kept view and returns the events between it and procs.
func (d *Driver) diff(procs []processInfo, exit map[string][]int, now time.Time) []drivers.Event {
	cur := make(map[string]processInfo, len(procs))
	for _, p := range procs {
		cur[p.namespec()] = p
	}
	d.mu.Lock()
	prev := d.seen
	d.seen = cur
	d.mu.Unlock()
	if prev == nil {
		return nil
	}
	var evs []drivers.Event
	for _, name := range sortedKeys(cur) {
		p := cur[name]
		old, had := prev[name]
		state := normalize(p, exit[name])
		details := map[string]string{"native_state": p.StateName}
		if p.PID > 0 {
			details["pid"] = strconv.Itoa(p.PID)
		}
		ev := drivers.Event{Instance: name, Time: now, State: state, Details: details}
		switch {
		case !had:
			ev.Type = drivers.EventAppeared
		case old.StateName == p.StateName && old.PID == p.PID:
			continue
		default:
			details["from"] = old.StateName
			ev.Type = transition(old, p, state)
		}
		switch ev.Type {
		case drivers.EventFailed:
			msg := fmt.Sprintf("program %s is %s", name, p.StateName)
			if p.SpawnErr != "" {
				details["spawnerr"] = p.SpawnErr
				msg += ": " + p.SpawnErr
			}
			if p.StateName == "EXITED" {
				details["exitstatus"] = strconv.Itoa(p.ExitStatus)
				msg += fmt.Sprintf(" (exit status %d)", p.ExitStatus)
			}
			ev.Error = &drivers.ErrorInfo{Code: drivers.Internal, Message: msg}
		case drivers.EventStopped:
			if p.StateName == "EXITED" {
				details["exitstatus"] = strconv.Itoa(p.ExitStatus)
			}
		}
		evs = append(evs, ev)
	}
	for _, name := range sortedKeys(prev) {
		if _, ok := cur[name]; !ok {
			evs = append(evs, drivers.Event{Type: drivers.EventVanished, Instance: name, Time: now,
				Details: map[string]string{"from": prev[name].StateName}})
		}
	}
	return evs
}

// transition names the event for a state change from old to p.
func transition(old, p processInfo, state drivers.State) drivers.EventType {
	switch p.StateName {
	case "RUNNING":
		if old.StateName == "RUNNING" {
			return drivers.EventRestarted // a new pid between two polls
		}
		return drivers.EventStarted
	case "STOPPED":
		return drivers.EventStopped
	case "EXITED":
		if state == drivers.StateError {
			return drivers.EventFailed
		}
		return drivers.EventStopped
	case "FATAL", "BACKOFF":
		// BACKOFF: the process exited before startsecs; supervisord retries.
		return drivers.EventFailed
	}
	return drivers.EventStateChanged
}

func sortedKeys(m map[string]processInfo) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
