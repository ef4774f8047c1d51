package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/subbus/subbus/client"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/internal/worker"
	"github.com/subbus/subbus/internal/worker/workertest"
	"github.com/subbus/subbus/messages"
)

// fleetSim is the scripted driver of the fan-out benchmark (test-only:
// it is never registered in the product binaries). Each host has a fixed
// set of instances; every call first waits the latency of a local
// substrate's API (listLatency for list, callLatency for the others), so
// that a fleet of them answers like real hosts, without their CPU.
type fleetSim struct {
	host      string
	mu        sync.Mutex
	instances map[string]drivers.Instance
}

const (
	simListLatency = 2 * time.Millisecond   // ~ docker's list API on loopback (docs/benchmarks.md)
	simCallLatency = 500 * time.Microsecond // ~ one inspect call
)

func newFleetSim(host string, names ...string) *fleetSim {
	d := &fleetSim{host: host, instances: map[string]drivers.Instance{}}
	created := time.Now().Add(-time.Hour)
	for _, n := range names {
		d.instances[n] = drivers.Instance{Name: n, ID: host + "-" + n, State: drivers.StateRunning, Image: "sim:1",
			Created: created, Managed: true, Metadata: map[string]string{"role": "bench"}}
	}
	return d
}

func simWait(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return drivers.Wrap(drivers.Timeout, ctx.Err(), "fleetsim")
	}
}

func (d *fleetSim) Name() string                     { return "fleetsim" }
func (d *fleetSim) Connect(context.Context) error    { return nil }
func (d *fleetSim) Close() error                     { return nil }
func (d *fleetSim) ErrorCode(err error) drivers.Code { return drivers.Internal }
func (d *fleetSim) Health(context.Context) (drivers.Health, error) {
	return drivers.Health{Healthy: true, Version: "sim-1"}, nil
}

func (d *fleetSim) List(ctx context.Context) ([]drivers.Instance, error) {
	if err := simWait(ctx, simListLatency); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]drivers.Instance, 0, len(d.instances))
	for _, i := range d.instances {
		out = append(out, i)
	}
	return out, nil
}

