package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/rs/zerolog"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/messages"
)

// startCluster runs a 3-node JetStream cluster on loopback; every node
// lists every route (the first one included) and keeps its store in its
// own /tmp/failover-* directory. It returns once every node has its two
// routes and JetStream has a meta leader, so that clients connecting now
// are told about all three servers.
func startCluster(t *testing.T) []*server.Server {
	t.Helper()
	ports := []int{freePort(t), freePort(t), freePort(t)}
	var routes []*url.URL
	for _, p := range ports {
		routes = append(routes, &url.URL{Scheme: "nats-route", Host: fmt.Sprintf("127.0.0.1:%d", p)})
	}
	var out []*server.Server
	for i, p := range ports {
		dir, err := os.MkdirTemp("", "failover-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) }) // after the shutdown below
		s, err := server.NewServer(&server.Options{
			ServerName: fmt.Sprintf("n%d", i+1), Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true,
			JetStream: true, StoreDir: dir, JetStreamMaxMemory: 64 << 20, JetStreamMaxStore: 1 << 30,
			Cluster: server.ClusterOpts{Name: "substrate", Host: "127.0.0.1", Port: p},
			Routes:  routes,
		})
		if err != nil {
			t.Fatal(err)
		}
		go s.Start()
		t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
		out = append(out, s)
	}
	for _, s := range out {
		if !s.ReadyForConnections(20 * time.Second) {
			t.Fatal("cluster node not ready")
		}
	}
	testenv.Eventually(t, 30*time.Second, func() error {
		leader := false
		for _, s := range out {
			if s.NumRoutes() < 2 {
				return fmt.Errorf("%s: %d routes", s.Name(), s.NumRoutes())
			}
			// Only the meta leader knows the peers.
			leader = leader || (s.JetStreamIsLeader() && len(s.JetStreamClusterPeers()) == 3)
		}
		if !leader {
			return errors.New("no JetStream meta leader with 3 peers yet")
		}
		return nil
	})
	return out
}

// clusterURLs lists the nodes' client URLs, nodes[first] first.
func clusterURLs(nodes []*server.Server, first int) string {
	var urls []string
	for i := range nodes {
		urls = append(urls, nodes[(first+i)%len(nodes)].ClientURL())
	}
	return strings.Join(urls, ",")
}

// connectCluster connects to nodes[first], reconnecting to the others.
func connectCluster(t *testing.T, nodes []*server.Server, first int, extra ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(clusterURLs(nodes, first), append([]nats.Option{nats.DontRandomize(),
		nats.MaxReconnects(-1), nats.ReconnectWait(100 * time.Millisecond)}, extra...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// replicasOf returns the replica count of stream name.
func replicasOf(t *testing.T, js jetstream.JetStream, name string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, name)
	if err != nil {
		t.Fatalf("stream %s: %v", name, err)
	}
	return s.CachedInfo().Config.Replicas
}

// waitBuckets waits until the workers have created the fleet's buckets
// (after their streams; SUBSTRATE_WORKERS is the last).
func waitBuckets(t *testing.T, js jetstream.JetStream) {
	t.Helper()
	testenv.Eventually(t, 20*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := js.KeyValue(ctx, messages.WorkersBucket)
		return err
	})
}

// TestCluster: two workers on different nodes of a 3-node cluster share
// replicated streams (3 replicas without stream_replicas: the cluster
// advertises 3 servers); pooled subjects reach either, host subjects
// reach the named one, and every event is stored once.
func TestCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test in -short mode")
	}
	nodes := startCluster(t)
	var rec eventRecorder
	hosts := []string{"h1", "h2"}
	for i, h := range hosts {
		m := manager.New(newToy(), manager.Options{Host: h, CacheTTL: -1, RetryAttempts: 1})
		m.Subscribe(rec.record)
		startWorker(t, nodes[i], []*manager.Manager{m}, func(o *Options) { o.Host = h })
	}
	nc := connect(t, nodes[2].ClientURL())
	js, _ := jetstream.New(nc)
	waitBuckets(t, js)
	for _, name := range []string{messages.EventsStream, messages.MetricsStream, "KV_" + messages.InventoryBucket, "KV_" + messages.WorkersBucket} {
		if r := replicasOf(t, js, name); r != 3 {
			t.Errorf("%s has %d replicas on a 3-node cluster, want 3", name, r)
		}
	}
	// Pooled creates land on either worker; targeted ones on the named host.
	seen := map[string]int{}
	for i := range 20 {
		var inst messages.Instance
		ok(t, nc, subj("toy", messages.OpCreate), messages.CreateRequest{Template: messages.Template{Name: fmt.Sprintf("c%d", i), BaseImage: "x"}}, &inst)
		seen[inst.Host]++
	}
	if seen["h1"] == 0 || seen["h2"] == 0 {
		t.Logf("pooled requests all went to one worker: %v", seen)
	}
	for _, h := range hosts {
		var inst messages.Instance
		ok(t, nc, hostSubj("toy", h, messages.OpCreate), messages.CreateRequest{Template: messages.Template{Name: "on-" + h, BaseImage: "x"}}, &inst)
		if inst.Host != h {
			t.Fatalf("create on %s answered by %s", h, inst.Host)
		}
	}
	if _, err := callErr(nc, hostSubj("toy", "h3", messages.OpList), nil, nil, 5*time.Second); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("unknown host: %v", err)
	}
	waitEventsStored(t, nc, rec.all())
}

