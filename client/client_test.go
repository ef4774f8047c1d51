package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/messages"
)

// These tests run the client against a tiny stand-in service on a real
// embedded nats-server; the end-to-end tests against the real worker are
// in internal/cli.

func startNATS(t *testing.T) *nats.Conn {
	t.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true,
		JetStream: true, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(5 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// standIn serves substrate.test.h1.{get,start,sleep} and a streaming exec.
func standIn(t *testing.T, nc *nats.Conn, seen chan<- nats.Header) {
	t.Helper()
	svc, err := micro.AddService(nc, micro.Config{Name: messages.ServiceName, Version: "0.0.1",
		Metadata: map[string]string{MetaHost: "h1", MetaDrivers: "test,other",
			MetaCapabilities: `{"test":{"exec":true,"logs":true}}`}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	handle := func(op messages.Op, h micro.HandlerFunc) {
		if err := svc.AddEndpoint(string(op), h, micro.WithEndpointSubject(messages.RequestSubject("test", "h1", op))); err != nil {
			t.Fatal(err)
		}
	}
	handle(messages.OpGet, func(r micro.Request) {
		if seen != nil {
			seen <- nats.Header(r.Headers())
		}
		var req messages.NameRequest
		_ = json.Unmarshal(r.Data(), &req)
		id := r.Headers().Get(messages.HeaderRequestID)
		if req.Name != "web" {
			_ = r.Respond(messages.ErrorReply(id, "h1", drivers.Errorf(drivers.NotFound, "instance %q not found", req.Name)))
			return
		}
		_ = r.Respond(messages.ResultReply(id, "h1", messages.Instance{Name: "web", State: drivers.StateRunning}))
	})
	handle(messages.OpStart, func(r micro.Request) {
		if seen != nil {
			seen <- nats.Header(r.Headers())
		}
		_ = r.Respond(messages.ResultReply("", "h1", messages.ChangedResult{Changed: true}))
	})
	handle(messages.OpHealth, func(r micro.Request) {}) // never answers
	// The streaming exec: a plain subscription speaking the chunk protocol.
	_, err = nc.Subscribe(messages.RequestSubject("test", "h1", messages.OpExec), func(m *nats.Msg) {
		go func() {
			var req messages.ExecRequest
			_ = json.Unmarshal(m.Data, &req)
			n := len(req.Command)
			send := func(c messages.Chunk) error {
				b, _ := json.Marshal(c)
				_, err := nc.Request(m.Reply, b, 2*time.Second)
				return err
			}
			for i := 1; i <= n; i++ {
				if err := send(messages.Chunk{Seq: uint64(i), Stream: "stdout", Data: []byte(req.Command[i-1] + "\n")}); err != nil {
					stopped.Add(1)
					return
				}
				if i == 1 {
					_ = send(messages.Chunk{Seq: 1, Stream: "stdout", Data: []byte("duplicate\n")}) // a resend: skipped
					_ = send(messages.Chunk{Heartbeat: true})
				}
			}
			code := 7
			_ = send(messages.Chunk{Seq: uint64(n + 1), Final: true, ExitCode: &code})
		}()
	})
	if err != nil {
		t.Fatal(err)
	}
}

var stopped atomic.Int32

func TestDo(t *testing.T) {
	nc := startNATS(t)
	seen := make(chan nats.Header, 4)
	standIn(t, nc, seen)
	c := New(nc, 2*time.Second)
	ctx := context.Background()

	var inst messages.Instance
	if err := c.Do(WithRequestID(ctx, "req-1"), "test", "h1", messages.OpGet, messages.NameRequest{Name: "web"}, &inst); err != nil {
		t.Fatal(err)
	}
	if inst.Name != "web" || inst.State != drivers.StateRunning {
		t.Fatalf("result: %+v", inst)
	}
	h := <-seen
	if h.Get(messages.HeaderRequestID) != "req-1" || h.Get(messages.HeaderDeadline) == "" || h.Get(messages.HeaderIdempotencyKey) != "" {
		t.Fatalf("get headers: %v", h)
	}
	if err := c.Do(WithIdempotencyKey(ctx, "k1"), "test", "h1", messages.OpStart, messages.NameRequest{Name: "web"}, nil); err != nil {
		t.Fatal(err)
	}
	if h := <-seen; h.Get(messages.HeaderIdempotencyKey) != "k1" {
		t.Fatalf("start must carry the idempotency key: %v", h)
	}

	cases := []struct {
		name           string
		driver, host   string
		op             messages.Op
		want           error
		wantMsg        string
		wantNoWorker   bool
		wantTimeoutErr bool
	}{
		{"error reply keeps its code", "test", "h1", messages.OpGet, drivers.ErrNotFound, `instance "nope" not found`, false, false},
		{"no worker on host", "test", "h2", messages.OpGet, drivers.ErrUnavailable, "no worker serves test on host h2", true, false},
		{"no worker for driver", "docker", "", messages.OpGet, drivers.ErrUnavailable, "no worker serves docker", true, false},
		{"timeout", "test", "h1", messages.OpHealth, drivers.ErrTimeout, "timed out waiting for test on h1", false, true},
		{"hostile host", "test", "h1.>", messages.OpGet, drivers.ErrInvalidArgument, "host", false, false},
		{"reserved driver", "events", "", messages.OpGet, drivers.ErrInvalidArgument, "reserved", false, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			defer cancel()
			err := c.Do(ctx, tc.driver, tc.host, tc.op, messages.NameRequest{Name: "nope"}, nil)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("err = %v, want %v containing %q", err, tc.want, tc.wantMsg)
			}
			var nw *NoWorkerError
			var te *TimeoutError
			if errors.As(err, &nw) != tc.wantNoWorker || errors.As(err, &te) != tc.wantTimeoutErr {
				t.Fatalf("err %T: no-worker %v timeout %v", err, tc.wantNoWorker, tc.wantTimeoutErr)
			}
		})
	}
}

func TestStream(t *testing.T) {
	nc := startNATS(t)
	standIn(t, nc, nil)
	c := New(nc, 2*time.Second)
	ctx := context.Background()

	var out strings.Builder
	var exit *int
	err := c.Stream(ctx, "test", "h1", messages.OpExec, messages.ExecRequest{Name: "web",
		Command: []string{"a", "b", "c"}, Stream: true},
		func(ch messages.Chunk) error {
			out.Write(ch.Data)
			if ch.Final {
				exit = ch.ExitCode
			}
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	if out.String() != "a\nb\nc\n" || exit == nil || *exit != 7 {
		t.Fatalf("output %q exit %v", out.String(), exit)
	}

	// Stopping early makes the stand-in's next chunk find no responder.
	before := stopped.Load()
	err = c.Stream(ctx, "test", "h1", messages.OpExec, messages.ExecRequest{Name: "web",
		Command: []string{"a", "b", "c", "d"}, Stream: true},
		func(ch messages.Chunk) error { return ErrStopStream })
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 3*time.Second, func() error {
		if stopped.Load() == before {
			return errors.New("the stand-in kept streaming after the client stopped")
		}
		return nil
	})

	err = c.Stream(ctx, "test", "nohost", messages.OpExec, messages.ExecRequest{}, func(messages.Chunk) error { return nil })
	var nw *NoWorkerError
	if !errors.As(err, &nw) || err.Error() != "no worker serves test on host nohost" {
		t.Fatalf("stream without worker: %v", err)
	}
}

func TestWorkers(t *testing.T) {
	nc := startNATS(t)
	c := New(nc, time.Second)
	ws, err := c.Workers(context.Background())
	if err != nil || len(ws) != 0 {
		t.Fatalf("no workers: %v %v", ws, err)
	}
	standIn(t, nc, nil)
	ws, err = c.Workers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(ws) != 1 || ws[0].Host != "h1" || ws[0].Version != "0.0.1" || fmt.Sprint(ws[0].Drivers) != "[other test]" ||
		!ws[0].Capabilities["test"].Exec {
		t.Fatalf("workers: %+v", ws)
	}
}

// TestWorkersExpecting: discovery that knows its hosts ends once they
// answered (plus the grace, which still catches others), and waits the
// usual quiet when an expected host never answers.
func TestWorkersExpecting(t *testing.T) {
	nc := startNATS(t)
	for _, h := range []string{"h1", "h2", "h3"} {
		svc, err := micro.AddService(nc, micro.Config{Name: messages.ServiceName, Version: "0.0.1",
			Metadata: map[string]string{MetaHost: h, MetaDrivers: "test"}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = svc.Stop() })
	}
	c := New(nc, time.Second)
	for _, tc := range []struct {
		expect []string
		quick  bool
	}{
		{[]string{"h1", "h2", "h3"}, true},
		{[]string{"h2"}, true}, // h1 and h3 answer within the grace
		{[]string{"h1", "h9"}, false},
		{nil, false}, // Workers
	} {
		t0 := time.Now()
		var ws []Worker
		var err error
		if tc.expect == nil {
			ws, err = c.Workers(context.Background())
		} else {
			ws, err = c.WorkersExpecting(context.Background(), tc.expect)
		}
		el := time.Since(t0)
		if err != nil || len(ws) != 3 {
			t.Errorf("expecting %v: %d workers (%v), want 3", tc.expect, len(ws), err)
		}
		for _, w := range ws {
			if w.Host == "" || w.Version != "0.0.1" || fmt.Sprint(w.Drivers) != "[test]" {
				t.Errorf("expecting %v: worker %+v", tc.expect, w)
			}
		}
		if quick := el < DiscoveryQuiet; quick != tc.quick {
			t.Errorf("expecting %v: took %v, want quicker than DiscoveryQuiet (%v): %v", tc.expect, el, DiscoveryQuiet, tc.quick)
		}
	}
}

func TestEvents(t *testing.T) {
	nc := startNATS(t)
	c := New(nc, 2*time.Second)
	ctx := context.Background()
	if err := c.Events(ctx, EventQuery{}, func(messages.CloudEvent) error { return nil }); !errors.Is(err, drivers.ErrNotFound) {
		t.Fatalf("missing stream: %v", err)
	}
	js, _ := jetstream.New(nc)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: messages.EventsStream,
		Subjects: []string{messages.SubjectRoot + "." + messages.EventsToken + ".>"}}); err != nil {
		t.Fatal(err)
	}
	publish := func(inst string, typ drivers.EventType, at time.Time) {
		e := messages.Event{ID: messages.NewRequestID(), Type: typ, Time: at, Driver: "test", Host: "h1", Instance: inst}
		b, _ := json.Marshal(messages.NewCloudEvent(e))
		if _, err := js.Publish(ctx, messages.EventSubject("test", "h1", inst, string(typ)), b); err != nil {
			t.Fatal(err)
		}
	}
	collect := func(q EventQuery) []string {
		var got []string
		if err := c.Events(ctx, q, func(e messages.CloudEvent) error {
			got = append(got, e.Subject+":"+string(e.Data.Type))
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := collect(EventQuery{}); len(got) != 0 {
		t.Fatalf("empty stream gave %v", got)
	}
	publish("web", drivers.EventCreated, time.Now())
	publish("db.1", drivers.EventCreated, time.Now())
	publish("web", drivers.EventStarted, time.Now())
	if got := fmt.Sprint(collect(EventQuery{})); got != "[web:created db.1:created web:started]" {
		t.Fatalf("all: %s", got)
	}
	if got := fmt.Sprint(collect(EventQuery{Instance: "db.1"})); got != "[db.1:created]" {
		t.Fatalf("by encoded instance: %s", got)
	}
	if got := fmt.Sprint(collect(EventQuery{Type: "started"})); got != "[web:started]" {
		t.Fatalf("by type: %s", got)
	}
	if got := collect(EventQuery{Since: time.Now().Add(time.Hour)}); len(got) != 0 {
		t.Fatalf("since the future: %v", got)
	}

	// Follow delivers new events until the context ends.
	fctx, cancel := context.WithCancel(ctx)
	got := make(chan string, 4)
	done := make(chan error, 1)
	go func() {
		done <- c.Events(fctx, EventQuery{Follow: true}, func(e messages.CloudEvent) error {
			got <- string(e.Data.Type)
			return nil
		})
	}()
	testenv.Eventually(t, 5*time.Second, func() error {
		publish("web", drivers.EventStopped, time.Now())
		select {
		case typ := <-got:
			if typ != "stopped" {
				return fmt.Errorf("followed %q", typ)
			}
			return nil
		case <-time.After(200 * time.Millisecond):
			return errors.New("no followed event yet")
		}
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("follow ended with %v", err)
	}
}
