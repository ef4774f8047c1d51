package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/messages"
)

// fleetBuckets creates the fleet's buckets on nc's server and returns them.
func fleetBuckets(t *testing.T, nc *nats.Conn) (inv, workers jetstream.KeyValue) {
	t.Helper()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	inv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: messages.InventoryBucket})
	if err != nil {
		t.Fatal(err)
	}
	workers, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: messages.WorkersBucket})
	if err != nil {
		t.Fatal(err)
	}
	return inv, workers
}

func putJSON(t *testing.T, kv jetstream.KeyValue, key string, v any) {
	t.Helper()
	b, _ := json.Marshal(v)
	if _, err := kv.Put(context.Background(), key, b); err != nil {
		t.Fatal(err)
	}
}

func TestOwnerAndPlace(t *testing.T) {
	nc := startNATS(t)
	inv, workers := fleetBuckets(t, nc)
	c := New(nc, 5*time.Second)
	ctx := context.Background()
	now := time.Now()
	for _, r := range []messages.InventoryRecord{
		{Driver: "process", Host: "hosta", Name: "web.1"},
		{Driver: "process", Host: "hosta", Name: "dup"},
		{Driver: "process", Host: "hostb", Name: "dup"},
		{Driver: "docker", Host: "hostb", Name: "web.1"},
	} {
		putJSON(t, inv, messages.InventoryKey(r.Driver, r.Host, r.Name), r)
	}
	for _, tc := range []struct {
		driver, name, host string
		code               drivers.Code
		hosts              []string
	}{
		{"process", "web.1", "hosta", 0, nil},
		{"docker", "web.1", "hostb", 0, nil},
		{"process", "dup", "", drivers.InvalidArgument, []string{"hosta", "hostb"}},
		{"process", "nope", "", drivers.NotFound, nil},
		{"process", "web", "", drivers.NotFound, nil}, // a prefix of a name is not the name
	} {
		h, err := c.Owner(ctx, tc.driver, tc.name)
		if h != tc.host || drivers.CodeOf(err) != tc.code && !(tc.code == 0 && err == nil) {
			t.Errorf("Owner(%s, %s) = %q, %v; want %q code %v", tc.driver, tc.name, h, err, tc.host, tc.code)
		}
		var amb *AmbiguousError
		if tc.hosts != nil && (!errors.As(err, &amb) || !slices.Equal(amb.Hosts, tc.hosts)) {
			t.Errorf("Owner(%s): %v, want hosts %v", tc.name, err, tc.hosts)
		}
	}

	// Placement: least-loaded up host serving the driver, ties by name.
	for _, hb := range []messages.WorkerHeartbeat{
		{Host: "hosta", Drivers: []string{"process"}, Instances: map[string]int{"process": 5}, Time: now, Interval: time.Second},
		{Host: "hostb", Drivers: []string{"process", "docker"}, Instances: map[string]int{"process": 2}, Time: now, Interval: time.Second},
		{Host: "hostc", Drivers: []string{"process"}, Instances: map[string]int{"process": 2}, Time: now, Interval: time.Second},
		{Host: "hostd", Drivers: []string{"process"}, Time: now.Add(-time.Hour), Interval: time.Second}, // stale
		{Host: "hoste", Drivers: []string{"process"}, Time: now, Interval: time.Second, Stopped: true},  // down
	} {
		putJSON(t, workers, hb.Host, hb)
	}
	for driver, want := range map[string]string{"process": "hostb", "docker": "hostb"} {
		if h, err := c.Place(ctx, driver); err != nil || h != want {
			t.Errorf("Place(%s) = %q, %v; want %s", driver, h, err, want)
		}
	}
	var nw *NoWorkerError
	if _, err := c.Place(ctx, "lxc"); !errors.As(err, &nw) {
		t.Errorf("Place(lxc) = %v, want no worker", err)
	}

	// Inventory: records sorted, those of hosts not up marked stale.
	putJSON(t, inv, messages.InventoryKey("process", "hostd", "old"), messages.InventoryRecord{Driver: "process", Host: "hostd", Name: "old"})
	recs, bad, err := c.Inventory(ctx, "process")
	if err != nil || len(recs) != 4 || len(bad) != 1 || bad[0].Host != "hostd" || bad[0].Liveness != messages.LivenessStale {
		t.Fatalf("inventory: %+v %+v %v", recs, bad, err)
	}
	for _, r := range recs {
		if r.Stale != (r.Host == "hostd") {
			t.Errorf("record %s on %s: stale %v", r.Name, r.Host, r.Stale)
		}
	}
}

