// Package messages defines the wire format of subbus: the operations (one
// table, opTable, describes each op: request and reply types, whether it
// mutates, is idempotent, needs a capability, streams), request and reply
// bodies, headers, subjects, stream chunks, events and metrics. Workers and
// clients (subbus, other services) share it; schemas/ describes the same
// messages as JSON Schema and AsyncAPI, and tests keep the two in step.
//
// Decode checks the shape of a request only (strict JSON, types, wire
// encodings such as durations); what names and values mean is checked once,
// by the manager.
package messages

import (
	"encoding/json"
	"time"

	"github.com/subbus/subbus/internal/drivers"
)

// Headers.
const (
	HeaderRequestID      = "Subbus-Request-Id"
	HeaderDeadline       = "Subbus-Deadline" // RFC 3339 with nanoseconds, absolute
	HeaderIdempotencyKey = "Subbus-Idempotency-Key"
	// HeaderErrorCode / HeaderError are micro's error headers.
	HeaderErrorCode = "Nats-Service-Error-Code"
	HeaderError     = "Nats-Service-Error"
)

// MaxRequestBytes bounds a request body; larger requests are invalid_argument.
const MaxRequestBytes = 1 << 20

// Request bodies. Every field not listed for an op is rejected by the
// strict decoder.

// NameRequest serves get, start, metrics, limits-get, snapshot-list.
type NameRequest struct {
	Name string `json:"name"`
}

// CreateRequest serves create.
type CreateRequest struct {
	Template Template `json:"template"`
}

// StopRequest serves stop and restart. Timeout is a Go duration string ("30s").
type StopRequest struct {
	Name    string `json:"name"`
	Force   bool   `json:"force,omitempty"`
	Timeout string `json:"timeout,omitempty"`
}

// DeleteRequest serves delete.
type DeleteRequest struct {
	Name  string `json:"name"`
	Force bool   `json:"force,omitempty"`
}

// ExecRequest serves exec. With Stream, output comes as Chunks (see Chunk).
// Its fields are the wire form of drivers.ExecRequest (see Options).
type ExecRequest struct {
	Name    string            `json:"name"`
	Command []string          `json:"command"`
	Env     map[string]string `json:"env,omitempty"`
	WorkDir string            `json:"workdir,omitempty"`
	User    string            `json:"user,omitempty"`
	Stdin   []byte            `json:"stdin,omitempty"` // base64 in JSON
	Stream  bool              `json:"stream,omitempty"`
}

// Options converts the request into the driver contract's ExecRequest.
func (r ExecRequest) Options() drivers.ExecRequest {
	return drivers.ExecRequest{Command: r.Command, Env: r.Env, WorkDir: r.WorkDir, User: r.User, Stdin: r.Stdin}
}

// Streamed reports whether the output should come as Chunks.
func (r ExecRequest) Streamed() bool { return r.Stream }

// LogsRequest serves logs. With Follow, lines come as Chunks until the client goes away.
type LogsRequest struct {
	Name   string `json:"name"`
	Lines  int    `json:"lines,omitempty"`
	Follow bool   `json:"follow,omitempty"`
}

// Streamed reports whether the lines should come as Chunks.
func (r LogsRequest) Streamed() bool { return r.Follow }

// LimitsSetRequest serves limits-set. Limits are set, then the fields
// named in Unset (LimitCPUCores, …) are removed; a field may not be in
// both. At least one of them must say something.
type LimitsSetRequest struct {
	Name   string         `json:"name"`
	Limits ResourceLimits `json:"limits"`
	Unset  []string       `json:"unset,omitempty"`
}

// The names of the limit fields, for LimitsSetRequest.Unset: the JSON
// keys of ResourceLimits.
const (
	LimitCPUCores    = string(drivers.LimitCPUCores)
	LimitMemoryMB    = string(drivers.LimitMemoryMB)
	LimitDiskGB      = string(drivers.LimitDiskGB)
	LimitNetworkMbps = string(drivers.LimitNetworkMbps)
	LimitPIDs        = string(drivers.LimitPIDs)
)

// UnsetFields converts Unset to the contract's field names.
func (r LimitsSetRequest) UnsetFields() []drivers.LimitField {
	if len(r.Unset) == 0 {
		return nil
	}
	out := make([]drivers.LimitField, len(r.Unset))
	for i, f := range r.Unset {
		out[i] = drivers.LimitField(f)
	}
	return out
}