// TestAutoReplicas: without stream_replicas the streams and buckets get
// one replica on a single server (a cluster of 3 is TestCluster).
func TestAutoReplicas(t *testing.T) {
	s := startNATS(t)
	startWorker(t, s, []*manager.Manager{toyManager(newToy())}, nil)
	nc := connect(t, s.ClientURL())
	if AutoReplicas(nc) != 1 {
		t.Fatalf("AutoReplicas on a single server = %d", AutoReplicas(nc))
	}
	js, _ := jetstream.New(nc)
	waitBuckets(t, js)
	for _, name := range []string{messages.EventsStream, messages.MetricsStream, "KV_" + messages.InventoryBucket, "KV_" + messages.WorkersBucket} {
		if r := replicasOf(t, js, name); r != 1 {
			t.Errorf("%s has %d replicas on a single server, want 1", name, r)
		}
	}
}

// failoverExpect is what the load expects of one instance at the end:
// the effect of its last request that got a success reply.
type failoverExpect struct {
	host   string
	exists bool
	state  drivers.State
}

// TestFailover: on a 3-node cluster with replicated streams and buckets,
// two workers (h1, h2) connected to different nodes serve a load of
// create/start/stop/get/delete requests from four clients (two connected
// to the victim), with the events they cause. The node h1 is connected
// to, which leads SUBSTRATE_EVENTS, is shut down mid-run (in-process: its
// clients and routes drop at once). Afterwards:
// every request that got a success reply has its effect (the substrate
// and a get through the bus agree); every event emitted is stored exactly
// once (by Nats-Msg-Id); the inventory matches the substrates; h1
// reconnected to a surviving node and its heartbeat is current. A request
// that fails during the failover (no responders while h1 reconnects, a
// timeout) is retried with the same idempotency key, as a client should.
func TestFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test in -short mode")
	}
	began := time.Now()
	nodes := startCluster(t)

	// The streams and buckets first (3 replicas by the auto rule), so that
	// the node to kill can be the events stream's leader.
	admin := connectCluster(t, nodes, 0)
	js, _ := jetstream.New(admin)
	sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer scancel()
	// A JetStream API request that meets a fresh cluster's leader changes
	// gets no answer: try again, as the worker's own setup does.
	testenv.Eventually(t, 30*time.Second, func() error {
		actx, acancel := context.WithTimeout(sctx, 5*time.Second)
		defer acancel()
		if err := EnsureStreams(actx, js, Options{}, true, zerolog.Nop()); err != nil {
			return err
		}
		_, err := EnsureBuckets(actx, js, Options{}, true, false, zerolog.Nop())
		return err
	})
	for _, name := range []string{messages.EventsStream, "KV_" + messages.InventoryBucket, "KV_" + messages.WorkersBucket} {
		if r := replicasOf(t, js, name); r != 3 {
			t.Fatalf("%s has %d replicas, want 3", name, r)
		}
	}
	var victim int
	testenv.Eventually(t, 20*time.Second, func() error {
		st, err := js.Stream(sctx, messages.EventsStream)
		if err != nil {
			return err
		}
		info, err := st.Info(sctx)
		if err != nil || info.Cluster == nil || info.Cluster.Leader == "" {
			return fmt.Errorf("no leader of %s yet (%v)", messages.EventsStream, err)
		}
		for i, s := range nodes {
			if s.Name() == info.Cluster.Leader {
				victim = i
				return nil
			}
		}
		return fmt.Errorf("leader %q is no node", info.Cluster.Leader)
	})
	victimURL := nodes[victim].ClientURL()

	// h1 on the victim, h2 on the next node, the client on the third.
	var rec eventRecorder
	hosts := []string{"h1", "h2"}
	toys := map[string]*toy{}
	workers := map[string]*runningWorker{}
	for i, h := range hosts {
		d := newToy()
		toys[h] = d
		m := manager.New(d, manager.Options{Host: h, CacheTTL: -1, RetryAttempts: 1})
		m.Subscribe(rec.record)
		urls := clusterURLs(nodes, (victim+i)%3)
		workers[h] = startWorker(t, nodes[(victim+i)%3], []*manager.Manager{m}, func(o *Options) {
			o.Host, o.InventoryResync, o.LivenessInterval = h, time.Second, 300*time.Millisecond
			o.Connect = func(extra ...nats.Option) (*nats.Conn, error) {
				return nats.Connect(urls, append([]nats.Option{nats.DontRandomize()}, extra...)...)
			}
		})
	}
	if got := workers["h1"].nc.ConnectedUrl(); got != victimURL {
		t.Fatalf("h1 connected to %s, want the victim %s", got, victimURL)
	}
	// Half the clients are connected to the victim too: requests in flight
	// when it dies lose their replies.
	nc := connectCluster(t, nodes, (victim+2)%3)
	ncVictim := connectCluster(t, nodes, victim)

	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	var (
		mu       sync.Mutex
		expect   = map[string]failoverExpect{}
		retried  atomic.Int64
		cycles   atomic.Int64 // instance cycles completed
		killed   = make(chan struct{})
		failures = make(chan error, 16)
	)
	fail := func(err error) {
		select {
		case failures <- err:
		default:
		}
		cancel()
	}
	// call sends one request until it gets a reply that is not a
	// transient failure, with one idempotency key for all its tries.
	call := func(nc *nats.Conn, host string, op messages.Op, body any, out any) error {
		key := nuid.Next()
		for {
			hdr := map[string]string{}
			if op.Mutating() {
				hdr[messages.HeaderIdempotencyKey] = key
			}
			m, err := callErr(nc, hostSubj("toy", host, op), body, hdr, 3*time.Second)
			if err == nil {
				var r messages.Reply
				if err := json.Unmarshal(m.Data, &r); err != nil {
					return fmt.Errorf("%s on %s: reply %q: %w", op, host, m.Data, err)
				}
				if r.Error == nil {
					if out != nil {
						return json.Unmarshal(r.Result, out)
					}
					return nil
				}
				if c := r.Error.Code; c != drivers.Unavailable && c != drivers.Timeout {
					return fmt.Errorf("%s on %s: %s: %s", op, host, c, r.Error.Message)
				}
				err = fmt.Errorf("%s: %s", r.Error.Code, r.Error.Message)
			}
			if ctx.Err() != nil {
				return fmt.Errorf("%s on %s: no success before the test's deadline (last: %v)", op, host, err)
			}
			retried.Add(1)
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	set := func(name string, e failoverExpect) {
		mu.Lock()
		expect[name] = e
		mu.Unlock()
	}
	const clients = 4
	var wg sync.WaitGroup
	for g := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			host := hosts[g%2]
			cn := nc
			if g < clients/2 {
				cn = ncVictim
			}
			afterKill := 0
			for k := 0; afterKill < 3; k++ {
				select {
				case <-killed:
					afterKill++
				default:
				}
				name := fmt.Sprintf("fo-g%d-%d", g, k)
				tmpl := messages.Template{Name: name, BaseImage: "x"}
				if err := call(cn, host, messages.OpCreate, messages.CreateRequest{Template: tmpl}, nil); err != nil {
					fail(err)
					return
				}
				set(name, failoverExpect{host, true, drivers.StateStopped})
				if err := call(cn, host, messages.OpStart, messages.NameRequest{Name: name}, nil); err != nil {
					fail(err)
					return
				}
				set(name, failoverExpect{host, true, drivers.StateRunning})
				if k%2 == 1 {
					if err := call(cn, host, messages.OpStop, messages.StopRequest{Name: name}, nil); err != nil {
						fail(err)
						return
					}
					set(name, failoverExpect{host, true, drivers.StateStopped})
				}
				var inst messages.Instance
				if err := call(cn, host, messages.OpGet, messages.NameRequest{Name: name}, &inst); err != nil {
					fail(err)
					return
				}
				mu.Lock()
				want := expect[name].state
				mu.Unlock()
				if inst.State != want {
					fail(fmt.Errorf("get %s on %s right after its last change: %s, want %s", name, host, inst.State, want))
					return
				}
				if k%3 == 2 {
					if err := call(cn, host, messages.OpDelete, messages.DeleteRequest{Name: name, Force: true}, nil); err != nil {
						fail(err)
						return
					}
					set(name, failoverExpect{host: host})
				}
				cycles.Add(1)
			}
		}()
	}
	// Kill the victim once every client is well under way.
	var killedAt time.Time
	for cycles.Load() < 2*clients && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond) // polling the load's progress
	}
	if ctx.Err() == nil {
		killedAt = time.Now()
		nodes[victim].Shutdown()
		close(killed)
	}
	wg.Wait()
	select {
	case err := <-failures:
		t.Fatal(err)
	default:
	}
	if ctx.Err() != nil {
		t.Fatalf("the load did not finish: %v", ctx.Err())
	}
	nodes[victim].WaitForShutdown()
	t.Logf("%d cycles, %d tries repeated during the failover, %d events", cycles.Load(), retried.Load(), len(rec.all()))

	// The kill was felt: SUBSTRATE_EVENTS has a new leader.
	testenv.Eventually(t, 20*time.Second, func() error {
		ictx, icancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer icancel()
		st, err := jetstream.New(nc)
		if err != nil {
			return err
		}
		s, err := st.Stream(ictx, messages.EventsStream)
		if err != nil {
			return err
		}
		if l := s.CachedInfo().Cluster; l == nil || l.Leader == "" || l.Leader == nodes[victim].Name() {
			return fmt.Errorf("%s leader: %+v", messages.EventsStream, l)
		}
		return nil
	})

	// Every success reply's effect is there: in the substrate, and
	// through the bus.
	mu.Lock()
	defer mu.Unlock()
	for name, e := range expect {
		inst, err := toys[e.host].Get(context.Background(), name)
		switch {
		case e.exists && err != nil:
			t.Errorf("%s on %s: %v, but its create succeeded", name, e.host, err)
		case e.exists && inst.State != e.state:
			t.Errorf("%s on %s is %s, its last successful request left it %s", name, e.host, inst.State, e.state)
		case !e.exists && err == nil:
			t.Errorf("%s on %s exists, but its delete succeeded", name, e.host)
		}
	}
	for h, d := range toys {
		list, _ := d.List(context.Background())
		for _, inst := range list {
			if e, found := expect[inst.Name]; !found || e.host != h {
				t.Errorf("%s on %s: no request created it there", inst.Name, h)
			}
		}
		for _, inst := range list {
			var got messages.Instance
			ok(t, nc, hostSubj("toy", h, messages.OpGet), messages.NameRequest{Name: inst.Name}, &got)
			if got.State != inst.State {
				t.Errorf("get %s on %s through the bus: %s, the substrate says %s", inst.Name, h, got.State, inst.State)
			}
		}
	}

	// Every event emitted is stored once, none twice.
	waitEventsStored(t, nc, rec.all())

	// The inventory matches the substrates.
	cjs, _ := jetstream.New(nc)
	inv, err := cjs.KeyValue(context.Background(), messages.InventoryBucket)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, func() error {
		kctx, kcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer kcancel()
		keys, err := inv.Keys(kctx)
		if err != nil && !errors.Is(err, jetstream.ErrNoKeysFound) {
			return err
		}
		want := map[string]drivers.State{}
		for h, d := range toys {
			list, _ := d.List(kctx)
			for _, i := range list {
				want[messages.InventoryKey("toy", h, i.Name)] = i.State
			}
		}
		if len(keys) != len(want) {
			return fmt.Errorf("%d inventory records for %d instances", len(keys), len(want))
		}
		for _, k := range keys {
			st, found := want[k]
			if !found {
				return fmt.Errorf("inventory record %s of no instance", k)
			}
			e, err := inv.Get(kctx, k)
			if err != nil {
				return err
			}
			var rec messages.InventoryRecord
			if err := json.Unmarshal(e.Value(), &rec); err != nil {
				return err
			}
			if rec.State != st {
				return fmt.Errorf("inventory says %s is %s, its substrate %s", k, rec.State, st)
			}
		}
		return nil
	})

	// h1 reconnected to a surviving node and keeps its heartbeat.
	w1 := workers["h1"].nc
	if w1.Status() != nats.CONNECTED || w1.ConnectedUrl() == victimURL || w1.Stats().Reconnects < 1 {
		t.Errorf("h1: %s to %s after %d reconnects; want connected to a surviving node", w1.Status(), w1.ConnectedUrl(), w1.Stats().Reconnects)
	}
	hbs, err := cjs.KeyValue(context.Background(), messages.WorkersBucket)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		for _, h := range hosts {
			e, err := hbs.Get(context.Background(), h)
			if err != nil {
				return fmt.Errorf("heartbeat of %s: %w", h, err)
			}
			var hb messages.WorkerHeartbeat
			if err := json.Unmarshal(e.Value(), &hb); err != nil {
				return err
			}
			if !hb.Time.After(killedAt) {
				return fmt.Errorf("heartbeat of %s from %v, before the kill", h, hb.Time)
			}
		}
		return nil
	})
	t.Logf("failover test: %v", time.Since(began).Round(time.Millisecond))
}