func (d *fleetSim) Get(ctx context.Context, name string) (drivers.Instance, error) {
	if err := simWait(ctx, simCallLatency); err != nil {
		return drivers.Instance{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	i, ok := d.instances[name]
	if !ok {
		return drivers.Instance{}, drivers.Errorf(drivers.NotFound, "instance %q not found", name)
	}
	return i, nil
}

func (d *fleetSim) Create(ctx context.Context, t drivers.InstanceTemplate) (drivers.Instance, error) {
	return drivers.Instance{}, drivers.Errorf(drivers.Unsupported, "fleetsim: create")
}

func (d *fleetSim) setState(ctx context.Context, name string, st drivers.State) (bool, error) {
	if err := simWait(ctx, simCallLatency); err != nil {
		return false, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	i, ok := d.instances[name]
	if !ok {
		return false, drivers.Errorf(drivers.NotFound, "instance %q not found", name)
	}
	changed := i.State != st
	i.State = st
	d.instances[name] = i
	return changed, nil
}

func (d *fleetSim) Start(ctx context.Context, name string) (bool, error) {
	return d.setState(ctx, name, drivers.StateRunning)
}

func (d *fleetSim) Stop(ctx context.Context, name string, _ drivers.StopOptions) (bool, error) {
	return d.setState(ctx, name, drivers.StateStopped)
}

func (d *fleetSim) Delete(ctx context.Context, name string, _ drivers.DeleteOptions) (bool, error) {
	return false, drivers.Errorf(drivers.Unsupported, "fleetsim: delete")
}

func (d *fleetSim) Metrics(ctx context.Context, name string) (drivers.ResourceUsage, error) {
	return drivers.ResourceUsage{}, drivers.Errorf(drivers.Unsupported, "fleetsim: metrics")
}

// fanoutFleet is N workers of fleetSim on one nats-server in this process.
type fanoutFleet struct {
	srv   *server.Server
	url   string
	hosts []string
	// perHost instances per host: h-0 … h-(perHost-1), plus one instance
	// named after the host (unique in the fleet, for owner resolution).
	perHost int
	cancel  []context.CancelFunc
	done    []chan error
}

func fanoutHost(i int) string { return fmt.Sprintf("fb-%04d", i) }

// startFanoutFleet starts the server and n workers (parallel, bounded),
// and waits until every host's heartbeat and records are in the buckets.
func startFanoutFleet(t *testing.T, n, perHost int) *fanoutFleet {
	t.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		JetStreamMaxMemory: 256 << 20, JetStreamMaxStore: 1 << 30, NoSigs: true, NoLog: true, MaxConn: 2*n + 1000})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	f := &fanoutFleet{srv: s, url: s.ClientURL(), perHost: perHost, cancel: make([]context.CancelFunc, n), done: make([]chan error, n)}
	t.Cleanup(func() {
		// Stop every worker at once (one after the other takes minutes).
		for _, c := range f.cancel {
			if c != nil {
				c()
			}
		}
		for _, d := range f.done {
			if d != nil {
				select {
				case <-d:
				case <-time.After(2 * time.Minute):
					t.Error("a worker did not stop within 2 minutes")
				}
			}
		}
		s.Shutdown()
		s.WaitForShutdown()
	})
	t0 := time.Now()
	sem := make(chan struct{}, 16)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		host := fanoutHost(i)
		f.hosts = append(f.hosts, host)
		names := []string{host}
		for j := range perHost - 1 {
			names = append(names, fmt.Sprintf("h-%d", j))
		}
		m := manager.New(newFleetSim(host, names...), manager.Options{Host: host, CacheTTL: -1, RetryAttempts: 1})
		w, err := worker.New(context.Background(), worker.Options{
			Host: host, Managers: []*manager.Manager{m}, ManageStreams: true, Version: "0.0.1-bench",
			Connect: func(extra ...nats.Option) (*nats.Conn, error) { return nats.Connect(f.url, extra...) },
			Logger:  zerolog.Nop(), EnableMetrics: false,
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		f.cancel[i], f.done[i] = cancel, make(chan error, 1)
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			go func() { f.done[i] <- w.Run(ctx) }()
			select {
			case <-w.Ready():
			case err := <-f.done[i]:
				f.done[i] <- err
				errs <- fmt.Errorf("worker %s stopped: %v", host, err)
			case <-time.After(2 * time.Minute):
				errs <- fmt.Errorf("worker %s not ready within 2 minutes", host)
			}
			<-sem
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("%d workers ready after %v", n, time.Since(t0).Round(time.Millisecond))
	// Every heartbeat and every record written.
	nc := fanoutConnect(t, f.url)
	cl := client.New(nc, 30*time.Second)
	testenv.Eventually(t, 3*time.Minute, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		hbs, err := cl.Heartbeats(ctx)
		if err != nil {
			return err
		}
		if len(hbs) != n {
			return fmt.Errorf("%d heartbeats of %d", len(hbs), n)
		}
		recs, bad, err := cl.Inventory(ctx, "fleetsim")
		if err != nil {
			return err
		}
		if len(recs) != n*perHost {
			return fmt.Errorf("%d inventory records of %d", len(recs), n*perHost)
		}
		if len(bad) > 0 {
			return fmt.Errorf("%d hosts not up, first %s %s", len(bad), bad[0].Host, bad[0].Liveness)
		}
		return nil
	})
	return f
}

// runCLI runs subbus in-process against url (as clitest.Subbus does) and
// returns stdout, failing the test on a non-zero exit.
func runCLI(t *testing.T, url string, args ...string) (string, time.Duration) {
	t.Helper()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	t0 := time.Now()
	code := Run(ctx, append([]string{"--server", url}, args...), &out, &errOut)
	el := time.Since(t0)
	if code != 0 {
		t.Fatalf("subbus %s: exit %d\nstdout: %.2000s\nstderr: %.2000s", strings.Join(args, " "), code, out.String(), errOut.String())
	}
	return out.String(), el
}

// checkFleetList checks that a list's JSON names every instance of the
// fleet exactly once, on its host.
func checkFleetList(t *testing.T, f *fanoutFleet, what string, got []messages.Instance) {
	t.Helper()
	if len(got) != len(f.hosts)*f.perHost {
		t.Fatalf("%s: %d instances, want %d", what, len(got), len(f.hosts)*f.perHost)
	}
	seen := map[string]bool{}
	for _, i := range got {
		k := i.Host + "/" + i.Name
		if seen[k] {
			t.Fatalf("%s: %s twice", what, k)
		}
		seen[k] = true
	}
	for _, h := range f.hosts {
		if !seen[h+"/"+h] {
			t.Fatalf("%s: instance %s of host %s missing", what, h, h)
		}
	}
}

// TestFanout is the fleet scale benchmark that `make bench` runs with
// SUBBUS_FANOUT=1000 (FANOUT_RUNS, default 7): N workers of a scripted
// driver (fleetSim: list answers after 2 ms, get after 0.5 ms) on one
// in-process nats-server, each with its own connection as on N machines.
// It measures, side by side in the same run, with the medians of the runs:
//
//   - `subbus fleetsim list --all-hosts` (the fan-out: discovery and
//     heartbeats, then one list request per host) and `subbus fleetsim list
//     --inventory` (SUBSTRATE_INVENTORY), both run in-process as the CLI
//     (its connection included), each checked complete;
//   - a plain scatter-gather as `nats req` does it: one publish with a
//     reply inbox to N bare responders (each on its own connection,
//     answering a host's list reply bytes), collecting until all answered;
//   - what owner resolution adds to a get (the client's KV lookup): get
//     without a host vs with it, alternating;
//   - memory, goroutines and server subscriptions per worker.
//
// Without SUBBUS_FANOUT it is the smoke test of `make test`: 50 workers,
// every view complete, one run.
func TestFanout(t *testing.T) {
	workertest.Isolate(t)
	n, runs, full := 50, 1, false
	if v := os.Getenv("SUBBUS_FANOUT"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			t.Fatalf("SUBBUS_FANOUT=%q: want a number of workers", v)
		}
		full, runs = true, 7
		if r, err := strconv.Atoi(os.Getenv("FANOUT_RUNS")); err == nil && r > 0 {
			runs = r
		}
	}
	const perHost = 3

	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	g0 := runtime.NumGoroutine()
	t0 := time.Now()
	f := startFanoutFleet(t, n, perHost)
	startup := time.Since(t0)
	subs := f.srv.NumSubscriptions()
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	g1 := runtime.NumGoroutine()

	// The bare responders: one connection each, answering one host's list
	// reply.
	nc := fanoutConnect(t, f.url)
	cl := client.New(nc, 30*time.Second)
	listReply, err := nc.Request(messages.RequestSubject("fleetsim", f.hosts[0], messages.OpList), nil, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	bare := make([]*nats.Conn, n)
	for i := range bare {
		bc, err := nats.Connect(f.url)
		if err != nil {
			t.Fatal(err)
		}
		defer bc.Close()
		if _, err := bc.Subscribe("fanbench.scatter", func(m *nats.Msg) { _ = m.Respond(listReply.Data) }); err != nil {
			t.Fatal(err)
		}
		if err := bc.Flush(); err != nil {
			t.Fatal(err)
		}
		bare[i] = bc
	}
	scatter := func() time.Duration {
		inbox := nc.NewInbox()
		ch := make(chan *nats.Msg, n)
		sub, err := nc.ChanSubscribe(inbox, ch)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = sub.Unsubscribe() }()
		t0 := time.Now()
		if err := nc.PublishRequest("fanbench.scatter", inbox, nil); err != nil {
			t.Fatal(err)
		}
		timeout := time.After(30 * time.Second)
		for got := 0; got < n; got++ {
			select {
			case <-ch:
			case <-timeout:
				t.Fatalf("scatter-gather: %d of %d replies in 30s", got, n)
			}
		}
		return time.Since(t0)
	}

	var tFan, tInv, tBare, tDisc, tHB, tReqs []time.Duration
	for range runs {
		out, el := runCLI(t, f.url, "fleetsim", "list", "--all-hosts", "--json")
		var res allHostsResult
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("list --all-hosts: %v", err)
		}
		if len(res.Failed) > 0 {
			t.Fatalf("list --all-hosts: %d hosts failed, first %s", len(res.Failed), res.Failed[0].Host)
		}
		checkFleetList(t, f, "list --all-hosts", res.Instances)
		tFan = append(tFan, el)

		out, el = runCLI(t, f.url, "fleetsim", "list", "--inventory", "--json")
		var inv []inventoryInstance
		if err := json.Unmarshal([]byte(out), &inv); err != nil {
			t.Fatalf("list --inventory: %v", err)
		}
		list := make([]messages.Instance, len(inv))
		for i, r := range inv {
			if r.Stale {
				t.Fatalf("list --inventory: %s on %s is stale", r.Name, r.Host)
			}
			list[i] = r.Instance
		}
		checkFleetList(t, f, "list --inventory", list)
		tInv = append(tInv, el)

		tBare = append(tBare, scatter())

		// The parts of the fan-out, on the test's connection.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		t0 := time.Now()
		hbs, err := cl.Heartbeats(ctx)
		if err != nil || len(hbs) != n {
			t.Fatalf("heartbeats: %d of %d (%v)", len(hbs), n, err)
		}
		tHB = append(tHB, time.Since(t0))
		t0 = time.Now()
		ws, err := cl.WorkersExpecting(ctx, f.hosts) // as list --all-hosts does
		if err != nil {
			t.Fatalf("discovery: %v", err)
		}
		tDisc = append(tDisc, time.Since(t0))
		if len(ws) != n { // the heartbeats cover them: list --all-hosts still asks every host
			t.Logf("discovery found %d workers of %d within %v", len(ws), n, tDisc[len(tDisc)-1])
		}
		t0 = time.Now()
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i, h := range f.hosts {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var l []messages.Instance
				errs[i] = cl.Do(ctx, "fleetsim", h, messages.OpList, nil, &l)
			}()
		}
		wg.Wait()
		tReqs = append(tReqs, time.Since(t0))
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		cancel()
	}

	// Owner resolution: get of a host's unique instance without --host
	// (KV lookup, then the host's subject) vs with it, alternating.
	gets := 20
	if full {
		gets = 300
	}
	ctx := context.Background()
	var withHost, resolved, lookup []time.Duration
	for i := range gets {
		h := f.hosts[i%n]
		var inst messages.Instance
		t0 := time.Now()
		if err := cl.Do(ctx, "fleetsim", h, messages.OpGet, messages.NameRequest{Name: h}, &inst); err != nil {
			t.Fatal(err)
		}
		withHost = append(withHost, time.Since(t0))
		t0 = time.Now()
		if err := cl.Do(ctx, "fleetsim", "", messages.OpGet, messages.NameRequest{Name: h}, &inst); err != nil {
			t.Fatal(err)
		}
		resolved = append(resolved, time.Since(t0))
		if inst.Host != h {
			t.Fatalf("get %s without a host answered from %s", h, inst.Host)
		}
		t0 = time.Now()
		if o, err := cl.Owner(ctx, "fleetsim", h); err != nil || o != h {
			t.Fatalf("owner of %s: %q, %v", h, o, err)
		}
		lookup = append(lookup, time.Since(t0))
	}

	med := func(d []time.Duration) time.Duration {
		s := slices.Clone(d)
		slices.Sort(s)
		return s[len(s)/2]
	}
	ms := func(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/1e6) }
	var b strings.Builder
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Fprintf(&b, "fan-out: %d workers (fleetsim, %d instances each, list 2 ms, get 0.5 ms) on one nats-server; started in %v; median of %d runs; load %s\n",
		n, perHost, startup.Round(time.Millisecond), runs, strings.Join(strings.Fields(string(load))[:3], " "))
	fmt.Fprintf(&b, "%-52s %10s %10s %12s\n", "view", "median", "worst", "vs bare")
	row := func(name string, d []time.Duration) {
		fmt.Fprintf(&b, "%-52s %10s %10s %11.2fx\n", name, ms(med(d)), ms(slices.Max(d)), float64(med(d))/float64(med(tBare)))
	}
	row(fmt.Sprintf("subbus list --all-hosts (%d hosts asked)", n), tFan)
	row(fmt.Sprintf("subbus list --inventory (%d records)", n*perHost), tInv)
	row(fmt.Sprintf("bare scatter-gather (1 publish, %d responders)", n), tBare)
	row("  part of --all-hosts: heartbeats (SUBSTRATE_WORKERS)", tHB)
	row("  part of --all-hosts: discovery ($SRV.PING, hosts expected)", tDisc)
	row(fmt.Sprintf("  part of --all-hosts: %d list requests", n), tReqs)
	fmt.Fprintf(&b, "owner resolution: get p50 %s with --host, %s without (+%.0f µs), %d gets each\n",
		fmt.Sprintf("%.0f µs", float64(med(withHost))/1e3), fmt.Sprintf("%.0f µs", float64(med(resolved))/1e3),
		float64(med(resolved)-med(withHost))/1e3, gets)
	fmt.Fprintf(&b, "owner lookup alone (client.Owner: one batched direct get): p50 %.0f µs\n", float64(med(lookup))/1e3)
	fmt.Fprintf(&b, "per worker: %.0f KiB heap (worker + its server-side connection), %.1f goroutines, %.1f server subscriptions, 1 connection\n",
		float64(int64(after.HeapInuse)-int64(before.HeapInuse))/float64(n)/1024, float64(g1-g0)/float64(n), float64(subs)/float64(n))
	t.Log("\n" + b.String())
}

// fanoutConnect connects to url, closed at the end of the test.
func fanoutConnect(t *testing.T, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}
