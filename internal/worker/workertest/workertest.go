// Package workertest runs the pieces of a subbus deployment inside a test:
// a real nats-server (random loopback port, JetStream in a temporary
// directory) and a real worker serving the managers the test gives it.
// internal/cli/clitest builds on it to run the CLI as a user would.
package workertest

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/worker"
)

// Isolate keeps the user's NATS environment variables and nats contexts
// out of the test (it uses t.Setenv, so the test must not be parallel).
func Isolate(t testing.TB) {
	t.Helper()
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	for _, k := range []string{"NATS_URL", "NATS_CREDS", "NATS_NKEY", "NATS_USER", "NATS_PASSWORD", "NATS_TOKEN",
		"NATS_CERT", "NATS_KEY", "NATS_CA", "NATS_CONTEXT", "NATS_INBOX_PREFIX"} {
		t.Setenv(k, "")
	}
}

// StartNATS starts a nats-server with JetStream on a random loopback port,
// stopped at the end of the test, and returns its URL.
func StartNATS(t testing.TB) string {
	t.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		JetStreamMaxMemory: 64 << 20, JetStreamMaxStore: 1 << 30, NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s.ClientURL()
}

// StartWorker runs a worker for host connected to url, serving mgrs (not
// yet connected; the worker connects them), until the end of the test.
// It returns once the worker serves requests.
func StartWorker(t testing.TB, url, host string, mgrs ...*manager.Manager) *worker.Worker {
	t.Helper()
	return StartWorkerWith(t, url, host, nil, mgrs...)
}

// StartWorkerWith is StartWorker with adjust applied to the worker's
// options (when not nil) before the worker is built.
func StartWorkerWith(t testing.TB, url, host string, adjust func(*worker.Options), mgrs ...*manager.Manager) *worker.Worker {
	t.Helper()
	opts := worker.Options{
		Host:          host,
		Managers:      mgrs,
		ManageStreams: true,
		Connect:       func(extra ...nats.Option) (*nats.Conn, error) { return nats.Connect(url, extra...) },
		Logger:        zerolog.Nop(),
		Version:       "0.0.1-test",
	}
	if adjust != nil {
		adjust(&opts)
	}
	w, err := worker.New(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	select {
	case <-w.Ready():
	case err := <-done:
		cancel()
		t.Fatalf("worker stopped: %v", err)
	case <-time.After(60 * time.Second):
		cancel()
		t.Fatal("worker not ready within 60s")
	}
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(90 * time.Second):
			t.Error("worker did not stop within 90s")
		}
	})
	return w
}
