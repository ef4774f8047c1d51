package libvirt

import (
	"errors"
	"io"
	"net"
	"strings"
	"syscall"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/subbus/subbus/internal/drivers"
)

var (
	errNotConnected   = errors.New("not connected")
	errConnectionLost = errors.New("the connection to libvirtd was lost")
)

// connError is a failure to reach libvirtd (dial, or a lost connection).
type connError struct {
	uri string
	err error
}

func (e *connError) Error() string { return "libvirt " + e.uri + ": " + e.err.Error() }
func (e *connError) Unwrap() error { return e.err }

// agentError is a guest-agent command that ran but failed inside the
// guest ({"error":{"class":…,"desc":…}}).
type agentError struct {
	Class string
	Desc  string
}

func (e *agentError) Error() string { return "guest agent: " + e.Class + ": " + e.Desc }

// ErrorCode is the one place libvirt's native errors map to codes:
// libvirt's own error numbers first, then go-libvirt's and the
// transport's errors.
func (d *Driver) ErrorCode(err error) drivers.Code { return errorCode(err) }

// classify is drivers.Classify with this driver's ErrorCode, for the places
// that branch on a code.
var classify = drivers.ClassifyWith(errorCode)

func errorCode(err error) drivers.Code {
	var le golibvirt.Error
	if errors.As(err, &le) {
		return libvirtCode(le)
	}
	var lep *golibvirt.Error
	if errors.As(err, &lep) && lep != nil {
		return libvirtCode(*lep)
	}
	var ae *agentError
	if errors.As(err, &ae) {
		return drivers.Internal
	}
	if errors.Is(err, golibvirt.ErrUnsupported) {
		return drivers.Unsupported
	}
	var ce *connError
	if errors.As(err, &ce) || errors.Is(err, golibvirt.ErrInterrupted) {
		return drivers.Unavailable
	}
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) ||
		errors.Is(err, net.ErrClosed) {
		return drivers.Unavailable
	}
	return drivers.Internal
}

// libvirtCode classifies one of libvirt's virErrorNumber values.
func libvirtCode(e golibvirt.Error) drivers.Code {
	switch golibvirt.ErrorNumber(e.Code) {
	case golibvirt.ErrNoDomain, golibvirt.ErrNoNetwork, golibvirt.ErrNoStoragePool, golibvirt.ErrNoStorageVol,
		golibvirt.ErrNoDomainSnapshot, golibvirt.ErrNoSecret, golibvirt.ErrNoInterface, golibvirt.ErrNoNodeDevice,
		golibvirt.ErrDeviceMissing, golibvirt.ErrNoNetworkPort, golibvirt.ErrNoDomainCheckpoint, golibvirt.ErrNoNwfilter:
		return drivers.NotFound
	case golibvirt.ErrDomExist, golibvirt.ErrStorageVolExist:
		return drivers.AlreadyExists
	case golibvirt.ErrOperationInvalid, golibvirt.ErrResourceBusy, golibvirt.ErrSnapshotRevertRisky:
		switch {
		case strings.Contains(e.Message, "already exists"):
			return drivers.AlreadyExists
		case strings.Contains(e.Message, "cgroup") && strings.Contains(e.Message, "controller"):
			return drivers.Unsupported // e.g. a cpu quota without the cgroup cpu controller
		}
		return drivers.Conflict
	case golibvirt.ErrNoSupport, golibvirt.ErrOperationUnsupported, golibvirt.ErrArgumentUnsupported,
		golibvirt.ErrConfigUnsupported:
		if strings.Contains(e.Message, "already exists") {
			return drivers.AlreadyExists
		}
		return drivers.Unsupported
	case golibvirt.ErrInvalidArg, golibvirt.ErrXMLError, golibvirt.ErrInvalidDomainSnapshot:
		if strings.Contains(e.Message, "already exists") {
			return drivers.AlreadyExists
		}
		return drivers.InvalidArgument
	case golibvirt.ErrAuthFailed, golibvirt.ErrAuthCancelled, golibvirt.ErrAuthUnavailable,
		golibvirt.ErrAccessDenied, golibvirt.ErrOperationDenied:
		return drivers.PermissionDenied
	case golibvirt.ErrOperationTimeout:
		return drivers.Timeout
	case golibvirt.ErrAgentUnresponsive, golibvirt.ErrAgentUnsynced:
		// The guest agent of one domain is not connected (not installed,
		// not started yet) or hangs: a state of that instance, not an
		// unreachable substrate (Unavailable would open the breaker for
		// every instance).
		return drivers.Conflict
	case golibvirt.ErrNoClient, golibvirt.ErrNoServer, golibvirt.ErrRPC, golibvirt.ErrInvalidConn:
		return drivers.Unavailable
	case golibvirt.ErrOperationFailed, golibvirt.ErrInternalError:
		if strings.Contains(e.Message, "already exists") {
			return drivers.AlreadyExists
		}
	}
	return drivers.Internal
}
