package drivers

import (
	"context"
	"errors"
	"fmt"
	"slices"
)

// Code is the closed set of error codes every driver maps its errors into.
// Programs act on an error's code, never on its message.
//
// The numeric values are frozen: they travel on the wire in the
// Nats-Service-Error-Code header and may be stored by consumers. Every
// code is one row of codeTable; everything else (names, the list, the
// sentinels, retryability, the CLI's exit statuses, the schema's enum and
// the documentation tables, checked by tests) derives from it.
type Code int

const (
	// Internal: a bug or an error the driver could not classify.
	Internal Code = 500
	// InvalidArgument: the request is malformed; nothing was changed.
	InvalidArgument Code = 400
	// PermissionDenied: the substrate refused the caller's credentials.
	PermissionDenied Code = 403
	// NotFound: the instance (or snapshot, network, image) does not exist.
	NotFound Code = 404
	// AlreadyExists: create or clone of a name that is taken.
	AlreadyExists Code = 409
	// Conflict: the instance is in the wrong state or busy with another mutation.
	Conflict Code = 423
	// Exited: the instance's own program exited (or its supervisor gave
	// up on it) while the operation waited to see it running: start of a
	// command that dies at once, a supervisor program that goes FATAL. The
	// instance exists, stopped or in state error; the error's detail has
	// its exit status and last log lines. Not retryable unchanged: fix the
	// command or what it needs.
	Exited Code = 424
	// Unsupported: the substrate cannot do this operation.
	Unsupported Code = 501
	// Unavailable: the substrate is unreachable, or its circuit breaker is open.
	Unavailable Code = 503
	// Timeout: the deadline passed (or the caller gave up) before the operation finished.
	Timeout Code = 504
)

// CodeInfo is one row of the code table.
type CodeInfo struct {
	Code      Code
	Name      string // wire name
	Retryable bool   // the same request may succeed later
	// Exit is the subbus CLI's exit status for the code (docs/cli.md).
	Exit int
	// Phrase ends the manager's message for an error of the code
	// (`instance "web" not found`, `start instance "web": timed out`).
	Phrase string
}

// codeTable is the closed set of codes, in their documented order.
var codeTable = []CodeInfo{
	{InvalidArgument, "invalid_argument", false, 3, "invalid argument"},
	{PermissionDenied, "permission_denied", false, 7, "permission denied"},
	{NotFound, "not_found", false, 4, "not found"},
	{AlreadyExists, "already_exists", false, 5, "already exists"},
	{Conflict, "conflict", false, 6, "wrong state or busy"},
	{Exited, "exited", false, 13, "the instance's program exited"},
	{Internal, "internal", false, 1, "failed"},
	{Unsupported, "unsupported", false, 8, "not supported by this driver"},
	{Unavailable, "unavailable", true, 9, "substrate unavailable"},
	{Timeout, "timeout", true, 10, "timed out"},
}

// CodeTable returns the rows of the code table, in a stable order.
func CodeTable() []CodeInfo { return slices.Clone(codeTable) }

// info returns the row of c.
func (c Code) info() (CodeInfo, bool) {
	for _, r := range codeTable {
		if r.Code == c {
			return r, true
		}
	}
	return CodeInfo{}, false
}

// Codes lists every code, in a stable order.
func Codes() []Code {
	out := make([]Code, len(codeTable))
	for i, r := range codeTable {
		out[i] = r.Code
	}
	return out
}

// String returns the wire name of the code, e.g. "not_found".
func (c Code) String() string {
	if r, ok := c.info(); ok {
		return r.Name
	}
	return fmt.Sprintf("code(%d)", int(c))
}

// Retryable reports whether an operation that failed with this code may
// succeed if tried again unchanged: the substrate was unreachable or slow.
func (c Code) Retryable() bool {
	r, _ := c.info()
	return r.Retryable
}

// Exit returns the CLI's exit status for the code (1, internal's, for an
// unknown one).
func (c Code) Exit() int {
	if r, ok := c.info(); ok {
		return r.Exit
	}
	return 1
}

// Phrase returns the end of the manager's message for the code.
func (c Code) Phrase() string {
	r, _ := c.info()
	return r.Phrase
}

// Sentinel returns the value errors.Is matches for the code.
func (c Code) Sentinel() error { return codeSentinel(c) }

// MarshalText encodes the code as its wire name.
func (c Code) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

// UnmarshalText decodes a wire name; unknown names are an error.
func (c *Code) UnmarshalText(b []byte) error {
	p, ok := ParseCode(string(b))
	if !ok {
		return fmt.Errorf("unknown error code %q", b)
	}
	*c = p
	return nil
}

