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
// instance right after it started is news). Native "failed" events always
// pass: a crash or an OOM kill is news even right after a start.
type echoFilter struct {
	window time.Duration // <= 0: nothing is an echo

	mu     sync.Mutex
	active map[string][]messages.Op // ops in flight per instance
	recent map[string]echoOp        // the last finished mutation per instance
}

type echoOp struct {
	op messages.Op
	at time.Time
}

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

func (f *echoFilter) end(op messages.Op, names []string, at time.Time) {
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
		f.recent[n] = echoOp{op: op, at: at}
	}
	for n, r := range f.recent { // keep the map small
		if at.Sub(r.at) > f.window {
			delete(f.recent, n)
		}
	}
}

// isEcho reports whether a native event is the echo of a mutation.
func (f *echoFilter) isEcho(ev drivers.Event, now time.Time) bool {
	if f.window <= 0 || ev.Instance == "" || ev.Type == drivers.EventFailed {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, op := range f.active[ev.Instance] {
		if causes(op, ev.Type) {
			return true
		}
	}
	r, ok := f.recent[ev.Instance]
	return ok && now.Sub(r.at) <= f.window && causes(r.op, ev.Type)
}

func causes(op messages.Op, t drivers.EventType) bool {
	for _, c := range echoes[op] {
		if c == t {
			return true
		}
	}
	return false
}
