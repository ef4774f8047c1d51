package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/subbus/subbus/messages"
)

// workerStats asks the worker for its $SRV.STATS data.
func workerStats(nc *nats.Conn) (Stats, error) {
	msg, err := nc.Request("$SRV.STATS."+messages.ServiceName, nil, 2*time.Second)
	if err != nil {
		return Stats{}, err
	}
	var r struct {
		Endpoints []struct {
			Data Stats `json:"data"`
		} `json:"endpoints"`
	}
	if err := json.Unmarshal(msg.Data, &r); err != nil || len(r.Endpoints) == 0 {
		return Stats{}, fmt.Errorf("stats reply %s: %v", msg.Data, err)
	}
	return r.Endpoints[0].Data, nil
}

// TestSoak is the soak benchmark that `make bench` runs (SUBBUS_SOAK=1;
// SOAK_DURATION, default 60s): mixed load through the bus on a worker
// process (the test binary re-executed: process driver, durable outbox,
// metrics every second) with crashes injected: the worker is killed with
// SIGKILL and restarted every SOAK_DURATION/4, and the NATS server is
// restarted once in between. Load: 8 clients cycling create, start, exec,
// stop, delete of short-lived instances (some exit by themselves), 4
// clients opening and dropping logs --follow streams, and a list every
// 100 ms. It reports events produced vs stored (and fails if one is
// missing or stored twice), the list latency, and the worker's RSS and
// goroutines at the start and end of each incarnation.
func TestSoak(t *testing.T) {
	if os.Getenv("SUBBUS_SOAK") == "" {
		t.Skip("soak benchmark: SUBBUS_SOAK=1 (make bench runs it)")
	}
	duration := time.Minute
	if d, err := time.ParseDuration(os.Getenv("SOAK_DURATION")); err == nil {
		duration = d
	}
	port, store, dir := freePort(t), t.TempDir(), t.TempDir()
	s := startNATSAt(t, port, store)
	url := s.ClientURL()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	type incarnation struct {
		startRSS, endRSS int64
		startG, endG     int
	}
	var incs []incarnation
	sample := func() (Stats, bool) {
		for range 50 {
			if st, err := workerStats(nc); err == nil {
				return st, true
			}
			time.Sleep(200 * time.Millisecond)
		}
		return Stats{}, false
	}
	worker := helperWorker(t, url, dir)
	warm := func() {
		time.Sleep(2 * time.Second)
		if st, ok := sample(); ok {
			incs = append(incs, incarnation{startRSS: st.RSSBytes, startG: st.Goroutines})
		}
	}
	warm()

	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var ops, opErrs, lists atomic.Int64
	var worstList atomic.Int64
	call := func(op messages.Op, body any, key string) error {
		hdr := map[string]string{}
		if key != "" {
			hdr[messages.HeaderIdempotencyKey] = key
		}
		for ctx.Err() == nil {
			msg, err := callErr(nc, subj("process", op), body, hdr, 5*time.Second)
			if err == nil {
				var r messages.Reply
				_ = json.Unmarshal(msg.Data, &r)
				ops.Add(1)
				if r.Error != nil && r.Error.Code.Retryable() {
					time.Sleep(100 * time.Millisecond)
					continue
				}
				if r.Error != nil {
					opErrs.Add(1) // not_found, conflict… after a crash: expected
				}
				return nil
			}
			time.Sleep(100 * time.Millisecond) // worker or NATS down: retry
		}
		return ctx.Err()
	}
	for c := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(c), 7))
			for i := 0; ctx.Err() == nil; i++ {
				name := fmt.Sprintf("du-soak-%d-%d", c, i)
				cmd := []string{"sleep", "30"}
				if rng.IntN(3) == 0 {
					cmd = []string{"sh", "-c", fmt.Sprintf("echo hi; sleep 0.%d; exit %d", rng.IntN(9), rng.IntN(2))}
				}
				_ = call(messages.OpCreate, messages.CreateRequest{Template: messages.Template{Name: name, BaseImage: cmd[0], Command: cmd}}, name+"-c")
				_ = call(messages.OpStart, messages.NameRequest{Name: name}, name+"-s")
				_ = call(messages.OpExec, messages.ExecRequest{Name: name, Command: []string{"true"}}, "")
				_ = call(messages.OpStop, messages.StopRequest{Name: name}, name+"-t")
				_ = call(messages.OpDelete, messages.DeleteRequest{Name: name, Force: true}, name+"-d")
			}
		}()
	}
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				inbox := nc.NewInbox()
				sub, err := nc.Subscribe(inbox, func(m *nats.Msg) { _ = m.Respond(nil) })
				if err == nil {
					data, _ := json.Marshal(messages.LogsRequest{Name: "du-soak-0-0", Follow: true})
					_ = nc.PublishMsg(&nats.Msg{Subject: subj("process", messages.OpLogs), Reply: inbox, Data: data})
					time.Sleep(time.Second)
					_ = sub.Unsubscribe()
				}
				time.Sleep(100 * time.Millisecond)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			began := time.Now()
			if _, err := callErr(nc, subj("process", messages.OpList), nil, nil, 2*time.Second); err == nil {
				lists.Add(1)
				if d := int64(time.Since(began)); d > worstList.Load() {
					worstList.Store(d)
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()

	// Crashes: SIGKILL and restart every duration/4; NATS restarted once.
	crashes := 0
	for i := range 3 {
		time.Sleep(duration / 4)
		if st, ok := sample(); ok && len(incs) > 0 {
			incs[len(incs)-1].endRSS, incs[len(incs)-1].endG = st.RSSBytes, st.Goroutines
		}
		_ = worker.Process.Signal(syscall.SIGKILL)
		_ = worker.Wait()
		crashes++
		if i == 1 {
			s.Shutdown()
			s.WaitForShutdown()
			time.Sleep(2 * time.Second)
			s = startNATSAt(t, port, store)
		}
		worker = helperWorker(t, url, dir)
		warm()
	}
	time.Sleep(duration / 4)
	stop()
	wg.Wait()
	time.Sleep(3 * time.Second) // streams of the load end, instances settle
	if st, ok := sample(); ok && len(incs) > 0 {
		incs[len(incs)-1].endRSS, incs[len(incs)-1].endG = st.RSSBytes, st.Goroutines
	}

	// Every event produced is stored, once.
	var missing, dup, storedN int
	produced, _ := producedIDs(t, dir)
	deadline := time.Now().Add(60 * time.Second)
	for {
		stored, err := streamEventsErr(nc)
		if err == nil {
			count := map[string]int{}
			for _, e := range stored {
				count[e.ID]++
			}
			produced, _ = producedIDs(t, dir)
			missing, dup, storedN = 0, 0, len(stored)
			for _, id := range produced {
				if count[id] == 0 {
					missing++
				}
			}
			for _, n := range count {
				if n > 1 {
					dup++
				}
			}
			if missing == 0 || time.Now().After(deadline) {
				break
			}
		} else if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "soak %v: %d requests answered (%d with a non-retryable error), %d lists (worst %v), %d worker kills, 1 NATS restart\n",
		duration, ops.Load(), opErrs.Load(), lists.Load(), time.Duration(worstList.Load()).Round(time.Millisecond), crashes)
	fmt.Fprintf(&b, "events: %d produced, %d stored, %d missing, %d stored twice\n", len(produced), storedN, missing, dup)
	for i, in := range incs {
		fmt.Fprintf(&b, "worker %d: RSS %.1f -> %.1f MiB, goroutines %d -> %d\n", i+1,
			float64(in.startRSS)/(1<<20), float64(in.endRSS)/(1<<20), in.startG, in.endG)
	}
	t.Log("\n" + b.String())
	if missing > 0 || dup > 0 {
		t.Errorf("%d events missing, %d stored twice", missing, dup)
	}
	if storedN < len(produced) {
		t.Errorf("stored %d < produced %d", storedN, len(produced))
	}
}
