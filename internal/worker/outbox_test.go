package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/testenv"
)

// TestOutboxBound: past its limit the outbox keeps the newest items in
// order, drops the oldest and counts exactly the overflow.
func TestOutboxBound(t *testing.T) {
	for _, tc := range []struct{ max, push int }{
		{1, 1}, {1, 4}, {3, 2}, {3, 3}, {3, 10}, {5, 6},
	} {
		t.Run(fmt.Sprintf("max=%d,push=%d", tc.max, tc.push), func(t *testing.T) {
			o := newOutbox(tc.max)
			for i := range tc.push {
				o.push("subj."+strconv.Itoa(i), "id-"+strconv.Itoa(i), []byte(strconv.Itoa(i)))
			}
			overflow := max(tc.push-tc.max, 0)
			if got := o.dropped.Load(); got != uint64(overflow) {
				t.Errorf("dropped %d, want %d", got, overflow)
			}
			if got, want := o.len(), min(tc.push, tc.max); got != want {
				t.Fatalf("len %d, want %d", got, want)
			}
			items := o.peek(tc.push + 1)
			for k, it := range items {
				i := overflow + k // the oldest kept is the first not dropped
				if string(it.data) != strconv.Itoa(i) || it.msgID != "id-"+strconv.Itoa(i) || it.seq != uint64(i+1) {
					t.Errorf("item %d = {seq %d id %s data %s}, want push #%d", k, it.seq, it.msgID, it.data, i)
				}
			}
		})
	}
}

// TestOutboxRemoveFreesRoom: acknowledged items leave room, so later
// pushes up to the limit drop nothing more.
func TestOutboxRemoveFreesRoom(t *testing.T) {
	o := newOutbox(2)
	o.push("a", "1", nil)
	o.push("b", "2", nil)
	o.remove(map[uint64]bool{1: true})
	o.push("c", "3", nil)
	if d := o.dropped.Load(); d != 0 {
		t.Fatalf("dropped %d after an ack made room", d)
	}
	if s := o.stored.Load(); s != 1 {
		t.Errorf("stored %d, want 1", s)
	}
	o.push("d", "4", nil)
	if d, items := o.dropped.Load(), o.peek(5); d != 1 || len(items) != 2 || items[0].msgID != "3" || items[1].msgID != "4" {
		t.Fatalf("dropped %d, items %+v; want 1 dropped, items 3 and 4", d, items)
	}
}

// TestOutboxOverflowInStats: with no stream to store events (streams not
// managed and none exist, so the worker never becomes ready to publish),
// events pile up in the bounded outbox, and the micro STATS data reports
// the overflow as events_dropped.
func TestOutboxOverflowInStats(t *testing.T) {
	const size, pushed = 3, 8
	s := startNATS(t)
	url := s.ClientURL()
	w, err := New(context.Background(), Options{
		Host: "h1", Managers: []*manager.Manager{toyManager(newToy())}, Logger: testLogger(t),
		ManageStreams: false, OutboxSize: size,
		Connect: func(extra ...nats.Option) (*nats.Conn, error) { return nats.Connect(url, extra...) },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &runningWorker{Worker: w, cancel: cancel, err: make(chan error, 1)}
	go func() { r.err <- w.Run(ctx) }()
	t.Cleanup(func() { _ = r.stop(t) })
	nc := connect(t, url)

	statsData := func() (Stats, error) {
		msg, err := nc.Request("$SRV.STATS.substrate", nil, 2*time.Second)
		if err != nil {
			return Stats{}, err
		}
		var stats micro.Stats
		if err := json.Unmarshal(msg.Data, &stats); err != nil || len(stats.Endpoints) == 0 {
			return Stats{}, fmt.Errorf("stats %s: %v", msg.Data, err)
		}
		var data Stats
		if err := json.Unmarshal(stats.Endpoints[0].Data, &data); err != nil {
			return Stats{}, fmt.Errorf("stats data %s: %w", stats.Endpoints[0].Data, err)
		}
		return data, nil
	}
	testenv.Eventually(t, 30*time.Second, func() error { _, err := statsData(); return err })
	select {
	case <-w.Ready():
		t.Fatal("worker ready without streams: events would be published, not kept")
	default:
	}
	before := w.events.dropped.Load()
	pending := w.events.len()
	for i := range pushed {
		w.events.push("substrate.events.toy.h1.x.created", "ovf-"+strconv.Itoa(i), []byte(`{}`))
	}
	data, err := statsData()
	if err != nil {
		t.Fatal(err)
	}
	if want := before + uint64(pending+pushed-size); data.EventsDropped != want {
		t.Errorf("events_dropped %d, want %d (%d pushed into an outbox of %d holding %d)", data.EventsDropped, want, pushed, size, pending)
	}
	if data.EventsPending != size || data.EventsStored != 0 {
		t.Errorf("events_pending %d, events_stored %d; want %d and 0", data.EventsPending, data.EventsStored, size)
	}
}
