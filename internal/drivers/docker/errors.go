package docker

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"syscall"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/client"

	"github.com/subbus/subbus/internal/drivers"
)

// ErrorCode implements drivers.Driver: the one place Docker errors map to
// codes. The client turns HTTP statuses into errdefs classes (404
// NotFound, 409 Conflict, 400 InvalidArgument, …); a daemon that cannot be
// reached is Unavailable; a context that ended is Timeout.
func (d *Driver) ErrorCode(err error) drivers.Code { return codeOf(err) }

var classify = drivers.ClassifyWith(codeOf)

func codeOf(err error) drivers.Code {
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled), cerrdefs.IsDeadlineExceeded(err), cerrdefs.IsCanceled(err):
		return drivers.Timeout
	case client.IsErrConnectionFailed(err), cerrdefs.IsUnavailable(err), isNetErr(err):
		return drivers.Unavailable
	case cerrdefs.IsNotFound(err):
		return drivers.NotFound
	case cerrdefs.IsAlreadyExists(err):
		return drivers.AlreadyExists
	case cerrdefs.IsConflict(err), cerrdefs.IsFailedPrecondition(err):
		return drivers.Conflict
	case cerrdefs.IsInvalidArgument(err):
		return drivers.InvalidArgument
	case cerrdefs.IsPermissionDenied(err), cerrdefs.IsUnauthorized(err):
		return drivers.PermissionDenied
	case cerrdefs.IsNotImplemented(err):
		return drivers.Unsupported
	}
	return drivers.Internal
}

func isNetErr(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) {
		return true
	}
	// A connection that dropped mid-answer (the daemon went away).
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return true
	}
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOENT)
}

// notModified reports a 304 (start of a running / stop of a stopped container).
func notModified(err error) bool { return err != nil && cerrdefs.IsNotModified(err) }
