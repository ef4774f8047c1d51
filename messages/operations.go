package messages

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

// Long operations (docs/fleet.md "Long operations", docs/bus.md).
//
// A request of a long op (OpSpec.Long) carrying HeaderNoWait is accepted
// at once: the reply's result is the Operation (state running) and the
// worker runs the op in the background. Every change of the operation
// (start, progress, end) is
//
//   - written to the KV bucket OpsBucket under OpKey(driver, host, id): the
//     record, queryable after the fact until OpsTTL after its last change;
//   - published on OpSubject(driver, host, id) (core NATS): the live feed
//     of followers, who read the record after subscribing to catch up.
//
// op-cancel (CancelRequest) on the owning host's subject cancels it.
const (
	// HeaderNoWait asks a long op to answer at once with an Operation.
	// Any non-empty value counts; subbus sends "1".
	HeaderNoWait = "Subbus-No-Wait"
	// OpsBucket holds the operation records, keys <driver>.<host>.<op-id>.
	OpsBucket = "SUBSTRATE_OPS"
	// OpsToken is the progress tree: substrate.ops.<driver>.<host>.<op-id>.
	OpsToken = "ops"
)

// OpState is the state of an operation. running is the only one that
// changes; the other four are final.
type OpState string

const (
	OpRunning   OpState = "running"
	OpSucceeded OpState = "succeeded"
	OpFailed    OpState = "failed"
	OpCancelled OpState = "cancelled"
)

// Final reports whether s is an end state.
func (s OpState) Final() bool { return s != OpRunning && s != "" }

// CancelRequest serves op-cancel: the id of an operation of this host.
type CancelRequest struct {
	ID string `json:"id"`
}

// Instance: op-cancel is about an operation, not an instance.
func (r CancelRequest) Instance() string { return "" }

// Operation is one long operation: the no-wait reply, the value of its
// OpsBucket key and the payload of its OpSubject messages.
type Operation struct {
	ID        string  `json:"id"`
	Driver    string  `json:"driver"`
	Host      string  `json:"host"`
	Op        Op      `json:"op"`
	Instance  string  `json:"instance,omitempty"`
	RequestID string  `json:"request_id"`
	State     OpState `json:"state"`
	// Progress is the latest progress line ("stopping web (grace 5s)",
	// then "stopped after 1.2s"); Seq counts the changes (1 at start).
	Progress string    `json:"progress"`
	Seq      int       `json:"seq"`
	Started  time.Time `json:"started"`
	Updated  time.Time `json:"updated"`
	Ended    time.Time `json:"ended,omitzero"`
	// CancelRequested: op-cancel was received; the state becomes
	// cancelled when the substrate gave up (or succeeded/failed when it
	// could not be stopped in time).
	CancelRequested bool `json:"cancel_requested,omitempty"`
	// Result is the op's result (the reply a synchronous request would
	// have had) once succeeded; Error its error once failed or cancelled.
	Result json.RawMessage `json:"result,omitempty"`
	Error  *ErrorInfo      `json:"error,omitempty"`
	// Lost is set by readers (never stored): the record says running but
	// the owning worker is not up (its heartbeat is stale or says it
	// stopped), so no one will finish it. A restarted worker marks its
	// lost operations failed.
	Lost bool `json:"lost,omitempty"`
}

// Key is the operation's OpsBucket key.
func (o Operation) Key() string { return OpKey(o.Driver, o.Host, o.ID) }

// OpKey is the OpsBucket key of an operation.
func OpKey(driver, host, id string) string { return driver + "." + host + "." + id }

// ParseOpKey splits an OpsBucket key.
func ParseOpKey(key string) (driver, host, id string, err error) {
	parts := strings.Split(key, ".")
	if len(parts) != 3 || parts[2] == "" {
		return "", "", "", fmt.Errorf("operation key %q: want <driver>.<host>.<op-id>", key)
	}
	return parts[0], parts[1], parts[2], nil
}

// OpSubject is the subject an operation's changes are published on.
func OpSubject(driver, host, id string) string {
	return SubjectRoot + "." + OpsToken + "." + driver + "." + host + "." + id
}

// ValidOpID reports whether id can be an operation id (a key and subject token).
func ValidOpID(id string) bool { return ValidToken(id) }

// ProgressStart is the line an operation starts with, the same for the
// worker's record and the CLI's synchronous wait: "stopping web (grace
// 5s)", "cloning a to b", "creating snapshot s1 of web". req is the
// decoded request body; defaultGrace is the stop grace used when the
// request names none (0: not shown).
func ProgressStart(op Op, req any, defaultGrace time.Duration) string {
	s, _ := Spec(op)
	doing := s.Doing
	if doing == "" {
		doing = string(op)
	}
	switch r := req.(type) {
	case *StopRequest:
		return doing + " " + r.Name + stopNote(*r, defaultGrace)
	case *DeleteRequest:
		if r.Force {
			return doing + " " + r.Name + " (force)"
		}
		return doing + " " + r.Name
	case *CreateRequest:
		return doing + " " + r.Template.Name
	case *CloneRequest:
		return doing + " " + r.Source + " to " + r.Target
	case *SnapshotRequest:
		return doing + " " + r.Snapshot + " of " + r.Name
	}
	if n := InstanceName(req); n != "" {
		return doing + " " + n
	}
	return doing
}

func stopNote(r StopRequest, def time.Duration) string {
	if r.Force {
		return " (force)"
	}
	if g := Grace(r, def); g > 0 {
		return " (grace " + g.String() + ")"
	}
	return ""
}

// Grace is the grace period of a stop or restart request: its timeout,
// else def.
func Grace(r StopRequest, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(r.Timeout); err == nil && d > 0 {
		return d
	}
	return def
}

// ProgressEnd is the line an operation ends with: "stopped after 1.2s",
// "killed after 5s" (a graceful stop that took its whole grace: the
// substrate then kills; inferred from the time taken, drivers do not
// report it), "failed after 3s: <error>", "cancelled after 2s".
func ProgressEnd(op Op, req any, defaultGrace, took time.Duration, state OpState, err error) string {
	s, _ := Spec(op)
	done := s.Done
	if done == "" {
		done = string(op)
	}
	t := roundTook(took)
	switch state {
	case OpCancelled:
		return "cancelled after " + t
	case OpFailed:
		msg := ""
		if err != nil {
			msg = ": " + err.Error()
		}
		return "failed after " + t + msg
	}
	if r, ok := req.(*StopRequest); ok && (op == OpStop || op == OpRestart) && !r.Force {
		if g := Grace(*r, defaultGrace); g > 0 && took >= g {
			if op == OpRestart {
				return "restarted after " + t + " (killed: the " + g.String() + " grace ran out)"
			}
			return "killed after " + t + " (the " + g.String() + " grace ran out)"
		}
	}
	return done + " after " + t
}

func roundTook(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

// OpErrorCode is the code of a failed or cancelled operation's error.
func (o Operation) OpErrorCode() drivers.Code {
	if o.Error == nil {
		return 0
	}
	return o.Error.Code
}
