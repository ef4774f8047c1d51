package worker

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/subbus/subbus/messages"
)

// TestBusEfficiency is the bus-efficiency benchmark that `make bench`
// runs (SUBBUS_BUSBENCH=1; BUSBENCH_ROUNDS, default 5; BUSBENCH_ROUND,
// default 1s): the worker's `get` (process driver, one running instance)
// against a bare NATS request/reply responder on the same server, the
// equivalent of natscli's `nats bench service serve` (a micro service
// whose endpoint answers at once, here with the bytes of the worker's own
// get reply so both move the same payload). The requester is the
// equivalent of `nats bench service request`: C clients, each on its own
// connection, each sending its next request when the previous reply came.
// Rounds alternate bare and worker so both see the same machine load; the
// table gives the median of the rounds and the ratios worker/bare.
//
// Without SUBBUS_BUSBENCH it runs one short round at c=1 and c=16 as a
// smoke test (both targets answer, the measurement works).
func TestBusEfficiency(t *testing.T) {
	rounds, round := 1, 100*time.Millisecond
	full := os.Getenv("SUBBUS_BUSBENCH") != ""
	if full {
		rounds, round = 5, time.Second
		if n, err := strconv.Atoi(os.Getenv("BUSBENCH_ROUNDS")); err == nil && n > 0 {
			rounds = n
		}
		if d, err := time.ParseDuration(os.Getenv("BUSBENCH_ROUND")); err == nil && d > 0 {
			round = d
		}
	}
	w, nc, name := benchWorker(t)
	getSubj := hostSubj("process", w.Host(), messages.OpGet)
	body := fmt.Appendf(nil, `{"name":%q}`, name)
	msg, err := nc.Request(getSubj, body, 10*time.Second)
	if err != nil || msg.Header.Get(messages.HeaderErrorCode) != "" {
		t.Fatalf("get: %v %s", err, msg.Data)
	}
	reply := msg.Data

	// The bare responder: a micro service on the same server answering
	// every request with the worker's reply bytes.
	bnc := connect(t, nc.ConnectedUrl())
	svc, err := micro.AddService(bnc, micro.Config{Name: "barebench", Version: "1.0.0", QueueGroup: "q"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = svc.Stop() }()
	if err := svc.AddEndpoint("get", micro.HandlerFunc(func(r micro.Request) { _ = r.Respond(reply) }),
		micro.WithEndpointSubject("barebench.get")); err != nil {
		t.Fatal(err)
	}
	if err := bnc.Flush(); err != nil { // the endpoint is subscribed before the first request
		t.Fatal(err)
	}

	type target struct {
		name, subject string
		check         func(*nats.Msg) error
	}
	targets := []target{
		{"bare", "barebench.get", func(*nats.Msg) error { return nil }},
		{"worker get", getSubj, func(m *nats.Msg) error {
			if c := m.Header.Get(messages.HeaderErrorCode); c != "" {
				return fmt.Errorf("error reply %s: %s", c, m.Data)
			}
			return nil
		}},
	}
	type result struct{ ops, p50, p99, cpu float64 }
	conc := []int{1, 16}
	if os.Getenv("BUSBENCH_PROFILE") != "" { // only the worker at c=16, for go test -cpuprofile
		conc, targets = []int{16}, targets[1:]
	}
	res := map[string][]result{} // "target c=N" -> rounds
	for _, c := range conc {
		conns := make([]*nats.Conn, c)
		for i := range conns {
			conns[i] = connect(t, nc.ConnectedUrl())
		}
		for range rounds {
			for _, tg := range targets {
				cpu0 := processCPU()
				ops, lat, err := requestLoad(conns, tg.subject, body, round, tg.check)
				cpu := float64(processCPU()-cpu0) / 1e3 / float64(len(lat)) // µs of CPU per request
				if err != nil {
					t.Fatalf("%s c=%d: %v", tg.name, c, err)
				}
				if len(lat) == 0 {
					t.Fatalf("%s c=%d: no request answered in %v", tg.name, c, round)
				}
				k := fmt.Sprintf("%s c=%d", tg.name, c)
				res[k] = append(res[k], result{ops, pct(lat, 50), pct(lat, 99), cpu})
			}
		}
	}
	median := func(rs []result, f func(result) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	var b strings.Builder
	fmt.Fprintf(&b, "bus efficiency: %d rounds of %v each, alternating; medians\n", rounds, round)
	fmt.Fprintf(&b, "%-18s %12s %10s %10s %14s\n", "target", "ops/s", "p50 µs", "p99 µs", "CPU µs/req")
	for _, c := range conc {
		for _, tg := range targets {
			rs := res[fmt.Sprintf("%s c=%d", tg.name, c)]
			fmt.Fprintf(&b, "%-18s %12.0f %10.1f %10.1f %14.1f\n", fmt.Sprintf("%s c=%d", tg.name, c),
				median(rs, func(r result) float64 { return r.ops }), median(rs, func(r result) float64 { return r.p50 }),
				median(rs, func(r result) float64 { return r.p99 }), median(rs, func(r result) float64 { return r.cpu }))
		}
	}
	// Ratios per round (the two targets of a round ran back to back), then
	// their median.
	ratio := func(c int, f func(result) float64) float64 {
		wr, br := res[fmt.Sprintf("worker get c=%d", c)], res[fmt.Sprintf("bare c=%d", c)]
		v := make([]float64, len(wr))
		for i := range wr {
			v[i] = f(wr[i]) / f(br[i])
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	if len(targets) == 1 {
		t.Log("\n" + b.String())
		return
	}
	fmt.Fprintf(&b, "throughput worker/bare at c=16: %.2fx (target >= 0.9x)\n", ratio(16, func(r result) float64 { return r.ops }))
	fmt.Fprintf(&b, "p99 worker/bare at c=1: %.2fx (target <= 1.2x)\n", ratio(1, func(r result) float64 { return r.p99 }))
	fmt.Fprintf(&b, "p50 worker/bare at c=1: %.2fx\n", ratio(1, func(r result) float64 { return r.p50 }))
	fmt.Fprintf(&b, "CPU per request (server, client and responder in this process) worker/bare at c=16: %.2fx\n",
		ratio(16, func(r result) float64 { return r.cpu }))
	if l, err := os.ReadFile("/proc/loadavg"); err == nil {
		fmt.Fprintf(&b, "load average: %s\n", strings.Join(strings.Fields(string(l))[:3], " "))
	}
	t.Log("\n" + b.String())
}

// requestLoad runs one client per connection, each sending a request to
// subject and waiting for its reply, for d; it returns the rate and every
// latency.
func requestLoad(conns []*nats.Conn, subject string, body []byte, d time.Duration, check func(*nats.Msg) error) (float64, []time.Duration, error) {
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		all      []time.Duration
		firstErr atomic.Value
		stop     atomic.Bool
	)
	start := time.Now()
	for _, nc := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lat := make([]time.Duration, 0, 4096)
			for !stop.Load() {
				t0 := time.Now()
				m, err := nc.Request(subject, body, 10*time.Second)
				if err == nil {
					err = check(m)
				}
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					stop.Store(true)
					break
				}
				lat = append(lat, time.Since(t0))
			}
			mu.Lock()
			all = append(all, lat...)
			mu.Unlock()
		}()
	}
	time.Sleep(d)
	stop.Store(true)
	wg.Wait()
	el := time.Since(start)
	if err, _ := firstErr.Load().(error); err != nil {
		return 0, nil, err
	}
	return float64(len(all)) / el.Seconds(), all, nil
}

// processCPU is the CPU time (user + system) this process used, in ns.
func processCPU() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// pct returns the p-th percentile of lat in µs (lat is sorted in place).
func pct(lat []time.Duration, p int) float64 {
	slices.Sort(lat)
	return float64(lat[min(len(lat)-1, len(lat)*p/100)]) / 1e3
}
