package clitest

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/messages"
)

// Fleet is what an end-to-end test of a driver drives: one worker for
// Host on its own nats-server at URL, and the subbus CLI pointed at it.
// Its methods report to the test that started it.
//
//	f := clitest.StartFleet(t, host, 60*time.Second, manager.New(d, manager.Options{Host: host}))
//	f.OK("docker", "start", name)
//	f.Expect(cli.ExitNotFound, "docker", "get", "nope")
type Fleet struct {
	URL, Host string
	limit     time.Duration
	t         testing.TB
}

// StartFleet isolates the test from the user's NATS settings (Isolate, so
// the test must not be parallel), starts a nats-server and a worker for
// host serving mgrs, and returns once the worker serves requests. Every
// CLI run of the fleet is cancelled after limit.
func StartFleet(t testing.TB, host string, limit time.Duration, mgrs ...*manager.Manager) *Fleet {
	t.Helper()
	Isolate(t)
	url := StartNATS(t)
	StartWorker(t, url, host, mgrs...)
	return &Fleet{URL: url, Host: host, limit: limit, t: t}
}

// Run runs `subbus --server URL args...` in-process, whatever its exit.
func (f *Fleet) Run(args ...string) Result {
	f.t.Helper()
	return SubbusWithin(f.t, f.limit, f.URL, args...)
}

// OK runs subbus, fails the test unless it exits 0, and returns stdout.
func (f *Fleet) OK(args ...string) string {
	f.t.Helper()
	return f.Run(args...).Want(f.t, 0, "subbus "+strings.Join(args, " ")).Stdout
}

// Expect runs subbus and reports an error, letting the test go on, unless
// it exits with code; it returns the run for further checks.
func (f *Fleet) Expect(code int, args ...string) Result {
	f.t.Helper()
	return f.Run(args...).Expect(f.t, code, "subbus "+strings.Join(args, " "))
}

// Events reads the lifecycle events of one instance from the events
// stream, from the first one on.
type Events struct {
	instance string
	cons     jetstream.Consumer
	native   map[drivers.EventType]messages.Event
}

// WatchEvents starts reading driver's events about instance on the
// fleet's host. The connection closes at the end of the test.
func (f *Fleet) WatchEvents(driver, instance string) *Events {
	f.t.Helper()
	nc, err := nats.Connect(f.URL)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		f.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cons, err := js.OrderedConsumer(ctx, messages.EventsStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{messages.EventSubject(driver, f.Host, instance, "*")},
	})
	if err != nil {
		f.t.Fatal(err)
	}
	return &Events{instance: instance, cons: cons, native: map[drivers.EventType]messages.Event{}}
}

// WaitNative polls for up to within until an event of type typ from the
// substrate's own feed (Source native) has arrived, and returns the last
// such event read; it fails t if none comes. Events from other sources
// are skipped.
func (e *Events) WaitNative(t testing.TB, typ drivers.EventType, within time.Duration) messages.Event {
	t.Helper()
	testenv.Eventually(t, within, func() error {
		batch, err := e.cons.FetchNoWait(100)
		if err != nil {
			return err
		}
		for m := range batch.Messages() {
			var ce messages.CloudEvent
			if err := json.Unmarshal(m.Data(), &ce); err == nil && ce.Data.Source == messages.SourceNative {
				e.native[ce.Data.Type] = ce.Data
			}
		}
		if _, ok := e.native[typ]; !ok {
			var have []string
			for k := range e.native {
				have = append(have, string(k))
			}
			sort.Strings(have)
			return fmt.Errorf("no native %s event for %s yet (have %v)", typ, e.instance, have)
		}
		return nil
	})
	return e.native[typ]
}