// ParseCode returns the code with the given wire name.
func ParseCode(s string) (Code, bool) {
	for _, r := range codeTable {
		if r.Name == s {
			return r.Code, true
		}
	}
	return 0, false
}

// codeSentinel is the value errors.Is matches against for a code.
type codeSentinel Code

func (s codeSentinel) Error() string { return Code(s).String() }

// Sentinels, one per code: errors.Is(err, drivers.ErrNotFound) holds for
// every *Error with code NotFound, however deeply wrapped.
var (
	ErrInternal         error = codeSentinel(Internal)
	ErrInvalidArgument  error = codeSentinel(InvalidArgument)
	ErrPermissionDenied error = codeSentinel(PermissionDenied)
	ErrNotFound         error = codeSentinel(NotFound)
	ErrAlreadyExists    error = codeSentinel(AlreadyExists)
	ErrConflict         error = codeSentinel(Conflict)
	ErrExited           error = codeSentinel(Exited)
	ErrUnsupported      error = codeSentinel(Unsupported)
	ErrUnavailable      error = codeSentinel(Unavailable)
	ErrTimeout          error = codeSentinel(Timeout)
)

// Error is a classified error. It unwraps to both its cause and the
// sentinel of its code, so errors.Is(err, ErrNotFound) and
// errors.As(err, &nativeErr) both work on the same value.
type Error struct {
	Code    Code
	Message string // human-readable, names the field/instance where it can
	// Detail is the substrate's own account of the error, kept when
	// Message is the manager's shape for the code (`instance "web" not
	// found`). When set, Error() shows it instead of the cause's text.
	Detail string
	Err    error // the cause, may be nil
}

func (e *Error) Error() string {
	switch {
	case e.Message != "" && e.Detail != "":
		return e.Message + ": " + e.Detail
	case e.Message != "" && e.Err != nil:
		return e.Message + ": " + e.Err.Error()
	case e.Message != "":
		return e.Message
	case e.Err != nil:
		return e.Err.Error()
	}
	return e.Code.String()
}

// Unwrap returns the cause and the code's sentinel.
func (e *Error) Unwrap() []error {
	if e.Err == nil {
		return []error{codeSentinel(e.Code)}
	}
	return []error{e.Err, codeSentinel(e.Code)}
}

// Errorf returns an *Error with the given code and formatted message.
// A %w verb keeps the wrapped error as the cause.
func Errorf(code Code, format string, args ...any) error {
	msg := fmt.Errorf(format, args...)
	return &Error{Code: code, Message: msg.Error(), Err: errors.Unwrap(msg)}
}

// Wrap classifies err with code, keeping it as the cause. A nil err gives nil.
func Wrap(code Code, err error, msg string) error {
	if err == nil {
		return nil
	}
	return &Error{Code: code, Message: msg, Err: err}
}

// Unsupportedf is the error a driver returns for an operation its substrate cannot do.
func Unsupportedf(format string, args ...any) error { return Errorf(Unsupported, format, args...) }

// CodeOf returns the code of err: the code of the outermost *Error in its
// chain, Timeout for context errors, Internal for anything else; 0 for nil.
func CodeOf(err error) Code {
	if err == nil {
		return 0
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	var s codeSentinel
	if errors.As(err, &s) {
		return Code(s)
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return Timeout
	}
	return Internal
}

// IsClassified reports whether err already carries a code.
func IsClassified(err error) bool {
	var e *Error
	var s codeSentinel
	return errors.As(err, &e) || errors.As(err, &s)
}

// ErrorCoder is the classifying half of a Driver: ErrorCode maps the
// driver's native errors to codes.
type ErrorCoder interface {
	ErrorCode(err error) Code
}

// ClassifyWith returns Classify bound to a driver's native classifier,
// for code inside the driver that branches on a code (and its tests).
func ClassifyWith(errorCode func(error) Code) func(error) Code {
	return func(err error) Code { return Classify(ErrorCoderFunc(errorCode), err) }
}

// ErrorCoderFunc adapts a function to ErrorCoder.
type ErrorCoderFunc func(err error) Code

// ErrorCode calls f.
func (f ErrorCoderFunc) ErrorCode(err error) Code { return f(err) }

// Classify returns the code of an error a driver returned, the way the
// manager classifies it: 0 for nil; the code of an *Error (or code
// sentinel) in the chain, for errors built with Errorf; Timeout for
// context errors; otherwise what the driver's ErrorCode says about the
// native error. Drivers use it where they branch on a code; tests use it
// to check codes of direct driver calls.
func Classify(c ErrorCoder, err error) Code {
	switch {
	case err == nil:
		return 0
	case IsClassified(err):
		return CodeOf(err)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return Timeout
	}
	return c.ErrorCode(err)
}
