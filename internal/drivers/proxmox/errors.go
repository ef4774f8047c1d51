package proxmox

import (
	"context"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"syscall"

	gp "github.com/luthermonson/go-proxmox"

	"github.com/subbus/subbus/internal/drivers"
)

// ErrorCode is the one place PVE errors map to codes: the driver's own
// lookup errors, then failed tasks (by their exitstatus text), then API
// errors (by status, then message), then transport failures. It sees
// native errors only (drivers.Classify handles drivers.Errorf's codes).
func (d *Driver) ErrorCode(err error) drivers.Code { return errorCode(err) }

// classify is the manager's classification, for code in the driver that
// branches on a code.
var classify = drivers.ClassifyWith(errorCode)

func errorCode(err error) drivers.Code {
	var (
		noGuest   *errNoGuest
		ambiguous *errAmbiguous
		taken     *errNameTaken
		snapTaken *errSnapTaken
		noNet     *errNoNetwork
		noImage   *errNoImage
		cert      *certError
		tfe       *gp.TaskFailedError
		apiErr    *gp.APIError
		unknownCA x509.UnknownAuthorityError
		hostErr   x509.HostnameError
		invalid   x509.CertificateInvalidError
	)
	switch {
	case errors.As(err, &noGuest):
		return drivers.NotFound
	case errors.As(err, &ambiguous):
		return drivers.Conflict
	case errors.As(err, &taken), errors.As(err, &snapTaken):
		return drivers.AlreadyExists
	case errors.As(err, &noNet), errors.As(err, &noImage):
		return drivers.NotFound
	case errors.As(err, &tfe):
		if c, ok := messageCode(tfe.ExitStatus); ok {
			return c
		}
		return drivers.Internal
	case errors.As(err, &apiErr):
		return apiCode(apiErr)
	case errors.Is(err, gp.ErrTimeout), errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return drivers.Timeout
	case errors.As(err, &cert), errors.As(err, &unknownCA), errors.As(err, &hostErr), errors.As(err, &invalid):
		// The server is not the one configured: retrying cannot help.
		return drivers.PermissionDenied
	}
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return drivers.Unavailable
	}
	return drivers.Internal
}

// apiCode classifies a non-2xx answer.
func apiCode(e *gp.APIError) drivers.Code {
	switch e.StatusCode {
	case http.StatusUnauthorized, http.StatusForbidden:
		return drivers.PermissionDenied
	case http.StatusNotFound:
		return drivers.NotFound
	case http.StatusNotImplemented:
		return drivers.Unsupported // this PVE has no such API
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout,
		gp.StatusNodeConnectFailed, gp.StatusNodeRequestFailed, http.StatusTooManyRequests:
		return drivers.Unavailable
	case http.StatusBadRequest:
		for _, m := range e.Errors {
			if c, ok := messageCode(m); ok && c != drivers.Internal {
				return c
			}
		}
		return drivers.InvalidArgument
	}
	if c, ok := messageCode(e.Message); ok {
		return c
	}
	if e.StatusCode >= 500 {
		return drivers.Internal
	}
	return drivers.InvalidArgument
}

// messageCodes classify PVE's error texts (task exitstatus, status line,
// parameter errors). The first match wins.
var messageCodes = []struct {
	re   *regexp.Regexp
	code drivers.Code
}{
	// "VM is locked (snapshot)", "CT is locked (backup)", the config file
	// lock's "can't lock file '…' - got timeout".
	{regexp.MustCompile(`(?i)\bis locked\b|can't lock file`), drivers.Conflict},
	{regexp.MustCompile(`(?i)already (running|exists|used)|already a template`), drivers.AlreadyExists},
	{regexp.MustCompile(`(?i)\bnot running\b|\bis (paused|running)\b|is a template|guest agent is not running|no qemu guest agent configured`), drivers.Conflict},
	{regexp.MustCompile(`(?i)permission check failed|authentication failed|no ticket`), drivers.PermissionDenied},
	{regexp.MustCompile(`(?i)\bdoes not exists?\b|\bno such (guest|vm|ct|snapshot|task|storage|bridge|volume|node|template)\b|\bnot found\b|unable to find configuration file`), drivers.NotFound},
	{regexp.MustCompile(`(?i)got timeout|timed out`), drivers.Timeout},
}

// messageCode classifies an error text.
func messageCode(msg string) (drivers.Code, bool) {
	m := strings.TrimSpace(msg)
	if m == "" {
		return 0, false
	}
	for _, mc := range messageCodes {
		if mc.re.MatchString(m) {
			if mc.code == drivers.AlreadyExists && strings.Contains(strings.ToLower(m), "already running") {
				// Starting a running guest: the state is wrong, nothing exists twice.
				return drivers.Conflict, true
			}
			return mc.code, true
		}
	}
	return 0, false
}

// taskText returns the exitstatus of a failed task in err's chain ("" if none).
func taskText(err error) string {
	var tfe *gp.TaskFailedError
	if errors.As(err, &tfe) {
		return tfe.ExitStatus
	}
	return ""
}

// isAlreadyRunning reports a start that found the guest running.
func isAlreadyRunning(err error) bool {
	return err != nil && strings.Contains(strings.ToLower(err.Error()), "already running")
}
