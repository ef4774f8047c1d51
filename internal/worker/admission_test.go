package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/messages"
)

// quietToy is a toy whose followed logs emit nothing: a stream then costs
// only its heartbeats, so the test measures admission, not output.
type quietToy struct{ *toy }

func (d quietToy) Logs(ctx context.Context, name string, o drivers.LogOptions, emit func(drivers.LogLine) error) error {
	if _, err := d.Get(ctx, name); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}

// openFollow starts a logs --follow stream of instance x on nc, inbox
// under nc's inbox prefix, acknowledging every chunk; the returned channel
// gets the final chunk's error code ("" for none).
func openFollow(t *testing.T, nc *nats.Conn) <-chan string {
	t.Helper()
	inbox := nc.NewInbox()
	final := make(chan string, 1)
	var once sync.Once
	_, err := nc.Subscribe(inbox, func(m *nats.Msg) {
		if m.Reply != "" {
			_ = m.Respond(nil)
		}
		var ch messages.Chunk
		if json.Unmarshal(m.Data, &ch) == nil && (ch.Final || ch.Error != nil) {
			code := ""
			if ch.Error != nil {
				code = ch.Error.Code.String()
			}
			once.Do(func() { final <- code })
		}
		if m.Header.Get(messages.HeaderErrorCode) != "" {
			once.Do(func() { final <- m.Header.Get(messages.HeaderErrorCode) })
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	data, _ := json.Marshal(messages.LogsRequest{Name: "x", Follow: true})
	if err := nc.PublishMsg(&nats.Msg{Subject: subj("toy", messages.OpLogs), Reply: inbox, Data: data}); err != nil {
		t.Fatal(err)
	}
	return final
}

// TestStreamsNeverStarveUnary: 200 logs --follow clients (each its own
// connection and inbox prefix) hold streams, and a list every 100 ms still
// answers within its normal latency (unary requests have their own slots).
// One client cannot take more than its share; streams of clients that went
// away free their slots within a heartbeat interval.
func TestStreamsNeverStarveUnary(t *testing.T) {
	d := quietToy{newToy()}
	m := manager.New(d, manager.Options{Host: "h1", CacheTTL: -1, RetryAttempts: 1})
	if _, err := m.Create(context.Background(), drivers.InstanceTemplate{Name: "x", BaseImage: "x"}); err != nil {
		t.Fatal(err)
	}
	s := startNATS(t)
	w := startWorker(t, s, []*manager.Manager{m}, func(o *Options) {
		o.MaxConcurrent = 8 // fewer unary slots than streams make the starvation obvious
		o.MaxStreams = 256
		o.MaxStreamsPerClient = 32
		o.HeartbeatInterval = 3 * time.Second
	})
	nc := connect(t, s.ClientURL())
	list := func() time.Duration {
		began := time.Now()
		if _, err := callErr(nc, subj("toy", messages.OpList), nil, nil, 5*time.Second); err != nil {
			t.Fatalf("list: %v", err)
		}
		return time.Since(began)
	}
	var normal time.Duration
	for range 10 {
		normal = max(normal, list())
	}
	// Starvation means no answer at all (every unary slot taken: the list
	// times out); the bound only absorbs the noise of a shared machine.
	bound := max(10*normal, time.Second)

	var conns []*nats.Conn
	for i := range 200 {
		c, err := nats.Connect(s.ClientURL(), nats.CustomInboxPrefix(fmt.Sprintf("_INBOX_du%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		openFollow(t, c)
	}
	testenv.Eventually(t, 20*time.Second, func() error {
		if st := w.stats(); st.Streams != 200 || st.StreamClients != 200 {
			return fmt.Errorf("%d streams of %d clients", st.Streams, st.StreamClients)
		}
		return nil
	})
	var worst time.Duration
	for range 30 {
		took := list()
		worst = max(worst, took)
		if took > bound {
			t.Errorf("list took %v with 200 streams open (normal %v, bound %v)", took, normal, bound)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("list: normal %v, worst with 200 streams %v", normal, worst)

	// One client gets at most its share; the rest is refused at once.
	greedy, err := nats.Connect(s.ClientURL(), nats.CustomInboxPrefix("_INBOX_dugreedy"))
	if err != nil {
		t.Fatal(err)
	}
	var finals []<-chan string
	for range 40 {
		finals = append(finals, openFollow(t, greedy))
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		if st := w.stats(); st.StreamsRejected != 8 || st.Streams != 232 {
			return fmt.Errorf("stats: %d streams, %d rejected; want 232 and 8 (share 32 of 40)", st.Streams, st.StreamsRejected)
		}
		return nil
	})
	codes := map[string]int{}
	testenv.Eventually(t, 5*time.Second, func() error {
		for _, f := range finals {
			select {
			case code := <-f:
				codes[code]++
			default:
			}
		}
		if n := codes[fmt.Sprint(int(drivers.Unavailable))] + codes[drivers.Unavailable.String()]; n != 8 || len(codes) != 1 {
			return fmt.Errorf("final codes %v, want 8 x unavailable", codes)
		}
		return nil
	})

	// Clients that go away free their slots promptly.
	for _, c := range conns {
		c.Close()
	}
	greedy.Close()
	testenv.Eventually(t, 20*time.Second, func() error {
		if st := w.stats(); st.Streams != 0 {
			return fmt.Errorf("%d streams still open after their clients left", st.Streams)
		}
		return nil
	})
}

// TestInvalidUTF8ChangesNothing: through the bus, a create whose name,
// environment, command or labels hold invalid UTF-8 (raw bytes or a lone
// surrogate escape) is invalid_argument and creates nothing; nothing is
// rewritten to U+FFFD.
func TestInvalidUTF8ChangesNothing(t *testing.T) {
	d := newToy()
	s := startNATS(t)
	startWorker(t, s, []*manager.Manager{toyManager(d)}, nil)
	nc := connect(t, s.ClientURL())
	for _, body := range []string{
		"{\"template\":{\"name\":\"a\xff\",\"base_image\":\"x\"}}",
		"{\"template\":{\"name\":\"a\",\"base_image\":\"x\",\"environment\":{\"K\":\"v\xff\"}}}",
		`{"template":{"name":"a","base_image":"x","environment":{"K":"\udc80"}}}`,
		"{\"template\":{\"name\":\"a\",\"base_image\":\"x\",\"command\":[\"echo\",\"\xc3\"]}}",
		"{\"template\":{\"name\":\"a\",\"base_image\":\"x\",\"metadata\":{\"k\":\"\xe2\x82\"}}}",
	} {
		msg, err := nc.Request(subj("toy", messages.OpCreate), []byte(body), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var r messages.Reply
		if err := json.Unmarshal(msg.Data, &r); err != nil || r.Error == nil || r.Error.Code != drivers.InvalidArgument {
			t.Errorf("create %q: %s, want invalid_argument", body, msg.Data)
		}
	}
	if list, _ := d.List(context.Background()); len(list) != 0 {
		t.Errorf("instances created: %+v", list)
	}
}

// TestGoneCallerFreesExecSlot: unary execs (sleeping until cancelled)
// whose callers disconnect are cancelled within a probe interval and free
// their slots, so they cannot fill the unary pool; an exec whose caller is
// still waiting is not cancelled by the probes.
func TestGoneCallerFreesExecSlot(t *testing.T) {
	old := callerProbeInterval
	callerProbeInterval = 200 * time.Millisecond
	t.Cleanup(func() { callerProbeInterval = old })
	d := newToy()
	m := toyManager(d)
	if _, err := m.Create(context.Background(), drivers.InstanceTemplate{Name: "x", BaseImage: "x"}); err != nil {
		t.Fatal(err)
	}
	s := startNATS(t)
	w := startWorker(t, s, []*manager.Manager{m}, func(o *Options) { o.MaxConcurrent = 4 })
	body, _ := json.Marshal(messages.ExecRequest{Name: "x", Command: []string{"sleep"}})
	var callers []*nats.Conn
	for range 4 {
		c := connect(t, s.ClientURL())
		callers = append(callers, c)
		go func() { _, _ = c.Request(subj("toy", messages.OpExec), body, time.Minute) }()
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		if n := d.execs.Load(); n != 4 {
			return fmt.Errorf("%d execs running", n)
		}
		return nil
	})
	// Live callers: several probe intervals later their execs still run.
	time.Sleep(5 * callerProbeInterval)
	if n := d.execs.Load(); n != 4 {
		t.Fatalf("%d execs running while their callers wait, want 4", n)
	}
	for _, c := range callers {
		c.Close()
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		if n := d.execs.Load(); n != 0 {
			return fmt.Errorf("%d execs still running after their callers left", n)
		}
		return nil
	})
	if st := w.stats(); st.CallersGone != 4 {
		t.Errorf("callers_gone %d, want 4", st.CallersGone)
	}
	nc := connect(t, s.ClientURL())
	if _, err := callErr(nc, subj("toy", messages.OpList), nil, nil, 5*time.Second); err != nil {
		t.Fatalf("list after the slots were freed: %v", err)
	}
}
