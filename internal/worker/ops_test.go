package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/subbus/subbus/client"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/messages"
)

// stubborn is a command that ignores SIGTERM (and so do its children): a
// graceful stop of it takes its whole grace period and ends in a kill.
// It prints "ready" once the trap is set.
var stubborn = []string{"/bin/sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done"}

// createRunning creates and starts a process instance running command.
func createRunning(t *testing.T, cl *client.Client, name string, command []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cl.Do(ctx, "process", "", messages.OpCreate, messages.CreateRequest{Template: messages.Template{Name: name, Command: command}}, nil); err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = cl.Do(ctx, "process", "", messages.OpDelete, messages.DeleteRequest{Name: name, Force: true}, nil)
	})
	if err := cl.Do(ctx, "process", "", messages.OpStart, messages.NameRequest{Name: name}, nil); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	if len(command) > 0 && strings.Contains(command[len(command)-1], "echo ready") {
		testenv.Eventually(t, 20*time.Second, func() error {
			var lines []messages.LogLine
			if err := cl.Do(ctx, "process", "", messages.OpLogs, messages.LogsRequest{Name: name}, &lines); err != nil {
				return err
			}
			for _, l := range lines {
				if l.Line == "ready" {
					return nil
				}
			}
			return fmt.Errorf("%s not ready: %v", name, lines)
		})
	}
}

func getInstance(t *testing.T, cl *client.Client, name string) messages.Instance {
	t.Helper()
	var inst messages.Instance
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cl.Do(ctx, "process", "", messages.OpGet, messages.NameRequest{Name: name}, &inst); err != nil {
		t.Fatalf("get %s: %v", name, err)
	}
	return inst
}

