package supervisor

import (
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"syscall"

	"github.com/subbus/subbus/internal/drivers"
)

// Supervisor's fault codes (supervisor/xmlrpc.py, 4.2.5).
const (
	faultUnknownMethod        = 1
	faultIncorrectParameters  = 2
	faultBadArguments         = 3
	faultSignatureUnsupported = 4
	faultShutdownState        = 6
	faultBadName              = 10
	faultBadSignal            = 11
	faultNoFile               = 20
	faultNotExecutable        = 21
	faultFailed               = 30
	faultAbnormalTermination  = 40
	faultSpawnError           = 50
	faultAlreadyStarted       = 60
	faultNotRunning           = 70
	faultAlreadyAdded         = 90
	faultStillRunning         = 91
	faultCantReread           = 92
)

// faultError is a supervisor XML-RPC fault.
type faultError struct {
	method string
	code   int
	msg    string
}

func (e *faultError) Error() string {
	return fmt.Sprintf("supervisord: %s: fault %d %s", e.method, e.code, e.msg)
}

// isFault reports whether err is a supervisor fault with the given code.
func isFault(err error, code int) bool {
	var f *faultError
	return errors.As(err, &f) && f.code == code
}

// httpError is a non-200 HTTP answer (401 for bad credentials).
type httpError struct {
	method string
	status int
	body   string
}

func (e *httpError) Error() string {
	return fmt.Sprintf("supervisord: %s: HTTP %d %s", e.method, e.status, e.body)
}

// connError is a failure to reach supervisord at all.
type connError struct {
	target string
	method string
	err    error
}

func (e *connError) Error() string {
	return fmt.Sprintf("supervisord at %s is unreachable (%s): %v", e.target, e.method, e.err)
}

func (e *connError) Unwrap() error { return e.err }

// ErrorCode classifies an error this driver returned: the one place
// supervisor's faults and transport failures map to the contract's codes.
func (d *Driver) ErrorCode(err error) drivers.Code { return errorCode(err) }

var classify = drivers.ClassifyWith(errorCode)

func errorCode(err error) drivers.Code {
	var f *faultError
	if errors.As(err, &f) {
		switch f.code {
		case faultBadName:
			return drivers.NotFound
		case faultNoFile:
			return drivers.NotFound // the program's command or log file does not exist
		case faultNotExecutable, faultBadSignal, faultBadArguments:
			return drivers.InvalidArgument
		case faultAlreadyAdded:
			return drivers.AlreadyExists
		case faultAlreadyStarted, faultNotRunning, faultStillRunning:
			return drivers.Conflict
		case faultShutdownState:
			return drivers.Unavailable
		case faultUnknownMethod, faultSignatureUnsupported:
			return drivers.Unsupported
		case faultCantReread, faultSpawnError, faultAbnormalTermination, faultFailed, faultIncorrectParameters:
			return drivers.Internal
		}
		return drivers.Internal
	}
	var h *httpError
	if errors.As(err, &h) {
		switch h.status {
		case http.StatusUnauthorized, http.StatusForbidden:
			return drivers.PermissionDenied
		case http.StatusNotFound:
			return drivers.Unavailable // no RPC interface at that URL
		case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			return drivers.Unavailable
		}
		return drivers.Internal
	}
	var c *connError
	if errors.As(err, &c) {
		if errors.Is(err, os.ErrPermission) || errors.Is(err, syscall.EACCES) {
			return drivers.PermissionDenied
		}
		// Refused, socket missing, reset, EOF mid-reply: supervisord is
		// down or restarting.
		return drivers.Unavailable
	}
	// Local file and command errors (program files, commands looked up
	// before supervisord sees them).
	switch {
	case errors.Is(err, os.ErrPermission):
		return drivers.PermissionDenied
	case errors.Is(err, exec.ErrNotFound), errors.Is(err, fs.ErrNotExist):
		return drivers.NotFound
	case errors.Is(err, fs.ErrExist):
		return drivers.AlreadyExists
	}
	return drivers.Internal
}
