package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/messages"
)

// clusterToy is the toy driver as a cluster-wide substrate: several
// workers share its instances.
type clusterToy struct{ *toy }

func (clusterToy) ClusterWide() bool { return true }

// TestLeaseAcrossWorkers: two workers serve one cluster-wide substrate on
// the pooled subject. A mutation waits while the other worker holds the
// instance's lease. When the holder dies mid-operation (its connection
// dropped without cleanup), pooled requests go on on the survivor (only
// the one in flight to the dead worker fails), the cut-off holder stops
// its operation once it cannot renew its lease (fencing), the lease
// expires after lease_ttl and the instance can be operated again. Neither
// worker writes inventory records.
func TestLeaseAcrossWorkers(t *testing.T) {
	s := startNATS(t)
	d := clusterToy{newToy()}
	var mu sync.Mutex
	var nc1 *nats.Conn
	ttl := time.Second
	w1 := startWorker(t, s, []*manager.Manager{manager.New(d, manager.Options{Host: "h1", CacheTTL: -1, RetryAttempts: 1})}, func(o *Options) {
		o.Host, o.LeaseTTL, o.GracePeriod = "h1", ttl, time.Second
		url := s.ClientURL()
		o.Connect = func(extra ...nats.Option) (*nats.Conn, error) {
			nc, err := nats.Connect(url, extra...)
			mu.Lock()
			nc1 = nc
			mu.Unlock()
			return nc, err
		}
	})
	startWorker(t, s, []*manager.Manager{manager.New(d, manager.Options{Host: "h2", CacheTTL: -1, RetryAttempts: 1})}, func(o *Options) {
		o.Host, o.LeaseTTL = "h2", ttl
	})
	nc := connect(t, s.ClientURL())

	ok(t, nc, subj("toy", messages.OpCreate), messages.CreateRequest{Template: messages.Template{Name: "vm1b", BaseImage: "x"}}, nil)

	// Serialized: a slow create on h1 holds the lease; a delete sent to h2
	// meanwhile waits for it and then finds the instance.
	created := make(chan messages.Reply, 1)
	go func() {
		r, _ := requestTimeout(nc, hostSubj("toy", "h1", messages.OpCreate), messages.CreateRequest{Template: messages.Template{
			Name: "vm1", BaseImage: "x", Metadata: map[string]string{"delay": "700ms"}}}, 10*time.Second)
		created <- r
	}()
	slowStarted(t, d.toy)
	start := time.Now()
	ok(t, nc, hostSubj("toy", "h2", messages.OpDelete), messages.DeleteRequest{Name: "vm1", Force: true}, nil)
	if waited := time.Since(start); waited < 300*time.Millisecond {
		t.Fatalf("delete on h2 did not wait for h1's lease (%v)", waited)
	}
	if r := <-created; r.Error != nil {
		t.Fatalf("create on h1: %+v", r.Error)
	}

	// The holder dies mid-operation, as close to kill -9 as a test process
	// gets: its NATS connection drops without unsubscribing, releasing or
	// replying, and its driver call never returns. Meanwhile a client keeps
	// sending start/stop of vm1 on the pooled subject.
	go func() {
		_, _ = requestTimeout(nc, hostSubj("toy", "h1", messages.OpCreate), messages.CreateRequest{Template: messages.Template{
			Name: "vm2", BaseImage: "x", Metadata: map[string]string{"delay": "20s"}}}, 30*time.Second)
	}()
	slowStarted(t, d.toy)
	type result struct {
		sent time.Time
		host string
		err  error
	}
	results := make(chan result, 4096)
	stopLoad := make(chan struct{})
	go func() {
		defer close(results)
		for i := 0; ; i++ {
			select {
			case <-stopLoad:
				return
			default:
			}
			op := messages.OpStart
			if i%2 == 1 {
				op = messages.OpStop
			}
			sent := time.Now()
			r, err := requestTimeout(nc, subj("toy", op), messages.NameRequest{Name: "vm1b"}, 2*time.Second)
			if err == nil && r.Error != nil {
				err = fmt.Errorf("%s: %s", r.Error.Code, r.Error.Message)
			}
			results <- result{sent, r.Host, err}
		}
	}()
	// Some requests before the kill.
	for range 10 {
		if r := <-results; r.err != nil {
			t.Fatalf("pooled request before the kill: %v", r.err)
		}
	}
	start = time.Now()
	mu.Lock()
	nc1.Close()
	mu.Unlock()
	// When the server has dropped h1's connection (and so its
	// subscriptions), every pooled request goes to h2.
	var gone time.Time
	testenv.Eventually(t, 10*time.Second, func() error {
		cz, err := s.Connz(&server.ConnzOptions{})
		if err != nil {
			return err
		}
		for _, c := range cz.Conns {
			if c.Name == "subbus-worker-h1" {
				return errors.New("h1's connection is still there")
			}
		}
		gone = time.Now()
		return nil
	})
	// Fencing: h1 is alive but cut off, so it cannot renew vm2's lease; it
	// stops its 20 s create once another worker may take the lease, rather
	// than finishing it behind the new holder's back.
	testenv.Eventually(t, 5*ttl, func() error {
		if n := w1.stats().InFlight; n != 0 {
			return fmt.Errorf("h1 still runs %d requests", n)
		}
		return nil
	})
	// h2's own subject: the lease of vm2 is held by the dead h1.
	ok(t, nc, hostSubj("toy", "h2", messages.OpCreate), messages.CreateRequest{Template: messages.Template{Name: "vm2", BaseImage: "x"}}, nil)
	if waited := time.Since(start); waited < ttl/2 {
		t.Fatalf("create of vm2 did not wait for the dead holder's lease to expire (%v)", waited)
	}
	// vm2 can be operated again, through any worker left.
	ok(t, nc, subj("toy", messages.OpStart), messages.NameRequest{Name: "vm2"}, nil)
	var after, before int
	loadEnd := time.Now().Add(30 * time.Second)
	for r := range results {
		switch {
		case !r.sent.After(gone):
			if r.err != nil {
				before++ // sent to h1 as it died: no reply
			}
		case r.err != nil:
			t.Errorf("pooled request sent %v after h1's connection was gone: %v", r.sent.Sub(gone), r.err)
		case r.host != "h2":
			t.Errorf("pooled request sent after h1 was gone answered by %q", r.host)
		default:
			after++
		}
		if after >= 20 || time.Now().After(loadEnd) {
			close(stopLoad)
			for range results {
			}
			break
		}
	}
	if after < 20 {
		t.Fatalf("only %d pooled requests succeeded after the kill", after)
	}
	if before > 1 {
		t.Errorf("%d pooled requests failed around the kill; only the one in flight to h1 may", before)
	}

	// No inventory records for a cluster-wide driver.
	var info struct {
		State struct {
			Msgs uint64 `json:"messages"`
		} `json:"state"`
	}
	m, err := nc.Request("$JS.API.STREAM.INFO.KV_"+messages.InventoryBucket, nil, 5*time.Second)
	if err != nil || json.Unmarshal(m.Data, &info) != nil || info.State.Msgs != 0 {
		t.Fatalf("inventory of a cluster-wide driver: %v %s", err, m.Data)
	}
}

