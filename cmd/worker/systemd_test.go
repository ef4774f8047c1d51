package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSystemdNotifyAndPrometheusFlag runs the binary as systemd runs a
// Type=notify unit (NOTIFY_SOCKET set to a datagram socket the test
// listens on) with --prometheus-listen: it reports READY=1 once it serves,
// serves /metrics on that address, and reports STOPPING=1 on SIGTERM.
func TestSystemdNotifyAndPrometheusFlag(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var seen []string
	// await reads datagrams until one holds want.
	await := func(want string) {
		t.Helper()
		buf := make([]byte, 4096)
		for {
			_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
			n, err := conn.Read(buf)
			if err != nil {
				t.Fatalf("no %q from the worker (got %q): %v", want, seen, err)
			}
			seen = append(seen, string(buf[:n]))
			if strings.Contains("\n"+string(buf[:n])+"\n", "\n"+want+"\n") {
				return
			}
		}
	}

	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	r := startBinary(t, "sdtest", "", []string{"NOTIFY_SOCKET=" + sock}, "--prometheus-listen", addr)
	await("READY=1")
	if !strings.Contains(seen[len(seen)-1], "STATUS=serving host sdtest, drivers process") {
		t.Errorf("READY datagram %q lacks the serving status", seen[len(seen)-1])
	}

	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`subbus_worker_info{embedded_nats="true",host="sdtest",version=`,
		"subbus_worker_ready 1",
		`subbus_operations_total{driver="process",op="list"}`,
		"subbus_nats_connected 1",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	await("STOPPING=1")
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("exit: %v\n%s", err, r.logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("worker did not exit after SIGTERM\n%s", r.logs.String())
	}
}
