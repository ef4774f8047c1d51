// Package clitest runs subbus end to end in tests, as a user would: a
// real nats-server embedded in the test (random loopback port, JetStream
// in a temporary directory), a real worker serving the managers the test
// gives it, and the subbus CLI run in-process.
//
//	url := clitest.StartNATS(t)
//	clitest.StartWorker(t, url, "h1", manager.New(myDriver, manager.Options{Host: "h1"}))
//	r := clitest.Subbus(t, url, "docker", "list", "--json").Want(t, 0, "list")
//
// StartFleet bundles these for a driver's end-to-end tests (fleet.go).
package clitest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/subbus/subbus/internal/cli"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/internal/worker"
	"github.com/subbus/subbus/internal/worker/workertest"
)

// Isolate is workertest.Isolate, for tests that drive the CLI.
func Isolate(t testing.TB) {
	t.Helper()
	workertest.Isolate(t)
}

// StartNATS is workertest.StartNATS, for tests that drive the CLI.
func StartNATS(t testing.TB) string {
	t.Helper()
	return workertest.StartNATS(t)
}

// StartWorker is workertest.StartWorker, for tests that drive the CLI.
func StartWorker(t testing.TB, url, host string, mgrs ...*manager.Manager) *worker.Worker {
	t.Helper()
	return workertest.StartWorker(t, url, host, mgrs...)
}

// Result is what one subbus run printed and its exit status.
type Result struct {
	Stdout, Stderr string
	Code           int
}

// Subbus runs `subbus --server url args...` in-process (at most 5 minutes).
func Subbus(t testing.TB, url string, args ...string) Result {
	t.Helper()
	return SubbusWithin(t, 5*time.Minute, url, args...)
}

// SubbusWithin is Subbus with its own time limit: the run's context is
// cancelled once limit has passed.
func SubbusWithin(t testing.TB, limit time.Duration, url string, args ...string) Result {
	t.Helper()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	code := cli.Run(ctx, append([]string{"--server", url}, args...), &out, &errOut)
	return Result{Stdout: out.String(), Stderr: errOut.String(), Code: code}
}

// Want fails the test unless the run exited with code.
func (r Result) Want(t testing.TB, code int, what string) Result {
	t.Helper()
	if r.Code != code {
		t.Fatalf("%s: subbus exited %d, want %d\nstdout: %s\nstderr: %s", what, r.Code, code, r.Stdout, r.Stderr)
	}
	return r
}

// Expect is Want that lets the test go on: it reports an error (t.Errorf)
// unless the run exited with code.
func (r Result) Expect(t testing.TB, code int, what string) Result {
	t.Helper()
	if r.Code != code {
		t.Errorf("%s: subbus exited %d, want %d\nstdout: %s\nstderr: %s", what, r.Code, code, r.Stdout, r.Stderr)
	}
	return r
}

// Unique returns prefix plus a random suffix, for names that must not
// collide between test runs.
func Unique(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

// RunUntil runs a subbus command that does not end by itself (logs
// --follow, metrics --watch) until enough(stdout) returns nil — polled,
// for at most limit — then interrupts it as a user's Ctrl-C would (its
// context ends) and returns what it printed and its exit status. It fails
// t when the command ends by itself first, when enough is not met within
// limit (with enough's last error), or when the command does not stop
// within 15 s of the interrupt.
func RunUntil(t testing.TB, url string, limit time.Duration, enough func(stdout string) error, args ...string) Result {
	t.Helper()
	var out, errOut lockedBuffer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan int, 1)
	go func() { done <- cli.Run(ctx, append([]string{"--server", url}, args...), &out, &errOut) }()
	testenv.Eventually(t, limit, func() error {
		select {
		case code := <-done:
			done <- code
			t.Fatalf("subbus %s ended by itself (exit %d): %s", strings.Join(args, " "), code, errOut.String())
		default:
		}
		return enough(out.String())
	})
	cancel()
	select {
	case code := <-done:
		return Result{Stdout: out.String(), Stderr: errOut.String(), Code: code}
	case <-time.After(15 * time.Second):
		t.Fatalf("subbus %s did not stop within 15s of being interrupted", strings.Join(args, " "))
		return Result{}
	}
}

// lockedBuffer is a bytes.Buffer the CLI writes to while the test reads.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
