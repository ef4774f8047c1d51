package lxc

import (
	"errors"
	"net"
	"strings"
	"syscall"

	"github.com/subbus/subbus/internal/drivers"
)

// ErrorCode is the one place LXD/Incus errors map to codes: REST error
// codes first, then the messages of failed operations (which carry no
// code), then transport failures.
func (d *Driver) ErrorCode(err error) drivers.Code { return errorCode(err) }

var classify = drivers.ClassifyWith(errorCode)

func errorCode(err error) drivers.Code {
	var ae *apiError
	if errors.As(err, &ae) {
		switch ae.Status {
		case 404:
			return drivers.NotFound
		case 409:
			return drivers.AlreadyExists
		case 401, 403:
			return drivers.PermissionDenied
		case 412:
			return drivers.Conflict // ETag mismatch: changed concurrently
		case 502, 503, 504:
			return drivers.Unavailable
		case 400:
			if c, ok := messageCode(ae.Msg); ok {
				return c
			}
			return drivers.InvalidArgument
		}
		if c, ok := messageCode(ae.Msg); ok {
			return c
		}
		return drivers.Internal
	}
	var oe *opError
	if errors.As(err, &oe) {
		if c, ok := messageCode(oe.Msg); ok {
			return c
		}
		return drivers.Internal
	}
	var ce *connError
	if errors.As(err, &ce) {
		return drivers.Unavailable
	}
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
		return drivers.Unavailable
	}
	return drivers.Internal
}

// messageCode classifies the message of a failed operation or a 400
// response, whose codes LXD does not distinguish.
func messageCode(msg string) (drivers.Code, bool) {
	m := strings.ToLower(msg)
	switch {
	case strings.Contains(m, "already exists"):
		return drivers.AlreadyExists, true
	case strings.Contains(m, "not found"):
		return drivers.NotFound, true
	case strings.Contains(m, "is running"), strings.Contains(m, "not running"),
		strings.Contains(m, "already running"), strings.Contains(m, "is frozen"),
		strings.Contains(m, "is busy"), strings.Contains(m, "already stopped"):
		return drivers.Conflict, true
	case strings.Contains(m, "permission denied"), strings.Contains(m, "not authorized"):
		return drivers.PermissionDenied, true
	}
	return 0, false
}
