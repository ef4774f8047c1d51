// Package sdnotify implements the sender side of systemd's service
// notification protocol (sd_notify(3)): newline-separated KEY=VALUE
// assignments sent as one datagram to the AF_UNIX socket named by
// $NOTIFY_SOCKET. A unit with Type=notify is "started" when the service
// sends READY=1. No library is needed: the protocol is one datagram.
package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
)

// Common assignments (sd_notify(3)).
const (
	Ready    = "READY=1"
	Stopping = "STOPPING=1"
)

// Status returns the STATUS= assignment shown by `systemctl status`.
func Status(s string) string {
	return "STATUS=" + strings.ReplaceAll(s, "\n", " ")
}

// Notify sends the assignments to $NOTIFY_SOCKET as one datagram. It
// reports false, nil when NOTIFY_SOCKET is unset (not started by systemd
// with Type=notify: nothing to do). A name starting with '@' is a Linux
// abstract socket. Only absolute paths and abstract names are accepted,
// as in systemd's own implementation.
func Notify(assignments ...string) (bool, error) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return false, nil
	}
	if path[0] != '/' && path[0] != '@' {
		return false, fmt.Errorf("NOTIFY_SOCKET %q is neither an absolute path nor an abstract socket", path)
	}
	if len(assignments) == 0 {
		return false, errors.New("sdnotify: nothing to send")
	}
	for _, a := range assignments {
		if !strings.Contains(a, "=") || strings.Contains(a, "\n") {
			return false, fmt.Errorf("sdnotify: %q is not one KEY=VALUE assignment", a)
		}
	}
	// Go maps a leading '@' to the abstract namespace itself.
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return false, fmt.Errorf("sdnotify: %w", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(strings.Join(assignments, "\n"))); err != nil {
		return false, fmt.Errorf("sdnotify: %w", err)
	}
	return true, nil
}