// requestTimeout sends body to subject and decodes the reply.
func requestTimeout(nc *nats.Conn, subject string, body any, d time.Duration) (messages.Reply, error) {
	var r messages.Reply
	b, _ := json.Marshal(body)
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	m, err := nc.RequestWithContext(ctx, subject, b)
	if err != nil {
		return r, err
	}
	return r, json.Unmarshal(m.Data, &r)
}

// slowStarted waits until a slow Create of d has started.
func slowStarted(t *testing.T, d *toy) {
	t.Helper()
	select {
	case <-d.slow:
	case <-time.After(10 * time.Second):
		t.Fatal("the slow create did not start")
	}
}

// namedToy is a toy served under another driver name, cluster-wide or
// not (ClusterWide returning false is per-host).
type namedToy struct {
	*toy
	name    string
	cluster bool
}

func (d namedToy) Name() string      { return d.name }
func (d namedToy) ClusterWide() bool { return d.cluster }

// TestPooledSubjects: which drivers a worker serves on their pooled
// subject substrate.<driver>.<op> (docs/fleet.md): every driver when
// worker.pooled_drivers is absent; with it, the cluster-wide drivers
// always and the per-host drivers it lists. Host subjects are always
// served.
func TestPooledSubjects(t *testing.T) {
	s := startNATS(t)
	nc := connect(t, s.ClientURL())
	for i, tc := range []struct {
		name     string
		restrict bool
		pooled   []string
		want     map[string]bool // driver -> pooled subject answered
	}{
		{"absent: all", false, nil, map[string]bool{"ctoy": true, "ptoy": true, "qtoy": true}},
		{"empty: cluster-wide only", true, nil, map[string]bool{"ctoy": true, "ptoy": false, "qtoy": false}},
		{"listed: cluster-wide and listed", true, []string{"qtoy"}, map[string]bool{"ctoy": true, "ptoy": false, "qtoy": true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host := fmt.Sprintf("p%d", i)
			mgr := func(d drivers.Driver) *manager.Manager {
				return manager.New(d, manager.Options{Host: host, CacheTTL: -1, RetryAttempts: 1})
			}
			w := startWorker(t, s, []*manager.Manager{
				mgr(namedToy{newToy(), "ctoy", true}), mgr(namedToy{newToy(), "ptoy", false}), mgr(namedToy{newToy(), "qtoy", false}),
			}, func(o *Options) { o.Host, o.RestrictPooled, o.PooledDrivers = host, tc.restrict, tc.pooled })
			for d, pooled := range tc.want {
				ok(t, nc, hostSubj(d, host, messages.OpList), nil, nil)
				_, err := callErr(nc, subj(d, messages.OpList), nil, nil, 5*time.Second)
				if pooled && err != nil {
					t.Errorf("%s: pooled subject not served: %v", d, err)
				}
				if !pooled && !errors.Is(err, nats.ErrNoResponders) {
					t.Errorf("%s: pooled subject answered (%v), want no responders", d, err)
				}
			}
			if err := w.stop(t); err != nil {
				t.Fatal(err)
			}
		})
	}
}
