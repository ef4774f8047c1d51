package client_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/subbus/subbus/internal/client"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/drivers/process"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/messages"
	"github.com/subbus/subbus/internal/worker"
)

// Benchmarks of the bus on loopback (make bench): get and list against
// the real process driver through a real worker and embedded nats-server,
// next to the same calls made in-process on a manager, at concurrency 1,
// 16 and 64; and the JetStream publish rate of events with async acks.
// Each reports p50 and p99 latency in µs next to ns/op (the inverse of
// throughput at that concurrency).

var concurrencies = []int{1, 16, 64}

func benchServer(b *testing.B) *server.Server {
	b.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: b.TempDir(),
		JetStreamMaxMemory: 64 << 20, JetStreamMaxStore: 1 << 30, NoSigs: true, NoLog: true})
	if err != nil {
		b.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		b.Fatal("nats-server did not start")
	}
	b.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

// benchManager is a connected process-driver manager with one instance.
func benchManager(b *testing.B, name string) *manager.Manager {
	b.Helper()
	m := manager.New(process.New(process.Options{StateDir: b.TempDir(), Cgroups: "off"}), manager.Options{Host: "bench"})
	ctx := context.Background()
	if err := m.Connect(ctx); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = m.Close() })
	if _, err := m.Create(ctx, drivers.InstanceTemplate{Name: name, BaseImage: "/bin/sleep", Command: []string{"/bin/sleep", "600"}}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _, _ = m.Delete(context.Background(), name, drivers.DeleteOptions{Force: true}) })
	return m
}

// run calls op b.N times spread over c goroutines and reports latency percentiles.
func run(b *testing.B, c int, op func() error) {
	b.Helper()
	lat := make([][]time.Duration, c)
	per := b.N / c
	extra := b.N % c
	var wg sync.WaitGroup
	var failed sync.Once
	var firstErr error
	b.ResetTimer()
	for g := 0; g < c; g++ {
		n := per
		if g < extra {
			n++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := make([]time.Duration, 0, n)
			for i := 0; i < n; i++ {
				t0 := time.Now()
				if err := op(); err != nil {
					failed.Do(func() { firstErr = err })
					return
				}
				l = append(l, time.Since(t0))
			}
			lat[g] = l
		}()
	}
	wg.Wait()
	b.StopTimer()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	if len(all) == 0 {
		return
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	pct := func(p float64) float64 { return float64(all[int(p*float64(len(all)-1))].Nanoseconds()) / 1e3 }
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
}

func BenchmarkBus(b *testing.B) {
	s := benchServer(b)
	m := benchManager(b, "bench-bus")
	w, err := worker.New(context.Background(), worker.Options{Host: "bench", Managers: []*manager.Manager{m}, ManageStreams: true,
		Connect: func(extra ...nats.Option) (*nats.Conn, error) { return nats.Connect(s.ClientURL(), extra...) },
		Logger:  zerolog.Nop(), Version: "0.0.1"})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	b.Cleanup(func() { cancel(); <-done })
	select {
	case <-w.Ready():
	case err := <-done:
		b.Fatal(err)
	}
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	cl := client.New(nc, 10*time.Second)
	for _, op := range []messages.Op{messages.OpGet, messages.OpList} {
		for _, c := range concurrencies {
			b.Run(fmt.Sprintf("%s/c=%d", op, c), func(b *testing.B) {
				run(b, c, func() error {
					if op == messages.OpGet {
						var inst drivers.Instance
						return cl.Do(context.Background(), "process", "bench", op, messages.NameRequest{Name: "bench-bus"}, &inst)
					}
					var l []drivers.Instance
					return cl.Do(context.Background(), "process", "bench", op, nil, &l)
				})
			})
		}
	}
}

func BenchmarkInProcess(b *testing.B) {
	m := benchManager(b, "bench-inproc")
	ctx := context.Background()
	for _, op := range []messages.Op{messages.OpGet, messages.OpList} {
		for _, c := range concurrencies {
			b.Run(fmt.Sprintf("%s/c=%d", op, c), func(b *testing.B) {
				run(b, c, func() error {
					if op == messages.OpGet {
						_, err := m.Get(ctx, "bench-inproc")
						return err
					}
					_, err := m.List(ctx)
					return err
				})
			})
		}
	}
}

// BenchmarkEventPublish publishes CloudEvents to a SUBSTRATE_EVENTS stream
// (file storage, duplicate window, Nats-Msg-Id) with async acks.
func BenchmarkEventPublish(b *testing.B) {
	s := benchServer(b)
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: messages.EventsStream,
		Subjects: []string{messages.SubjectRoot + "." + messages.EventsToken + ".>"}, Storage: jetstream.FileStorage,
		Duplicates: time.Minute}); err != nil {
		b.Fatal(err)
	}
	ev := messages.NewCloudEvent(drivers.Event{Type: drivers.EventStarted, Time: time.Now(), Driver: "process",
		Host: "bench", Instance: "web", Source: drivers.SourceManager, State: drivers.StateRunning})
	subject := messages.EventSubject("process", "bench", "web", string(drivers.EventStarted))
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		ev.ID = fmt.Sprintf("bench-%d", i)
		data, _ := json.Marshal(ev)
		msg := nats.NewMsg(subject)
		msg.Data = data
		msg.Header.Set(jetstream.MsgIDHeader, ev.ID)
		if _, err := js.PublishMsgAsync(msg); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(60 * time.Second):
		b.Fatal("publishes not acknowledged")
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
}
