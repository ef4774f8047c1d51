package sdnotify_test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/sdnotify"
)

// fakeSystemd listens like systemd does on a datagram socket and returns
// its address for NOTIFY_SOCKET and a function reading one datagram.
func fakeSystemd(t *testing.T, abstract bool) (string, func() string) {
	t.Helper()
	name := filepath.Join(t.TempDir(), "notify")
	if abstract {
		name = fmt.Sprintf("@dp-sdnotify-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return name, func() string {
		buf := make([]byte, 4096)
		if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
			t.Fatal(err)
		}
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("no datagram received: %v", err)
		}
		return string(buf[:n])
	}
}

func TestNotify(t *testing.T) {
	for _, abstract := range []bool{false, true} {
		t.Run(fmt.Sprintf("abstract=%v", abstract), func(t *testing.T) {
			sock, read := fakeSystemd(t, abstract)
			t.Setenv("NOTIFY_SOCKET", sock)
			sent, err := sdnotify.Notify(sdnotify.Ready, sdnotify.Status("serving h1\nprocess"))
			if err != nil || !sent {
				t.Fatalf("Notify = %v, %v; want true, nil", sent, err)
			}
			if got, want := read(), "READY=1\nSTATUS=serving h1 process"; got != want {
				t.Fatalf("datagram %q, want %q", got, want)
			}
		})
	}
}

func TestNotifyErrors(t *testing.T) {
	sock, _ := fakeSystemd(t, false)
	for _, tc := range []struct {
		name, socket string
		assignments  []string
		sent         bool
		err          string // substring; "" means no error
	}{
		{name: "unset is a no-op", socket: "", assignments: []string{sdnotify.Ready}},
		{name: "relative path", socket: "run/notify", assignments: []string{sdnotify.Ready}, err: "neither an absolute path"},
		{name: "no listener", socket: filepath.Join(t.TempDir(), "missing"), assignments: []string{sdnotify.Ready}, err: "no such file"},
		{name: "not an assignment", socket: sock, assignments: []string{"READY"}, err: "not one KEY=VALUE"},
		{name: "embedded newline", socket: sock, assignments: []string{"READY=1\nSTOPPING=1"}, err: "not one KEY=VALUE"},
		{name: "nothing", socket: sock, err: "nothing to send"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("NOTIFY_SOCKET", tc.socket)
			sent, err := sdnotify.Notify(tc.assignments...)
			if sent != tc.sent {
				t.Errorf("sent = %v, want %v", sent, tc.sent)
			}
			switch {
			case tc.err == "" && err != nil:
				t.Errorf("err = %v, want nil", err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Errorf("err = %v, want one containing %q", err, tc.err)
			}
		})
	}
}