// SnapshotRequest serves snapshot-create, snapshot-restore, snapshot-delete.
type SnapshotRequest struct {
	Name     string `json:"name"`
	Snapshot string `json:"snapshot"`
}

// CloneRequest serves clone.
type CloneRequest struct {
	Source string `json:"source"`
	Target string `json:"target"`
}

// NetworkAttachRequest serves network-attach.
type NetworkAttachRequest struct {
	Name    string        `json:"name"`
	Network NetworkConfig `json:"network"`
}

// NetworkDetachRequest serves network-detach.
type NetworkDetachRequest struct {
	Name    string `json:"name"`
	Network string `json:"network"`
}

// Instance methods name the instance a request is about (InstanceName).

func (r NameRequest) Instance() string          { return r.Name }
func (r CreateRequest) Instance() string        { return r.Template.Name }
func (r StopRequest) Instance() string          { return r.Name }
func (r DeleteRequest) Instance() string        { return r.Name }
func (r ExecRequest) Instance() string          { return r.Name }
func (r LogsRequest) Instance() string          { return r.Name }
func (r LimitsSetRequest) Instance() string     { return r.Name }
func (r SnapshotRequest) Instance() string      { return r.Name }
func (r CloneRequest) Instance() string         { return r.Source }
func (r NetworkAttachRequest) Instance() string { return r.Name }
func (r NetworkDetachRequest) Instance() string { return r.Name }

// Reply is the body of every non-streamed reply: exactly one of Result and Error.
type Reply struct {
	RequestID string          `json:"request_id,omitempty"`
	Host      string          `json:"host,omitempty"`
	Result    json.RawMessage `json:"result,omitempty"`
	Error     *ErrorInfo      `json:"error,omitempty"`
}

// ChangedResult is the result of start, stop, delete (and restart): whether anything changed.
type ChangedResult struct {
	Changed  bool      `json:"changed"`
	Instance *Instance `json:"instance,omitempty"`
}

// Chunk is one message of a streamed reply (exec with stream, logs with
// follow).
//
// Streaming protocol: the client subscribes to a fresh inbox and publishes
// the request with that inbox as reply subject. The worker sends every
// chunk to the inbox as a NATS request of its own, in Seq order starting at
// 1, and waits for the client's acknowledgement (any reply, usually empty)
// before sending the next: this gives ordering and back-pressure. A chunk
// not acknowledged within HeartbeatInterval is sent again with the same
// Seq, so clients must acknowledge a repeated Seq and ignore its content.
// When an acknowledgement does not come (no responders: the client
// unsubscribed or went away; or DefaultStreamIdle passed) the worker
// cancels the operation, which stops the stream on the worker. While a followed stream is quiet
// the worker sends a Heartbeat chunk every HeartbeatInterval so a vanished
// client is noticed. The last chunk has Final set and carries the exit code
// (exec) or the error, if any; an operation that fails at once
// (not_found, conflict…) sends a single Final chunk with Error. A request
// rejected before any operation starts (invalid_argument, unsupported, an
// expired deadline) gets a plain error Reply instead. Every message that
// carries an error also has the Nats-Service-Error(-Code) headers, which
// clients check first.
type Chunk struct {
	RequestID string     `json:"request_id,omitempty"`
	Seq       uint64     `json:"seq"`
	Stream    string     `json:"stream,omitempty"` // stdout, stderr, console
	Data      []byte     `json:"data,omitempty"`   // exec output bytes (base64 in JSON)
	Line      *LogLine   `json:"line,omitempty"`   // a log line
	Heartbeat bool       `json:"heartbeat,omitempty"`
	Final     bool       `json:"final,omitempty"`
	ExitCode  *int       `json:"exit_code,omitempty"`
	Error     *ErrorInfo `json:"error,omitempty"`
}

// HeartbeatInterval is how often a quiet stream sends a heartbeat chunk.
const HeartbeatInterval = 5 * time.Second

// DefaultStreamIdle: a streaming client that has not acknowledged chunks for this long is gone.
const DefaultStreamIdle = 30 * time.Second

// CapabilitiesResult is the result of the capabilities op.
type CapabilitiesResult struct {
	Driver       string       `json:"driver"`
	Host         string       `json:"host"`
	Capabilities Capabilities `json:"capabilities"`
	Ops          []string     `json:"ops"`
	// NameRule states the driver's rule for instance names (checked
	// before the substrate is touched; a name outside it is
	// invalid_argument).
	NameRule string `json:"name_rule,omitempty"`
}