func TestKeyToken(t *testing.T) {
	for _, name := range []string{"web", "web.1", "a b", "_", "ü", "x>y*"} {
		tok := messages.KeyToken(name)
		back, err := messages.DecodeKeyToken(tok)
		if err != nil || back != name {
			t.Errorf("%q -> %q -> %q, %v", name, tok, back, err)
		}
		d, h, n, err := messages.ParseInventoryKey(messages.InventoryKey("process", "h1", name))
		if err != nil || d != "process" || h != "h1" || n != name {
			t.Errorf("key of %q: %s %s %q %v", name, d, h, n, err)
		}
	}
}

// TestOwnersPaths checks that the batched direct get and the key listing
// it falls back to find the same owners, deleted and purged records
// excluded, and that a credential without the direct get permission falls
// back at once (not after the request's whole timeout).
func TestOwnersPaths(t *testing.T) {
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true,
		JetStream: true, StoreDir: t.TempDir(), Users: []*server.User{
			{Username: "all", Password: "pw"},
			{Username: "nodirect", Password: "pw", Permissions: &server.Permissions{
				Publish: &server.SubjectPermission{Allow: []string{">"}, Deny: []string{directGetSubject}}}},
		}})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(5 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	conn := func(user string) *nats.Conn {
		nc, err := nats.Connect(s.ClientURL(), nats.UserInfo(user, "pw"), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	nc := conn("all")
	inv, _ := fleetBuckets(t, nc)
	ctx := context.Background()
	for _, k := range []string{"process.hosta.web", "process.hostb.web", "process.hostc.web", "process.hostd.web",
		"process.hosta.db", "docker.hoste.web", "process.hosta.webx"} {
		if _, err := inv.Put(ctx, k, []byte("{}")); err != nil {
			t.Fatal(err)
		}
	}
	if err := inv.Delete(ctx, "process.hostc.web"); err != nil {
		t.Fatal(err)
	}
	if err := inv.Purge(ctx, "process.hostd.web"); err != nil {
		t.Fatal(err)
	}
	if err := inv.Delete(ctx, "process.hosta.db"); err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{"web": {"hosta", "hostb"}, "db": nil, "nope": nil, "webx": {"hosta"}}

	direct := New(nc, 5*time.Second)
	listing := New(nc, 5*time.Second)
	listing.noDirect.Store(true)
	for name, hosts := range want {
		for what, c := range map[string]*Client{"direct get": direct, "key listing": listing} {
			got, err := c.Owners(ctx, "process", name)
			if err != nil || !slices.Equal(got, hosts) {
				t.Errorf("%s: Owners(process, %s) = %v, %v; want %v", what, name, got, err, hosts)
			}
		}
	}
	if direct.noDirect.Load() {
		t.Error("the direct get path fell back to the key listing on a server that supports it")
	}

	c := New(conn("nodirect"), 5*time.Second)
	t0 := time.Now()
	got, err := c.Owners(ctx, "process", "web")
	if err != nil || !slices.Equal(got, want["web"]) {
		t.Errorf("without the permission: Owners = %v, %v; want %v", got, err, want["web"])
	}
	if el := time.Since(t0); el > 3*time.Second || !c.noDirect.Load() {
		t.Errorf("without the permission: fell back %v after %v, want at once", c.noDirect.Load(), el)
	}
}

// TestSnapshotUnderWrites: reading the inventory and the heartbeats while
// the fleet rewrites its keys still returns every key (the watcher's own
// "initial values done" marker can come early then).
func TestSnapshotUnderWrites(t *testing.T) {
	nc := startNATS(t)
	inv, _ := fleetBuckets(t, nc)
	ctx := context.Background()
	const n = 300
	key := func(i int) string { return fmt.Sprintf("process.h%03d.web", i) }
	for i := range n {
		putJSON(t, inv, key(i), messages.InventoryRecord{Driver: "process", Host: fmt.Sprintf("h%03d", i), Name: "web"})
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // rewrite the keys, lowest first, as resyncs do
		defer close(done)
		for i := 0; ; i = (i + 1) % n {
			select {
			case <-stop:
				return
			default:
			}
			b, _ := json.Marshal(messages.InventoryRecord{Driver: "process", Host: fmt.Sprintf("h%03d", i), Name: "web"})
			_, _ = inv.Put(ctx, key(i), b)
		}
	}()
	defer func() { close(stop); <-done }()
	c := New(nc, 10*time.Second)
	for range 20 {
		recs, _, err := c.Inventory(ctx, "process")
		if err != nil || len(recs) != n {
			t.Fatalf("inventory while keys are rewritten: %d records of %d (%v)", len(recs), n, err)
		}
	}
}