func tctx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestLongOperationsProcess runs long operations of the real process
// driver in the background through the bus: accepted at once with a
// record readable at once, progress on the ops subject and in
// SUBSTRATE_OPS, results, cancel reaching the driver through the op's
// context, the worker's operations limit, idempotent no-wait retries, an
// op surviving its client's disconnect, and no-wait refused on ops that
// are not long.
func TestLongOperationsProcess(t *testing.T) {
	w, nc := startProcessWorker(t, func(o *Options) { o.MaxOperations = 2 })
	cl := client.New(nc, 30*time.Second)
	slow := uniqueName("lo-slow")
	createRunning(t, cl, slow, stubborn)

	// Every change is published on the ops subject.
	var (
		mu   sync.Mutex
		seen = map[string][]messages.Operation{}
	)
	sub, err := nc.Subscribe(messages.SubjectRoot+"."+messages.OpsToken+".process.h1.*", func(m *nats.Msg) {
		var o messages.Operation
		if json.Unmarshal(m.Data, &o) == nil {
			mu.Lock()
			seen[o.ID] = append(seen[o.ID], o)
			mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	t.Run("create in the background", func(t *testing.T) {
		name := uniqueName("lo-bg")
		t.Cleanup(func() {
			_ = cl.Do(context.Background(), "process", "", messages.OpDelete, messages.DeleteRequest{Name: name, Force: true}, nil)
		})
		start := time.Now()
		o, err := cl.Begin(tctx(t, 10*time.Second), "process", "", messages.OpCreate,
			messages.CreateRequest{Template: messages.Template{Name: name, Command: []string{"/bin/sleep", "60"}}})
		if err != nil {
			t.Fatal(err)
		}
		if o.ID == "" || o.State != messages.OpRunning || o.Op != messages.OpCreate || o.Instance != name || o.Host != "h1" ||
			o.Progress != "creating "+name || o.Seq != 1 || o.RequestID == "" {
			t.Fatalf("accepted %+v", o)
		}
		// The record exists as soon as the id is known.
		if got, err := cl.Op(tctx(t, 5*time.Second), o.ID); err != nil || got.ID != o.ID {
			t.Fatalf("Op right after Begin: %+v %v", got, err)
		}
		var lines []string
		final, err := cl.Wait(tctx(t, 30*time.Second), o.ID, func(o messages.Operation) { lines = append(lines, o.Progress) })
		if err != nil || final.State != messages.OpSucceeded || final.Ended.IsZero() || final.Seq != 2 {
			t.Fatalf("wait: %+v %v", final, err)
		}
		if len(lines) == 0 || !strings.HasPrefix(lines[len(lines)-1], "created after ") {
			t.Fatalf("progress lines %q", lines)
		}
		var inst messages.Instance
		if err := json.Unmarshal(final.Result, &inst); err != nil || inst.Name != name || inst.Host != "h1" {
			t.Fatalf("result %s: %v", final.Result, err)
		}
		if time.Since(start) > 20*time.Second {
			t.Fatalf("took %v", time.Since(start))
		}
		testenv.Eventually(t, 5*time.Second, func() error {
			mu.Lock()
			defer mu.Unlock()
			if n := len(seen[o.ID]); n != 2 || seen[o.ID][1].State != messages.OpSucceeded {
				return fmt.Errorf("%d messages on the ops subject: %+v", n, seen[o.ID])
			}
			return nil
		})
	})

	t.Run("cancel a stop waiting for its grace", func(t *testing.T) {
		o, err := cl.Begin(tctx(t, 10*time.Second), "process", "", messages.OpStop, messages.StopRequest{Name: slow, Timeout: "10m"})
		if err != nil {
			t.Fatal(err)
		}
		if o.Progress != "stopping "+slow+" (grace 10m0s)" {
			t.Fatalf("progress %q", o.Progress)
		}
		// Still running after a moment: the grace is long.
		time.Sleep(300 * time.Millisecond)
		if got, _ := cl.Op(tctx(t, 5*time.Second), o.ID); got.State != messages.OpRunning {
			t.Fatalf("op %+v", got)
		}
		c, err := cl.Cancel(tctx(t, 10*time.Second), o.ID)
		if err != nil || !c.CancelRequested {
			t.Fatalf("cancel: %+v %v", c, err)
		}
		start := time.Now()
		final, err := cl.Wait(tctx(t, 30*time.Second), o.ID, nil)
		if final.State != messages.OpCancelled || drivers.CodeOf(err) != drivers.Timeout || !strings.HasPrefix(final.Progress, "cancelled after ") {
			t.Fatalf("after cancel: %+v %v", final, err)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Fatalf("cancel took %v", d)
		}
		// The stop was abandoned: the instance was not killed.
		if inst := getInstance(t, cl, slow); inst.State != drivers.StateRunning {
			t.Fatalf("instance after a cancelled stop: %s", inst.State)
		}
		// Cancelling an ended operation changes nothing.
		again, err := cl.Cancel(tctx(t, 10*time.Second), o.ID)
		if err != nil || again.State != messages.OpCancelled || again.Seq != final.Seq {
			t.Fatalf("second cancel: %+v %v", again, err)
		}
	})

	t.Run("the operations limit", func(t *testing.T) {
		other := uniqueName("lo-slow2")
		createRunning(t, cl, other, stubborn)
		a, err := cl.Begin(tctx(t, 10*time.Second), "process", "", messages.OpStop, messages.StopRequest{Name: slow, Timeout: "10m"})
		if err != nil {
			t.Fatal(err)
		}
		b, err := cl.Begin(tctx(t, 10*time.Second), "process", "", messages.OpStop, messages.StopRequest{Name: other, Timeout: "10m"})
		if err != nil {
			t.Fatal(err)
		}
		if w.ops.count() != 2 {
			t.Fatalf("%d running", w.ops.count())
		}
		_, err = cl.Begin(tctx(t, 10*time.Second), "process", "", messages.OpDelete, messages.DeleteRequest{Name: other, Force: true})
		if drivers.CodeOf(err) != drivers.Unavailable || !strings.Contains(err.Error(), "max_operations") {
			t.Fatalf("third operation: %v", err)
		}
		for _, id := range []string{a.ID, b.ID} {
			if _, err := cl.Cancel(tctx(t, 10*time.Second), id); err != nil {
				t.Fatal(err)
			}
			if f, _ := cl.Wait(tctx(t, 30*time.Second), id, nil); f.State != messages.OpCancelled {
				t.Fatalf("%s: %+v", id, f)
			}
		}
		testenv.Eventually(t, 5*time.Second, func() error {
			if n := w.ops.count(); n != 0 {
				return fmt.Errorf("%d still tracked", n)
			}
			return nil
		})
	})

	t.Run("survives its client and ends in a kill", func(t *testing.T) {
		nc2 := connect(t, nc.ConnectedUrl())
		c2 := client.New(nc2, 10*time.Second)
		// The same idempotency key: the same operation.
		ctx := client.WithIdempotencyKey(tctx(t, 10*time.Second), "lo-key-"+slow)
		o, err := c2.Begin(ctx, "process", "", messages.OpStop, messages.StopRequest{Name: slow, Timeout: "1s"})
		if err != nil {
			t.Fatal(err)
		}
		dup, err := c2.Begin(ctx, "process", "", messages.OpStop, messages.StopRequest{Name: slow, Timeout: "1s"})
		if err != nil || dup.ID != o.ID {
			t.Fatalf("retry with the same key: %+v %v (first %s)", dup, err, o.ID)
		}
		nc2.Close() // the client goes away
		final, err := cl.Wait(tctx(t, 30*time.Second), o.ID, nil)
		if err != nil || final.State != messages.OpSucceeded || !strings.HasPrefix(final.Progress, "killed after ") {
			t.Fatalf("stop after the client left: %+v %v", final, err)
		}
		if inst := getInstance(t, cl, slow); inst.State != drivers.StateStopped {
			t.Fatalf("instance %s", inst.State)
		}
	})

	t.Run("failures end the operation, not the request", func(t *testing.T) {
		o, err := cl.Begin(tctx(t, 10*time.Second), "process", "h1", messages.OpDelete, messages.DeleteRequest{Name: "lo-nosuch"})
		if err != nil {
			t.Fatal(err)
		}
		final, err := cl.Wait(tctx(t, 30*time.Second), o.ID, nil)
		if final.State != messages.OpFailed || drivers.CodeOf(err) != drivers.NotFound || final.Error == nil ||
			!strings.HasPrefix(final.Progress, "failed after ") {
			t.Fatalf("delete of a missing instance: %+v %v", final, err)
		}
	})

	t.Run("refused at once", func(t *testing.T) {
		// no-wait on an op that is not long
		wantErr(t, nc, subj("process", messages.OpGet), messages.NameRequest{Name: slow}, map[string]string{messages.HeaderNoWait: "1"},
			drivers.InvalidArgument)
		if _, err := cl.Begin(tctx(t, 5*time.Second), "process", "", messages.OpStart, messages.NameRequest{Name: slow}); drivers.CodeOf(err) != drivers.InvalidArgument {
			t.Fatalf("Begin(start): %v", err)
		}
		// shape errors are the request's
		wantErr(t, nc, hostSubj("process", "h1", messages.OpStop), map[string]any{"name": slow, "timeout": "soon"},
			map[string]string{messages.HeaderNoWait: "1"}, drivers.InvalidArgument)
		// an unknown operation
		if _, err := cl.Op(tctx(t, 5*time.Second), "lo0000"); drivers.CodeOf(err) != drivers.NotFound {
			t.Fatalf("Op(unknown): %v", err)
		}
		wantErr(t, nc, hostSubj("process", "h1", messages.OpCancel), messages.CancelRequest{ID: "lo0000"}, nil, drivers.NotFound)
		wantErr(t, nc, hostSubj("process", "h1", messages.OpCancel), messages.CancelRequest{ID: "a.b"}, nil, drivers.InvalidArgument)
	})

	t.Run("list", func(t *testing.T) {
		all, err := cl.Ops(tctx(t, 10*time.Second), client.OpFilter{Driver: "process", Host: "h1"})
		if err != nil || len(all) < 5 {
			t.Fatalf("ops: %d %v", len(all), err)
		}
		cancelled, err := cl.Ops(tctx(t, 10*time.Second), client.OpFilter{State: messages.OpCancelled, Instance: slow})
		if err != nil || len(cancelled) != 2 {
			t.Fatalf("cancelled ops of %s: %+v %v", slow, cancelled, err)
		}
		for i := 1; i < len(all); i++ {
			if all[i].Started.Before(all[i-1].Started) {
				t.Fatal("not oldest first")
			}
		}
	})
}

// TestLostOperationsMarkedFailed: records a dead run of the worker left
// running are marked failed (code unavailable, "lost") when the worker of
// that host starts again; readers see them lost while the host's
// heartbeat is not up. (cmd/worker's TestLongOperationLostWhenKilled kills
// a real worker process mid-operation.)
func TestLostOperationsMarkedFailed(t *testing.T) {
	s := startNATS(t)
	nc := connect(t, s.ClientURL())
	js, _ := jetstream.New(nc)
	ctx := tctx(t, 30*time.Second)
	kv, err := js.CreateKeyValue(ctx, opsBucketConfig(Options{}.withDefaults()))
	if err != nil {
		t.Fatal(err)
	}
	hbs, err := js.CreateKeyValue(ctx, BucketConfigs(Options{}, false)[2])
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	left := messages.Operation{ID: "lo1", Driver: "toy", Host: "h1", Op: messages.OpStop, Instance: "a", RequestID: "r",
		State: messages.OpRunning, Progress: "stopping a", Seq: 1, Started: now, Updated: now}
	other := left
	other.ID, other.Host = "lo2", "h2"
	for _, o := range []messages.Operation{left, other} {
		b, _ := json.Marshal(o)
		if _, err := kv.Put(ctx, o.Key(), b); err != nil {
			t.Fatal(err)
		}
	}
	// h1's last heartbeat is old: readers call its running operation lost.
	hb, _ := json.Marshal(messages.WorkerHeartbeat{Host: "h1", Drivers: []string{"toy"}, Time: now.Add(-time.Minute), Interval: time.Second})
	if _, err := hbs.Put(ctx, "h1", hb); err != nil {
		t.Fatal(err)
	}
	cl := client.New(nc, 10*time.Second)
	if o, err := cl.Op(ctx, "lo1"); err != nil || !o.Lost || o.State != messages.OpRunning {
		t.Fatalf("before the restart: %+v %v", o, err)
	}
	if _, err := cl.Wait(ctx, "lo1", nil); drivers.CodeOf(err) != drivers.Unavailable {
		t.Fatalf("wait on a lost operation: %v", err)
	}

	startWorker(t, s, []*manager.Manager{toyManager(newToy())}, nil)
	testenv.Eventually(t, 10*time.Second, func() error {
		o, err := cl.Op(ctx, "lo1")
		if err != nil {
			return err
		}
		if o.State != messages.OpFailed || o.Error == nil || o.Error.Code != drivers.Unavailable ||
			!strings.HasPrefix(o.Error.Message, "lost:") || o.Lost || o.Ended.IsZero() {
			return fmt.Errorf("record %+v", o)
		}
		return nil
	})
	// Another host's record is not this worker's to mark.
	if o, err := cl.Op(ctx, "lo2"); err != nil || o.State != messages.OpRunning {
		t.Fatalf("h2's operation: %+v %v", o, err)
	}
}

// TestLongOperationAtShutdown: a worker shutting down waits its grace
// period for its operations like for requests, then cancels them; their
// records say why (failed, unavailable) instead of staying running. The
// stats count them meanwhile.
func TestLongOperationAtShutdown(t *testing.T) {
	w, nc := startProcessWorker(t, func(o *Options) { o.GracePeriod = 300 * time.Millisecond })
	cl := client.New(nc, 30*time.Second)
	name := uniqueName("lo-shut")
	createRunning(t, cl, name, stubborn)
	// Once the worker is gone no delete can reach the instance: kill its
	// process group at the end.
	pid := getInstance(t, cl, name).PID
	if pid <= 1 {
		t.Fatalf("no pid in %+v", getInstance(t, cl, name))
	}
	t.Cleanup(func() { _ = syscall.Kill(-pid, syscall.SIGKILL) })
	o, err := cl.Begin(tctx(t, 10*time.Second), "process", "", messages.OpStop, messages.StopRequest{Name: name, Timeout: "10m"})
	if err != nil {
		t.Fatal(err)
	}
	if st := w.stats(); st.Operations != 1 || st.MaxOperations != DefaultMaxOperations {
		t.Fatalf("stats: %d of %d operations", st.Operations, st.MaxOperations)
	}
	if err := w.stop(t); err != nil {
		t.Fatal(err)
	}
	got, err := cl.Op(tctx(t, 10*time.Second), o.ID)
	if err != nil || got.State != messages.OpFailed || got.Error == nil || got.Error.Code != drivers.Unavailable ||
		!strings.Contains(got.Error.Message, "shut down") {
		t.Fatalf("record after the shutdown: %+v %v", got, err)
	}
}

// TestNoOpsBucketWithoutManageStreams: a fleet set up before long
// operations (manage_streams false, no SUBSTRATE_OPS) keeps its inventory
// and heartbeats; a no-wait request is refused unavailable, nothing done,
// and synchronous requests work.
func TestNoOpsBucketWithoutManageStreams(t *testing.T) {
	s := startNATS(t)
	nc := connect(t, s.ClientURL())
	js, _ := jetstream.New(nc)
	ctx := tctx(t, 30*time.Second)
	if err := EnsureStreams(ctx, js, Options{}, true, testLogger(t)); err != nil {
		t.Fatal(err)
	}
	for _, cfg := range BucketConfigs(Options{}, false) {
		if cfg.Bucket == messages.OpsBucket {
			continue
		}
		if _, err := js.CreateKeyValue(ctx, cfg); err != nil {
			t.Fatal(err)
		}
	}
	d := newToy()
	startWorker(t, s, []*manager.Manager{toyManager(d)}, func(o *Options) {
		o.ManageStreams = false
		o.LivenessInterval = 100 * time.Millisecond
	})
	cl := client.New(nc, 10*time.Second)
	testenv.Eventually(t, 10*time.Second, func() error {
		hbs, err := cl.Heartbeats(ctx)
		if err != nil || hbs["h1"].Liveness(time.Now()) != messages.LivenessUp {
			return fmt.Errorf("no heartbeat: %v %v", hbs, err)
		}
		return nil
	})
	_, err := cl.Begin(ctx, "toy", "h1", messages.OpCreate, messages.CreateRequest{Template: messages.Template{Name: "a", BaseImage: "img"}})
	if drivers.CodeOf(err) != drivers.Unavailable || !strings.Contains(err.Error(), messages.OpsBucket) {
		t.Fatalf("no-wait without the bucket: %v", err)
	}
	if n := d.creates.Load(); n != 0 {
		t.Fatalf("%d creates ran", n)
	}
	if err := cl.Do(ctx, "toy", "h1", messages.OpCreate, messages.CreateRequest{Template: messages.Template{Name: "a", BaseImage: "img"}}, nil); err != nil {
		t.Fatalf("synchronous create: %v", err)
	}
}
