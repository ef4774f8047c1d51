package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/subbus/subbus/internal/config"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/registry"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/messages"
)

// Benchmarks of the bus against the process driver (scripts/bench.sh runs
// them): get and list through NATS on loopback next to the same calls on
// the manager in-process, at concurrency 1, 16 and 64, reporting p50/p99
// latency and throughput; and the event publish rate.

var benchConcurrency = []int{1, 16, 64}

// benchWorker starts a worker serving the process driver (via the
// registry) with one running instance; it returns the worker, a client
// connection over TCP loopback, and the instance name.
func benchWorker(b testing.TB) (*runningWorker, *nats.Conn, string) {
	b.Helper()
	f, ok := registry.Lookup("process")
	if !ok {
		testenv.Require(b, "the process driver in the registry", errors.New("not registered"), "register it in internal/registry/builtin.go")
	}
	cfg, err := config.Parse(fmt.Appendf(nil, "process:\n  state_dir: %s\n  cgroups: \"off\"\n", b.TempDir()))
	if err != nil {
		b.Fatal(err)
	}
	d, err := f.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	mo, err := manager.OptionsFromConfig(cfg, "process")
	if err != nil {
		b.Fatal(err)
	}
	mo.Host = "h1"
	m := manager.New(d, mo)
	s := startNATS(b)
	w := startWorker(b, s, []*manager.Manager{m}, func(o *Options) {
		o.Config = cfg
		// As in production (info: one line per request), written nowhere:
		// the cost of formatting, not of the terminal.
		o.Logger = zerolog.New(io.Discard).Level(zerolog.InfoLevel)
	})
	nc := connect(b, s.ClientURL())
	name := uniqueName("bench")
	ctx := context.Background()
	if _, err := m.Create(ctx, drivers.InstanceTemplate{Name: name, BaseImage: "/bin/sleep", Command: []string{"/bin/sleep", "600"}}); err != nil {
		b.Fatal(err)
	}
	if _, err := m.Start(ctx, name); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _, _ = m.Delete(context.Background(), name, drivers.DeleteOptions{Force: true}) })
	return w, nc, name
}

// runConcurrent runs b.N calls of fn over c goroutines and reports p50,
// p99 (µs) and ops/s.
func runConcurrent(b *testing.B, c int, fn func() error) {
	b.Helper()
	lat := make([]time.Duration, b.N)
	var next sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	idx := make(chan int, b.N)
	for i := range b.N {
		idx <- i
	}
	close(idx)
	b.ResetTimer()
	start := time.Now()
	for range c {
		next.Add(1)
		go func() {
			defer next.Done()
			for i := range idx {
				t0 := time.Now()
				if err := fn(); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
				lat[i] = time.Since(t0)
			}
		}()
	}
	next.Wait()
	el := time.Since(start)
	b.StopTimer()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2])/1e3, "p50-µs")
	b.ReportMetric(float64(lat[min(len(lat)-1, len(lat)*99/100)])/1e3, "p99-µs")
	b.ReportMetric(float64(b.N)/el.Seconds(), "ops/s")
}

func busCall(nc *nats.Conn, subject string, body []byte) error {
	msg, err := nc.Request(subject, body, 10*time.Second)
	if err != nil {
		return err
	}
	if msg.Header.Get(messages.HeaderErrorCode) != "" {
		return fmt.Errorf("%s: %s", subject, msg.Header.Get(messages.HeaderError))
	}
	return nil
}

func BenchmarkBusGet(b *testing.B) {
	_, nc, name := benchWorker(b)
	body := fmt.Appendf(nil, `{"name":%q}`, name)
	for _, c := range benchConcurrency {
		b.Run(fmt.Sprintf("c=%d", c), func(b *testing.B) {
			runConcurrent(b, c, func() error { return busCall(nc, subj("process", messages.OpGet), body) })
		})
	}
}

func BenchmarkManagerGet(b *testing.B) {
	w, _, name := benchWorker(b)
	m := w.Managers()[0]
	ctx := context.Background()
	for _, c := range benchConcurrency {
		b.Run(fmt.Sprintf("c=%d", c), func(b *testing.B) {
			runConcurrent(b, c, func() error { _, err := m.Get(ctx, name); return err })
		})
	}
}

func BenchmarkBusList(b *testing.B) {
	_, nc, _ := benchWorker(b)
	for _, c := range benchConcurrency {
		b.Run(fmt.Sprintf("c=%d", c), func(b *testing.B) {
			runConcurrent(b, c, func() error { return busCall(nc, subj("process", messages.OpList), nil) })
		})
	}
}

func BenchmarkManagerList(b *testing.B) {
	w, _, _ := benchWorker(b)
	m := w.Managers()[0]
	ctx := context.Background()
	for _, c := range benchConcurrency {
		b.Run(fmt.Sprintf("c=%d", c), func(b *testing.B) {
			runConcurrent(b, c, func() error { _, err := m.List(ctx); return err })
		})
	}
}

// BenchmarkEventPublish measures events queued and stored in
// SUBSTRATE_EVENTS (async acks, file storage) per second.
func BenchmarkEventPublish(b *testing.B) {
	s := startNATS(b)
	w := startWorker(b, s, []*manager.Manager{toyManager(newToy())}, func(o *Options) { o.OutboxSize = max(b.N, 1) + 10 })
	e := messages.Event{Type: drivers.EventStarted, Driver: "toy", Host: "h1", Instance: "bench", Source: messages.SourceManager,
		State: drivers.StateRunning, Time: time.Now()}
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		e.ID = fmt.Sprintf("bench-%d-%d", start.UnixNano(), i)
		w.enqueueEvent(e)
	}
	for w.events.len() > 0 {
		time.Sleep(time.Millisecond)
	}
	el := time.Since(start)
	b.StopTimer()
	if d, _ := w.Dropped(); d > 0 {
		b.Fatalf("%d events dropped", d)
	}
	b.ReportMetric(float64(b.N)/el.Seconds(), "events/s")
}
