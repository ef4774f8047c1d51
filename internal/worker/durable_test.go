package worker

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/drivers/process"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/messages"
)

// TestHelperOutboxWorker is not a test: TestOutboxSurvivesKill9 runs the
// test binary with SUBBUS_OUTBOX_HELPER=<nats url>|<dir> and this plays a
// worker (process driver, durable outbox in <dir>/outbox) that runs until
// it is killed. It appends the id of every event it emits to
// <dir>/produced.<pid>.
func TestHelperOutboxWorker(t *testing.T) {
	arg := os.Getenv("SUBBUS_OUTBOX_HELPER")
	if arg == "" {
		t.Skip("helper process for TestOutboxSurvivesKill9")
	}
	url, dir, _ := strings.Cut(arg, "|")
	m := manager.New(process.New(process.Options{StateDir: filepath.Join(dir, "process"), Cgroups: "off"}),
		manager.Options{Host: "h1"})
	f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("produced.%d", os.Getpid())), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		fmt.Println("helper:", err)
		os.Exit(2)
	}
	var mu sync.Mutex
	m.Subscribe(func(e messages.Event) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintln(f, e.ID, e.Type)
	})
	w, err := New(context.Background(), Options{
		Host: "h1", Managers: []*manager.Manager{m}, ManageStreams: true, Logger: testLogger(t),
		OutboxDir:     filepath.Join(dir, "outbox"),
		EnableMetrics: true, MetricsInterval: time.Second,
		Connect: func(extra ...nats.Option) (*nats.Conn, error) {
			return nats.Connect(url, append([]nats.Option{nats.ReconnectWait(100 * time.Millisecond)}, extra...)...)
		},
	})
	if err != nil {
		fmt.Println("helper:", err)
		os.Exit(2)
	}
	fmt.Println("started")
	_ = w.Run(context.Background())
	os.Exit(3)
}

// helperWorker runs TestHelperOutboxWorker and waits until it printed
// "started".
func helperWorker(t *testing.T, url, dir string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperOutboxWorker$", "-test.count=1")
	cmd.Env = append(os.Environ(), "SUBBUS_OUTBOX_HELPER="+url+"|"+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if sc.Text() == "started" {
			go func() {
				for sc.Scan() {
				}
			}()
			return cmd
		}
		t.Log("helper:", sc.Text())
	}
	t.Fatal("helper worker did not start")
	return nil
}

// producedIDs reads the ids of every event the helper workers emitted,
// and those of the exits (stopped or failed).
func producedIDs(t *testing.T, dir string) (ids, exits []string) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "produced.*"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			id, typ, ok := strings.Cut(l, " ")
			if !ok {
				continue
			}
			ids = append(ids, id)
			if typ == string(drivers.EventStopped) || typ == string(drivers.EventFailed) {
				exits = append(exits, id)
			}
		}
	}
	return ids, exits
}

