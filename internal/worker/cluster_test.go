package worker

import (
	"errors"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/messages"
)

// startCluster runs a 3-node JetStream cluster on loopback; every node
// lists every route (the first one included).
func startCluster(t *testing.T) []*server.Server {
	t.Helper()
	ports := []int{freePort(t), freePort(t), freePort(t)}
	var routes []*url.URL
	for _, p := range ports {
		routes = append(routes, &url.URL{Scheme: "nats-route", Host: fmt.Sprintf("127.0.0.1:%d", p)})
	}
	var out []*server.Server
	for i, p := range ports {
		s, err := server.NewServer(&server.Options{
			ServerName: fmt.Sprintf("n%d", i+1), Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true,
			JetStream: true, StoreDir: t.TempDir(), JetStreamMaxMemory: 64 << 20, JetStreamMaxStore: 1 << 30,
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
	return out
}

// TestCluster: two workers on different nodes of a 3-node cluster share
// replicated streams; pooled subjects reach either, host subjects reach
// the named one, and every event is stored once.
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
		startWorker(t, nodes[i], []*manager.Manager{m}, func(o *Options) { o.Host = h; o.Replicas = 3 })
	}
	nc := connect(t, nodes[2].ClientURL())
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
