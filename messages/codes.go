package messages

import "github.com/subbus/subbus/internal/drivers"

// The error codes and instance states of the wire, named here so that a
// program outside this module (which cannot import internal packages) can
// use them: errors.Is(err, messages.ErrNotFound) holds for a not_found
// reply however the client wrapped it, and CodeOf(err) gives the code.

// Code is an error code of the closed set; it encodes as its name
// ("not_found") and each has a frozen number (404).
type Code = drivers.Code

// Error is a classified error as the client returns it.
type Error = drivers.Error

// State is the normalized state of an instance.
type State = drivers.State

// The codes.
const (
	CodeInternal         = drivers.Internal
	CodeInvalidArgument  = drivers.InvalidArgument
	CodePermissionDenied = drivers.PermissionDenied
	CodeNotFound         = drivers.NotFound
	CodeAlreadyExists    = drivers.AlreadyExists
	CodeConflict         = drivers.Conflict
	CodeExited           = drivers.Exited
	CodeUnsupported      = drivers.Unsupported
	CodeUnavailable      = drivers.Unavailable
	CodeTimeout          = drivers.Timeout
)

// Sentinels, one per code, for errors.Is.
var (
	ErrInternal         = drivers.ErrInternal
	ErrInvalidArgument  = drivers.ErrInvalidArgument
	ErrPermissionDenied = drivers.ErrPermissionDenied
	ErrNotFound         = drivers.ErrNotFound
	ErrAlreadyExists    = drivers.ErrAlreadyExists
	ErrConflict         = drivers.ErrConflict
	ErrExited           = drivers.ErrExited
	ErrUnsupported      = drivers.ErrUnsupported
	ErrUnavailable      = drivers.ErrUnavailable
	ErrTimeout          = drivers.ErrTimeout
)

// The states.
const (
	StateRunning  = drivers.StateRunning
	StateStopped  = drivers.StateStopped
	StateStarting = drivers.StateStarting
	StateStopping = drivers.StateStopping
	StatePaused   = drivers.StatePaused
	StateError    = drivers.StateError
	StateUnknown  = drivers.StateUnknown
)

// CodeOf returns the code of err: the code of the first classified error
// in its chain, Timeout for context deadline errors, Internal otherwise
// (and 0 for nil).
func CodeOf(err error) Code { return drivers.CodeOf(err) }