// TestOutboxSurvivesKill9: the scenario. An external nats-server
// goes down; instances exit meanwhile (their events can only be queued);
// the worker is killed with SIGKILL; it is restarted while NATS is still
// down; NATS comes back. Every event produced is then in SUBSTRATE_EVENTS
// exactly once (none lost, none duplicated by the replay).
func TestOutboxSurvivesKill9(t *testing.T) {
	port, store, dir := freePort(t), t.TempDir(), t.TempDir()
	s := startNATSAt(t, port, store)
	url := s.ClientURL()
	w1 := helperWorker(t, url, dir)
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	// Four instances that exit by themselves 4 s after their start (after
	// all four starts, each watched for process.start_settle, and the
	// shutdown of NATS).
	var names []string
	for i := range 4 {
		name := fmt.Sprintf("du-exit%d", i)
		names = append(names, name)
		tmpl := drivers.InstanceTemplate{Name: name, BaseImage: "sh", Command: []string{"sh", "-c", fmt.Sprintf("sleep 4; exit %d", i)}}
		testenv.Eventually(t, 20*time.Second, func() error {
			_, err := callErr(nc, subj("process", messages.OpCreate), messages.CreateRequest{Template: messages.TemplateFrom(tmpl)}, nil, 5*time.Second)
			return err
		})
	}
	for _, name := range names {
		ok(t, nc, subj("process", messages.OpStart), messages.NameRequest{Name: name}, nil)
	}
	s.Shutdown()
	s.WaitForShutdown()
	// The exits happen while NATS is down; once every one of them is in
	// the worker's outbox file, the worker is killed.
	testenv.Eventually(t, 20*time.Second, func() error {
		_, exits := producedIDs(t, dir)
		if len(exits) < 4 {
			return fmt.Errorf("%d exits so far", len(exits))
		}
		log, _ := os.ReadFile(filepath.Join(dir, "outbox", "events.log"))
		for _, id := range exits {
			if !bytes.Contains(log, []byte(`"id":"`+id+`"`)) {
				return fmt.Errorf("exit event %s not in the outbox file yet", id)
			}
		}
		return nil
	})
	all, _ := producedIDs(t, dir)
	before := len(all)
	if err := w1.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = w1.Wait()
	helperWorker(t, url, dir) // restarted while NATS is still down
	time.Sleep(300 * time.Millisecond)
	startNATSAt(t, port, store)
	produced, _ := producedIDs(t, dir)
	t.Logf("%d events produced (%d before the kill)", len(produced), before)
	testenv.Eventually(t, 30*time.Second, func() error {
		stored, err := streamEventsErr(nc)
		if err != nil {
			return err
		}
		count := map[string]int{}
		for _, e := range stored {
			count[e.ID]++
		}
		for id, n := range count {
			if n > 1 {
				return fmt.Errorf("event %s stored %d times", id, n)
			}
		}
		var missing []string
		produced, _ = producedIDs(t, dir)
		for _, id := range produced {
			if count[id] != 1 {
				missing = append(missing, id)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("%d of %d produced events not in the stream: %v", len(missing), len(produced), missing)
		}
		return nil
	})
	// The exits themselves are there: one failed event per exit status > 0
	// and a stopped one for status 0.
	stored, _ := streamEventsErr(nc)
	exits := map[string]bool{}
	for _, e := range stored {
		if strings.HasSuffix(e.Type, ".failed") || strings.HasSuffix(e.Type, ".stopped") {
			exits[e.Subject] = true
		}
	}
	for _, name := range names {
		if !exits[name] {
			t.Errorf("no exit event of %s in the stream (%d events)", name, len(stored))
		}
	}
}

// BenchmarkOutboxPush measures what an event costs before the operation
// can reply: a push to the in-memory outbox, and to the durable one (a
// write plus an fsync, shared by pushes waiting at the same time), serially
// and from 16 goroutines. scripts/bench.sh reports it in docs/benchmarks.md.
func BenchmarkOutboxPush(b *testing.B) {
	data := []byte(`{"specversion":"1.0","id":"0123456789abcdef0123456789abcdef","source":"subbus://h1/process","type":"io.subbus.instance.started","subject":"web","data":{"type":"started","instance":"web","state":"running","details":{"pid":"1234"}}}`)
	for _, tc := range []struct {
		name     string
		durable  bool
		parallel bool
	}{
		{"memory", false, false},
		{"durable", true, false},
		{"durable-16goroutines", true, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			o := newOutbox(1 << 30)
			if tc.durable {
				var err error
				if o, err = openOutbox(b.TempDir(), "events", 1<<30); err != nil {
					b.Fatal(err)
				}
				defer o.close()
			}
			b.ReportAllocs()
			if tc.parallel {
				b.SetParallelism(16)
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						o.push("substrate.events.process.h1.web.started", "id", data)
					}
				})
				return
			}
			for b.Loop() {
				o.push("substrate.events.process.h1.web.started", "id", data)
			}
		})
	}
}

// TestDurableOutboxReplay: items pushed to a durable outbox come back, in
// order with their Nats-Msg-Id, when it is opened again (after a crash: a
// torn last record is cut off); once every item is acknowledged the log is
// empty; the file stays bounded when far more is pushed than it keeps.
func TestDurableOutboxReplay(t *testing.T) {
	dir := t.TempDir()
	o, err := openOutbox(dir, "events", 100)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		o.push(fmt.Sprintf("s.%d", i), fmt.Sprintf("id-%d", i), []byte(fmt.Sprintf(`{"n":%d}`, i)))
	}
	if _, err := openOutbox(dir, "events", 100); err == nil {
		t.Fatal("a second worker opened the same outbox")
	}
	o.close()
	f, err := os.OpenFile(filepath.Join(dir, "events.log"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.Write([]byte{40, 0, 0, 0, 1, 2, 3, 4, '{', '"'}) // a torn record
	f.Close()

	o, err = openOutbox(dir, "events", 100)
	if err != nil {
		t.Fatal(err)
	}
	items := o.peek(10)
	if len(items) != 3 || o.replayed != 3 {
		t.Fatalf("replayed %d items (%d), want 3", len(items), o.replayed)
	}
	done := map[uint64]bool{}
	for i, it := range items {
		if it.subject != fmt.Sprintf("s.%d", i) || it.msgID != fmt.Sprintf("id-%d", i) || string(it.data) != fmt.Sprintf(`{"n":%d}`, i) {
			t.Errorf("item %d = %+v", i, it)
		}
		done[it.seq] = true
	}
	o.push("s.3", "id-3", []byte(`{"n":3}`)) // after the torn record was cut
	if got := o.peek(10); len(got) != 4 || got[3].msgID != "id-3" {
		t.Fatalf("after a push: %+v", got)
	}
	done[o.peek(10)[3].seq] = true
	o.remove(done)
	if n := o.diskBytes(); n != 0 {
		t.Errorf("log holds %d bytes with everything acknowledged", n)
	}
	// Bound: 50,000 pushes into an outbox keeping 100.
	data := bytes.Repeat([]byte("x"), 200)
	data = append(append([]byte(`"`), data...), '"')
	for i := range 50000 {
		o.pushNoSync("s", fmt.Sprint(i), data)
	}
	o.sync()
	if n, bound := o.diskBytes(), int64(compactFactor*100*300+compactMin); n > bound {
		t.Errorf("log holds %d bytes, bound %d", n, bound)
	}
	o.close()
	o, err = openOutbox(dir, "events", 100)
	if err != nil {
		t.Fatal(err)
	}
	defer o.close()
	if got := o.peek(1000); len(got) != 100 || got[99].msgID != "49999" {
		t.Errorf("after reopening: %d items, last %+v", len(got), got[len(got)-1])
	}
}
