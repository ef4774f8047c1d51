package messages

import (
	"slices"

	"github.com/subbus/subbus/internal/drivers"
)

// Op is a bus operation, the last token of a request subject.
type Op string

// The operations. Everything else about an op (its request and reply
// types, whether it mutates, whether a retry is safe, the capability it
// needs, whether it can stream) is in its OpSpec in opTable; the worker's
// handler for an op is worker.handlers[op].
const (
	OpList            Op = "list"
	OpGet             Op = "get"
	OpCreate          Op = "create"
	OpStart           Op = "start"
	OpStop            Op = "stop"
	OpRestart         Op = "restart"
	OpDelete          Op = "delete"
	OpExec            Op = "exec"
	OpLogs            Op = "logs"
	OpMetrics         Op = "metrics"
	OpHealth          Op = "health"
	OpCapabilities    Op = "capabilities"
	OpLimitsGet       Op = "limits-get"
	OpLimitsSet       Op = "limits-set"
	OpSnapshotCreate  Op = "snapshot-create"
	OpSnapshotRestore Op = "snapshot-restore"
	OpSnapshotList    Op = "snapshot-list"
	OpSnapshotDelete  Op = "snapshot-delete"
	OpClone           Op = "clone"
	OpNetworkAttach   Op = "network-attach"
	OpNetworkDetach   Op = "network-detach"
	OpNetworkList     Op = "network-list"
	OpCancel          Op = "op-cancel"
)

// Capability names the optional driver capability an op needs; "" (None)
// for the core ops every driver serves.
type Capability string

// The capabilities, one per optional driver interface that serves ops.
const (
	None      Capability = ""
	Exec      Capability = "exec"
	Logs      Capability = "logs"
	Limits    Capability = "limits"
	Snapshots Capability = "snapshots"
	Clone     Capability = "clone"
	Networks  Capability = "networks"
)

// In reports whether caps include c (None is always included).
func (c Capability) In(caps drivers.Capabilities) bool {
	switch c {
	case None:
		return true
	case Exec:
		return caps.Exec
	case Logs:
		return caps.Logs
	case Limits:
		return caps.Limits
	case Snapshots:
		return caps.Snapshots
	case Clone:
		return caps.Clone
	case Networks:
		return caps.Networks
	}
	return false
}

// OpSpec describes one operation. It is the one place an op is defined:
// Ops, ParseOp, NewRequest, Mutating, Idempotent, the worker's capability
// check and the op list a worker advertises (OpsFor) are derived from it,
// and tests check that the schemas, the worker's handlers, the CLI's
// commands and the docs cover every op.
type OpSpec struct {
	Op Op
	// Request returns a pointer to a zero request body (what Decode fills).
	Request func() any
	// Reply returns a pointer to a zero result, the type of Reply.Result.
	Reply func() any
	// Mutating: the op changes state, so it takes an idempotency key and
	// emits events.
	Mutating bool
	// Idempotent: doing the op twice has the effect of doing it once, so a
	// driver call that failed retryably may be retried.
	Idempotent bool
	// Capability is what the driver must support to serve the op; others
	// answer unsupported before anything is done.
	Capability Capability
	// Streams: the op can answer with a stream of Chunks (see Chunk) when
	// its request asks for it (exec with stream, logs with follow).
	Streams bool
	// Long: the op can run for long (minutes: an image pull, a disk copy,
	// a stop with a long grace), so it accepts HeaderNoWait and then
	// answers at once with an Operation that runs in the background
	// (docs/fleet.md "Long operations"). Doing and Done are its progress
	// verbs ("stopping", "stopped"), set exactly for the long ops.
	Long        bool
	Doing, Done string
}

func zero[T any]() any { return new(T) }

