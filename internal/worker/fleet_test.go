package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/messages"
)

// TestInventoryAndHeartbeat: a worker writes a record before replying to a
// create, removes it before replying to a delete, picks up instances
// created and removed behind its back at the next resync, and keeps its
// heartbeat; a clean shutdown marks it stopped and leaves the records.
func TestInventoryAndHeartbeat(t *testing.T) {
	s := startNATS(t)
	d := newToy()
	w := startWorker(t, s, []*manager.Manager{toyManager(d)}, func(o *Options) {
		o.InventoryResync = 200 * time.Millisecond
		o.LivenessInterval = 100 * time.Millisecond
	})
	nc := connect(t, s.ClientURL())
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	var inv, hbs jetstream.KeyValue
	testenv.Eventually(t, 10*time.Second, func() (err error) {
		if inv, err = js.KeyValue(ctx, messages.InventoryBucket); err != nil {
			return err
		}
		hbs, err = js.KeyValue(ctx, messages.WorkersBucket)
		return err
	})
	record := func(name string) (messages.InventoryRecord, error) {
		var r messages.InventoryRecord
		e, err := inv.Get(ctx, messages.InventoryKey("toy", "h1", name))
		if err != nil {
			return r, err
		}
		return r, json.Unmarshal(e.Value(), &r)
	}

	// The record exists when the create's reply arrives: no polling.
	ok(t, nc, subj("toy", messages.OpCreate), messages.CreateRequest{Template: messages.Template{Name: "web.1", BaseImage: "img",
		Metadata: map[string]string{"team": "qa"}}}, nil)
	r, err := record("web.1")
	if err != nil || r.Driver != "toy" || r.Host != "h1" || r.Name != "web.1" || r.ID != "web.1" || r.State != drivers.StateStopped ||
		r.Image != "img" || r.ConfirmedAt.IsZero() {
		t.Fatalf("record after create: %+v %v", r, err)
	}
	if k := messages.InventoryKey("toy", "h1", "web.1"); k != "toy.h1.=d2ViLjE" {
		t.Fatalf("key %q", k)
	}
	ok(t, nc, subj("toy", messages.OpStart), messages.NameRequest{Name: "web.1"}, nil)
	if r, err := record("web.1"); err != nil || r.State != drivers.StateRunning {
		t.Fatalf("record after start: %+v %v", r, err)
	}
	ok(t, nc, subj("toy", messages.OpDelete), messages.DeleteRequest{Name: "web.1", Force: true}, nil)
	if _, err := record("web.1"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("record after delete: %v", err)
	}

	// Behind subbus's back: seen at the next resync, and removed once gone.
	d.mu.Lock()
	d.instances["native"] = drivers.Instance{Name: "native", ID: "n1", State: drivers.StateRunning}
	d.mu.Unlock()
	testenv.Eventually(t, 5*time.Second, func() error { _, err := record("native"); return err })
	first, _ := record("native")
	testenv.Eventually(t, 5*time.Second, func() error {
		if r, _ := record("native"); !r.ConfirmedAt.After(first.ConfirmedAt) {
			return errors.New("confirmed_at not refreshed by the resync")
		}
		return nil
	})
	d.mu.Lock()
	delete(d.instances, "native")
	d.mu.Unlock()
	testenv.Eventually(t, 5*time.Second, func() error {
		if _, err := record("native"); !errors.Is(err, jetstream.ErrKeyNotFound) {
			return fmt.Errorf("record of a gone instance: %v", err)
		}
		return nil
	})

	// Heartbeat: up while serving, stopped after a clean shutdown.
	heartbeat := func() (messages.WorkerHeartbeat, error) {
		var hb messages.WorkerHeartbeat
		e, err := hbs.Get(ctx, "h1")
		if err != nil {
			return hb, err
		}
		return hb, json.Unmarshal(e.Value(), &hb)
	}
	testenv.Eventually(t, 5*time.Second, func() error {
		hb, err := heartbeat()
		if err != nil || hb.Liveness(time.Now()) != messages.LivenessUp || !hb.Serves("toy") || hb.Interval != 100*time.Millisecond {
			return fmt.Errorf("heartbeat %+v %v", hb, err)
		}
		return nil
	})
	d.mu.Lock()
	d.instances["kept"] = drivers.Instance{Name: "kept", ID: "k", State: drivers.StateRunning}
	d.mu.Unlock()
	testenv.Eventually(t, 5*time.Second, func() error { _, err := record("kept"); return err })
	if err := w.stop(t); err != nil {
		t.Fatal(err)
	}
	if hb, err := heartbeat(); err != nil || hb.Liveness(time.Now()) != messages.LivenessDown {
		t.Fatalf("heartbeat after shutdown: %+v %v", hb, err)
	}
	if _, err := record("kept"); err != nil {
		t.Fatalf("records must stay after shutdown: %v", err)
	}
}

func TestLiveness(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		hb   messages.WorkerHeartbeat
		want string
	}{
		{messages.WorkerHeartbeat{Time: now.Add(-time.Second), Interval: time.Second}, messages.LivenessUp},
		{messages.WorkerHeartbeat{Time: now.Add(-4 * time.Second), Interval: time.Second}, messages.LivenessStale},
		{messages.WorkerHeartbeat{Time: now, Interval: time.Second, Stopped: true}, messages.LivenessDown},
		// A tiny interval is judged as at least 1s.
		{messages.WorkerHeartbeat{Time: now.Add(-2 * time.Second), Interval: time.Millisecond}, messages.LivenessUp},
	} {
		if got := tc.hb.Liveness(now); got != tc.want {
			t.Errorf("%+v: %s, want %s", tc.hb, got, tc.want)
		}
	}
}

// TestResyncYieldsToNewerWrites: a resync whose list was taken before a
// request wrote a record (a delete or a create racing with it) leaves that
// record alone; once a later resync has listed, its writes go through.
func TestResyncYieldsToNewerWrites(t *testing.T) {
	f := newFleetState([]string{"process"})
	const key = "process.h1.web"
	listed := time.Now()
	var wrote []string
	f.write(key, time.Time{}, func() { wrote = append(wrote, "request delete") })
	f.write(key, listed, func() { wrote = append(wrote, "stale resync put") })
	f.write("process.h1.other", listed, func() { wrote = append(wrote, "resync put of another") })
	f.forget("process.h1.", listed) // the mark is newer than this list: kept
	f.write(key, listed, func() { wrote = append(wrote, "stale resync put again") })
	later := time.Now().Add(time.Millisecond)
	f.forget("process.h1.", later)
	f.write(key, later, func() { wrote = append(wrote, "fresh resync put") })
	want := []string{"request delete", "resync put of another", "fresh resync put"}
	if fmt.Sprint(wrote) != fmt.Sprint(want) {
		t.Fatalf("writes %q, want %q", wrote, want)
	}
}
