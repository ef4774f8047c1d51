package manager

import (
	"sync"
	"time"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/messages"
)

// echoFilter recognises the native feed's reports of changes this manager
// made itself. A start through the manager is seen twice: the manager emits
// "started" (with the request id) when the driver returns, and the
// substrate's own feed reports the same start a moment earlier or later.
// Consumers want it once, so a native event about an instance is dropped
// when a mutation of that instance is in flight, or finished less than
// window ago, and the event is one that mutation produces (a native
// "started" during a start; not a native "stopped" — someone stopping the
// instance right after it started is news).
//
// Native "failed" events are news (a crash or an OOM kill right after a
// start), except the one of a start or restart that the driver answers
// with code exited (the program died while the op watched it): the
// manager's own failed event, linked to the request id and carrying the
// exit status and last lines in its error, reports that exit, so the
// native one is its echo. Whether a start ends exited is known only when
// it returns, so a native "failed" arriving while a start or restart of
// the instance is in flight is held until the op ends, then dropped (op
// exited) or emitted (any other outcome); one arriving less than window
// after a start that ended exited is dropped (supervisord's own retries
// of the program within that window are part of that exit).
type echoFilter struct {
	window time.Duration // <= 0: nothing is an echo

	mu     sync.Mutex
	active map[string][]messages.Op   // ops in flight per instance
	recent map[string]echoOp          // the last finished mutation per instance
	held   map[string][]drivers.Event // native failed events held until a start/restart ends
}

type echoOp struct {
	op     messages.Op
	at     time.Time
	exited bool // the op ended with code exited
}

// mayExit lists the ops that can end with code exited.
var mayExit = map[messages.Op]bool{messages.OpStart: true, messages.OpRestart: true}

// verdict is what the manager does with a native event.
type verdict int

const (
	emitNative verdict = iota // news: emit it
	dropEcho                  // the echo of a mutation: drop and count it
	holdEcho                  // held until the op in flight ends (end returns it)
)

// echoes lists, per mutating op, the native event types it causes.
// Every mutating op of messages' op table has an entry, or is listed in
// noEcho (a test checks this).
var echoes = map[messages.Op][]drivers.EventType{
	messages.OpCreate:         {drivers.EventCreated, drivers.EventAppeared, drivers.EventStateChanged},
	messages.OpStart:          {drivers.EventStarted, drivers.EventStateChanged},
	messages.OpStop:           {drivers.EventStopped, drivers.EventStateChanged},
	messages.OpRestart:        {drivers.EventStopped, drivers.EventStarted, drivers.EventRestarted, drivers.EventStateChanged},
	messages.OpDelete:         {drivers.EventDeleted, drivers.EventVanished, drivers.EventStopped, drivers.EventStateChanged},
	messages.OpLimitsSet:      {drivers.EventLimitsChanged, drivers.EventStateChanged},
	messages.OpSnapshotCreate: {drivers.EventSnapshotCreated, drivers.EventStateChanged},
	messages.OpSnapshotDelete: {drivers.EventSnapshotDeleted},
	messages.OpClone:          {drivers.EventCloned, drivers.EventCreated, drivers.EventAppeared, drivers.EventStateChanged},
	messages.OpNetworkAttach:  {drivers.EventNetworkAttached, drivers.EventStateChanged},
	messages.OpNetworkDetach:  {drivers.EventNetworkDetached, drivers.EventStateChanged},
	messages.OpSnapshotRestore: {drivers.EventSnapshotRestored, drivers.EventStopped, drivers.EventStarted, drivers.EventCreated,
		drivers.EventDeleted, drivers.EventAppeared, drivers.EventVanished, drivers.EventStateChanged},
}

// noEcho lists the mutating ops that cause no native event.
var noEcho = map[messages.Op]bool{messages.OpExec: true, messages.OpCancel: true}

func (f *echoFilter) begin(op messages.Op, names []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.active == nil {
		f.active = map[string][]messages.Op{}
	}
	for _, n := range names {
		f.active[n] = append(f.active[n], op)
	}
}

// end records the end of op on names (exited: it ended with code exited)
// and returns the native events held for them: emit, to be emitted, and
// dropped, the number dropped as echoes.
func (f *echoFilter) end(op messages.Op, names []string, at time.Time, exited bool) (emit []drivers.Event, dropped int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.recent == nil {
		f.recent = map[string]echoOp{}
	}
	for _, n := range names {
		ops := f.active[n]
		for i, o := range ops {
			if o == op {
				ops = append(ops[:i], ops[i+1:]...)
				break
			}
		}
		if len(ops) == 0 {
			delete(f.active, n)
		} else {
			f.active[n] = ops
		}
		f.recent[n] = echoOp{op: op, at: at, exited: exited && mayExit[op]}
		if h := f.held[n]; len(h) > 0 && !f.holding(n) {
			if exited && mayExit[op] {
				dropped += len(h)
			} else {
				emit = append(emit, h...)
			}
			delete(f.held, n)
		}
	}
	for n, r := range f.recent { // keep the map small
		if at.Sub(r.at) > f.window {
			delete(f.recent, n)
		}
	}
	return emit, dropped
}

// holding reports whether a start or restart of instance n is in flight
// (native failed events about it are held). Callers hold f.mu.
func (f *echoFilter) holding(n string) bool {
	for _, op := range f.active[n] {
		if mayExit[op] {
			return true
		}
	}
	return false
}

// check says whether a native event is news, the echo of a mutation, or
// held until a start or restart in flight ends (see echoFilter).
func (f *echoFilter) check(ev drivers.Event, now time.Time) verdict {
	if f.window <= 0 || ev.Instance == "" {
		return emitNative
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.recent[ev.Instance]
	recent := ok && now.Sub(r.at) <= f.window
	if ev.Type == drivers.EventFailed {
		switch {
		case f.holding(ev.Instance):
			if f.held == nil {
				f.held = map[string][]drivers.Event{}
			}
			f.held[ev.Instance] = append(f.held[ev.Instance], ev)
			return holdEcho
		case recent && r.exited:
			return dropEcho
		}
		return emitNative
	}
	for _, op := range f.active[ev.Instance] {
		if causes(op, ev.Type) {
			return dropEcho
		}
	}
	if recent && causes(r.op, ev.Type) {
		return dropEcho
	}
	return emitNative
}

func causes(op messages.Op, t drivers.EventType) bool {
	for _, c := range echoes[op] {
		if c == t {
			return true
		}
	}
	return false
}
