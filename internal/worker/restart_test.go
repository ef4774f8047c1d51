package worker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/messages"
)

// freePort returns a loopback port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestEventsSurviveNATSRestart stops the NATS server in the middle of a
// run of operations and starts it again on the same port and store: every
// event emitted (through the bus before and after, and directly on the
// manager while NATS is down) is stored exactly once.
func TestEventsSurviveNATSRestart(t *testing.T) {
	port, dir := freePort(t), t.TempDir()
	s := startNATSAt(t, port, dir)
	d := newToy()
	m := toyManager(d)
	var rec eventRecorder
	m.Subscribe(rec.record)
	startWorker(t, s, []*manager.Manager{m}, nil)
	url := s.ClientURL()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)

	// A run of operations through the bus, retried until answered.
	var n atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			name := fmt.Sprintf("bus%d", i)
			body := messages.CreateRequest{Template: messages.Template{Name: name, BaseImage: "x"}}
			hdr := map[string]string{messages.HeaderIdempotencyKey: name}
			for {
				if _, err := callErr(nc, subj("toy", messages.OpCreate), body, hdr, time.Second); err == nil {
					break
				}
				select {
				case <-stop:
					return
				case <-time.After(50 * time.Millisecond):
				}
			}
			n.Add(1)
		}
	}()
	testenv.Eventually(t, 10*time.Second, func() error {
		if n.Load() < 5 {
			return fmt.Errorf("%d operations so far", n.Load())
		}
		return nil
	})

	s.Shutdown()
	s.WaitForShutdown()
	// While NATS is down, operations still happen on the host.
	ctx := context.Background()
	for i := range 20 {
		name := fmt.Sprintf("offline%d", i)
		if _, err := m.Create(ctx, drivers.InstanceTemplate{Name: name, BaseImage: "x"}); err != nil {
			t.Fatal(err)
		}
		if _, err := m.Start(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	before := n.Load()
	startNATSAt(t, port, dir)
	testenv.Eventually(t, 20*time.Second, func() error {
		if n.Load() < before+5 {
			return fmt.Errorf("%d operations after the restart", n.Load()-before)
		}
		return nil
	})
	close(stop)
	wg.Wait()
	if len(rec.all()) < 45 {
		t.Fatalf("only %d events emitted", len(rec.all()))
	}
	waitEventsStored(t, nc, rec.all())
}

// TestWorkerStartsBeforeNATS: a worker whose NATS server is not up yet
// keeps trying, and serves (and publishes the events it queued) once the
// server appears.
func TestWorkerStartsBeforeNATS(t *testing.T) {
	port, dir := freePort(t), t.TempDir()
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	d := newToy()
	m := toyManager(d)
	var rec eventRecorder
	m.Subscribe(rec.record)
	w, err := New(context.Background(), Options{Host: "h1", Managers: []*manager.Manager{m}, ManageStreams: true, Logger: testLogger(t),
		Connect: func(extra ...nats.Option) (*nats.Conn, error) { return nats.Connect(url, extra...) }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	// Run subscribes to the manager before connecting it.
	testenv.Eventually(t, 10*time.Second, func() error {
		if !m.IsConnected() {
			return errors.New("driver not connected yet")
		}
		return nil
	})
	// Operations happen on the host before NATS exists.
	if _, err := m.Create(context.Background(), drivers.InstanceTemplate{Name: "early", BaseImage: "x"}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // the worker retries meanwhile
	startNATSAt(t, port, dir)
	select {
	case <-w.Ready():
	case <-time.After(20 * time.Second):
		t.Fatal("worker not ready after the server started")
	}
	nc := connect(t, url)
	ok(t, nc, subj("toy", messages.OpGet), messages.NameRequest{Name: "early"}, nil)
	waitEventsStored(t, nc, rec.all())
}