// opTable lists every operation, in the order Ops returns them.
var opTable = []OpSpec{
	{Op: OpList, Request: zero[EmptyRequest], Reply: zero[[]Instance], Idempotent: true},
	{Op: OpGet, Request: zero[NameRequest], Reply: zero[Instance], Idempotent: true},
	{Op: OpCreate, Request: zero[CreateRequest], Reply: zero[Instance], Mutating: true, Long: true, Doing: "creating", Done: "created"},
	{Op: OpStart, Request: zero[NameRequest], Reply: zero[ChangedResult], Mutating: true, Idempotent: true},
	{Op: OpStop, Request: zero[StopRequest], Reply: zero[ChangedResult], Mutating: true, Idempotent: true, Long: true, Doing: "stopping", Done: "stopped"},
	{Op: OpRestart, Request: zero[StopRequest], Reply: zero[ChangedResult], Mutating: true, Long: true, Doing: "restarting", Done: "restarted"},
	{Op: OpDelete, Request: zero[DeleteRequest], Reply: zero[ChangedResult], Mutating: true, Long: true, Doing: "deleting", Done: "deleted"},
	{Op: OpExec, Request: zero[ExecRequest], Reply: zero[ExecResult], Mutating: true, Capability: Exec, Streams: true},
	{Op: OpLogs, Request: zero[LogsRequest], Reply: zero[[]LogLine], Idempotent: true, Capability: Logs, Streams: true},
	{Op: OpMetrics, Request: zero[NameRequest], Reply: zero[ResourceUsage], Idempotent: true},
	{Op: OpHealth, Request: zero[EmptyRequest], Reply: zero[Health], Idempotent: true},
	{Op: OpCapabilities, Request: zero[EmptyRequest], Reply: zero[CapabilitiesResult], Idempotent: true},
	{Op: OpLimitsGet, Request: zero[NameRequest], Reply: zero[ResourceLimits], Idempotent: true, Capability: Limits},
	{Op: OpLimitsSet, Request: zero[LimitsSetRequest], Reply: zero[ResourceLimits], Mutating: true, Capability: Limits},
	{Op: OpSnapshotCreate, Request: zero[SnapshotRequest], Reply: zero[Snapshot], Mutating: true, Capability: Snapshots, Long: true, Doing: "creating snapshot", Done: "created snapshot"},
	{Op: OpSnapshotRestore, Request: zero[SnapshotRequest], Reply: zero[ChangedResult], Mutating: true, Capability: Snapshots, Long: true, Doing: "restoring snapshot", Done: "restored snapshot"},
	{Op: OpSnapshotList, Request: zero[NameRequest], Reply: zero[[]Snapshot], Idempotent: true, Capability: Snapshots},
	{Op: OpSnapshotDelete, Request: zero[SnapshotRequest], Reply: zero[ChangedResult], Mutating: true, Capability: Snapshots, Long: true, Doing: "deleting snapshot", Done: "deleted snapshot"},
	{Op: OpClone, Request: zero[CloneRequest], Reply: zero[Instance], Mutating: true, Capability: Clone, Long: true, Doing: "cloning", Done: "cloned"},
	{Op: OpNetworkAttach, Request: zero[NetworkAttachRequest], Reply: zero[ChangedResult], Mutating: true, Capability: Networks},
	{Op: OpNetworkDetach, Request: zero[NetworkDetachRequest], Reply: zero[ChangedResult], Mutating: true, Capability: Networks},
	{Op: OpNetworkList, Request: zero[EmptyRequest], Reply: zero[[]Network], Idempotent: true, Capability: Networks},
	// op-cancel mutates (an operator's right, not a reader's) and is
	// idempotent: cancelling twice is cancelling once.
	{Op: OpCancel, Request: zero[CancelRequest], Reply: zero[Operation], Mutating: true, Idempotent: true},
}

// Spec returns the description of op; ok is false for an unknown op.
func Spec(op Op) (OpSpec, bool) {
	for _, s := range opTable {
		if s.Op == op {
			return s, true
		}
	}
	return OpSpec{}, false
}

// Ops lists every operation.
func Ops() []Op {
	ops := make([]Op, len(opTable))
	for i, s := range opTable {
		ops[i] = s.Op
	}
	return ops
}

// OpsFor lists the operations a driver with caps serves: the core ops
// first, then the others, each group in table order.
func OpsFor(caps drivers.Capabilities) []Op {
	var core, optional []Op
	for _, s := range opTable {
		switch {
		case s.Capability == None:
			core = append(core, s.Op)
		case s.Capability.In(caps):
			optional = append(optional, s.Op)
		}
	}
	return slices.Concat(core, optional)
}

// OpNames is OpsFor as strings, the form of CapabilitiesResult.Ops and of
// the endpoints' "ops" metadata.
func OpNames(ops []Op) []string {
	out := make([]string, len(ops))
	for i, o := range ops {
		out[i] = string(o)
	}
	return out
}

// Mutating reports whether op changes state (takes an idempotency key, emits events).
func (o Op) Mutating() bool { s, _ := Spec(o); return s.Mutating }

// Long reports whether op accepts HeaderNoWait (OpSpec.Long).
func (o Op) Long() bool { s, _ := Spec(o); return s.Long }

// LongOps lists the ops that accept HeaderNoWait, in table order.
func LongOps() []Op {
	var out []Op
	for _, s := range opTable {
		if s.Long {
			out = append(out, s.Op)
		}
	}
	return out
}

// Idempotent reports whether doing op twice has the effect of doing it once.
func (o Op) Idempotent() bool { s, _ := Spec(o); return s.Idempotent }

// Supported answers unsupported, naming the op and the driver, when a
// driver with caps cannot serve op.
func (o Op) Supported(driver string, caps drivers.Capabilities) error {
	if s, _ := Spec(o); !s.Capability.In(caps) {
		return drivers.Unsupportedf("%s: the %s driver does not support this operation", o, driver)
	}
	return nil
}
