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
	// ownBefore is the driver's own-change counts read before the previous
	// poll: a start or stop counted since then may be what this poll sees.
	ownBefore := d.ownCounts()
	t := time.NewTicker(time.Duration(d.opts.PollInterval))
	defer t.Stop()
	for {
		ownNow := d.ownCounts()
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
			ownAfter := d.ownCounts()
			ours := map[string]bool{}
			// A new pid is ours when the driver started or stopped the
			// program since before the previous poll, and a start is still
			// running or left exactly this process; a crash after that
			// is a crash.
			for name, s := range ownAfter {
				ours[name] = s.gen != ownBefore[name].gen && (s.inflight > 0 || (s.pid > 0 && cur[name].PID == s.pid))
			}
			for _, ev := range diff(prev, cur, exit, ours, time.Now().UTC()) {
				emit(ev)
			}
		}
		prev, ownBefore = cur, ownNow
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

// ownState is what the driver did to one program: gen counts the
// beginnings and ends of its starts and stops, inflight how many run now,
// pid the process its last start saw running.
type ownState struct {
	gen      uint64
	inflight int
	pid      int
}

// ownBegin records that a start or stop of name begins.
func (d *Driver) ownBegin(name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.own == nil {
		d.own = map[string]ownState{}
	}
	s := d.own[name]
	s.gen++
	s.inflight++
	d.own[name] = s
}

// ownEnd records that it ended; pid > 0 is the process a start left running.
func (d *Driver) ownEnd(name string, pid int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.own[name]
	s.gen++
	s.inflight--
	if pid > 0 {
		s.pid = pid
	}
	d.own[name] = s
}

// ownCounts copies the own states.
func (d *Driver) ownCounts() map[string]ownState {
	d.mu.Lock()
	defer d.mu.Unlock()
	return maps.Clone(d.own)
}

// diff returns the events that lead from the view prev to cur. ours names
// the programs this driver started or stopped between the two views: a new
// pid of theirs is the driver's own restart, not a crash.
func diff(prev, cur map[string]processInfo, exit map[string][]int, ours map[string]bool, now time.Time) []drivers.Event {
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
		for _, typ := range transition(old, p, state, ours[name]) {
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
// looks the same.) A new pid after a start or stop this driver made
// between the two polls (ours: a restart through subbus) is not a crash.
func transition(old, p processInfo, state drivers.State, ours bool) []drivers.EventType {
	crashed := !ours && (old.StateName == "RUNNING" || old.StateName == "STARTING") && respawned(old, p) &&
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
