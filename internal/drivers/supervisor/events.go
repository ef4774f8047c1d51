package supervisor

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

// Watch is the native event feed: it diffs getAllProcessInfo every
// PollInterval (default 1s) and emits what changed, so changes made
// outside subbus (supervisorctl, crashes, FATAL) are seen within about one
// interval. Transitions that start and end between two polls are seen
// only as their net effect (a respawn as a new pid).
//
// The last view is kept across calls: Connect records the first one, and
// every Watch (also one after a broken one) resyncs against it, emitting
// what changed while nobody watched.
func (d *Driver) Watch(ctx context.Context, emit func(drivers.Event)) error {
	// Each Watch diffs against its own view (several may run at once);
	// the driver keeps the latest one for the next Watch to start from.
	d.mu.Lock()
	prev := d.seen
	d.mu.Unlock()
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
		cur := view(procs)
		d.mu.Lock()
		d.seen = cur
		d.mu.Unlock()
		if prev != nil {
			for _, ev := range diff(prev, cur, exit, time.Now().UTC()) {
				emit(ev)
			}
		}
		prev = cur
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// view indexes a process table by namespec.
func view(procs []processInfo) map[string]processInfo {
	cur := make(map[string]processInfo, len(procs))
	for _, p := range procs {
		cur[p.namespec()] = p
	}
	return cur
}

// diff returns the events that lead from the view prev to cur.
func diff(prev, cur map[string]processInfo, exit map[string][]int, now time.Time) []drivers.Event {
	var evs []drivers.Event
	for _, name := range sortedKeys(cur) {
		p := cur[name]
		old, had := prev[name]
		state := normalize(p, exit[name])
		details := map[string]string{"native_state": p.StateName}
		if p.PID > 0 {
			details["pid"] = strconv.Itoa(p.PID)
		}
		if !had {
			evs = append(evs, drivers.Event{Type: drivers.EventAppeared, Instance: name, Time: now, State: state, Details: details})
			continue
		}
		if old.StateName == p.StateName && old.PID == p.PID {
			continue
		}
		details["from"] = old.StateName
		for _, typ := range transition(old, p, state) {
			ev := drivers.Event{Type: typ, Instance: name, Time: now, State: state, Details: maps.Clone(details)}
			if p.StateName == "EXITED" {
				ev.Details["exitstatus"] = strconv.Itoa(p.ExitStatus)
			}
			if typ == drivers.EventFailed {
				msg := fmt.Sprintf("program %s is %s", name, p.StateName)
				if respawned(old, p) && (p.StateName == "STARTING" || p.StateName == "RUNNING") {
					msg = fmt.Sprintf("program %s exited without being stopped and supervisord restarted it", name)
				}
				if p.SpawnErr != "" {
					ev.Details["spawnerr"] = p.SpawnErr
					msg += ": " + p.SpawnErr
				}
				if p.StateName == "EXITED" {
					msg += fmt.Sprintf(" (exit status %d)", p.ExitStatus)
				}
				ev.Err = drivers.Errorf(drivers.Internal, "%s", msg)
			}
			evs = append(evs, ev)
		}
	}
	for _, name := range sortedKeys(prev) {
		if _, ok := cur[name]; !ok {
			evs = append(evs, drivers.Event{Type: drivers.EventVanished, Instance: name, Time: now,
				Details: map[string]string{"from": prev[name].StateName}})
		}
	}
	return evs
}

// respawned reports whether the process seen at the previous poll has
// been replaced by a new one (supervisord respawned the program).
func respawned(old, p processInfo) bool {
	return old.PID > 0 && p.PID > 0 && p.PID != old.PID
}

// transition names the events for a state change from old to p. A
// process that was STARTING or RUNNING and has been replaced by a new one
// without going through a stop (supervisord respawned it: autorestart) is
// a crash: failed, then the state it is in now. (supervisord resets the
// exit status when it respawns, so the status of such an exit is not
// known; a restart made by hand that falls entirely between two polls
// looks the same.)
func transition(old, p processInfo, state drivers.State) []drivers.EventType {
	crashed := (old.StateName == "RUNNING" || old.StateName == "STARTING") && respawned(old, p) &&
		(p.StateName == "STARTING" || p.StateName == "RUNNING")
	var out []drivers.EventType
	if crashed {
		out = append(out, drivers.EventFailed)
	}
	switch p.StateName {
	case "RUNNING":
		return append(out, drivers.EventStarted)
	case "STOPPED":
		return append(out, drivers.EventStopped)
	case "EXITED":
		if state == drivers.StateError {
			return append(out, drivers.EventFailed)
		}
		return append(out, drivers.EventStopped)
	case "FATAL", "BACKOFF":
		// BACKOFF: the process exited before startsecs; supervisord retries.
		return append(out, drivers.EventFailed)
	}
	return append(out, drivers.EventStateChanged)
}

func sortedKeys(m map[string]processInfo) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
