package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/nats-io/nkeys"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/messages"
)

func TestBadInputIsInvalidArgumentAndChangesNothing(t *testing.T) {
	s := startNATS(t)
	d := newToy()
	startWorker(t, s, []*manager.Manager{toyManager(d)}, nil)
	nc := connect(t, s.ClientURL())

	tests := []struct {
		name, subject, body string
	}{
		{"malformed json", subj("toy", messages.OpCreate), `{"template":`},
		{"wrong type", subj("toy", messages.OpCreate), `{"template":{"name":7,"base_image":"x"}}`},
		{"unknown field", subj("toy", messages.OpCreate), `{"template":{"name":"a","base_image":"x"},"force":true}`},
		{"hostile name", subj("toy", messages.OpCreate), `{"template":{"name":"../../etc/passwd","base_image":"x"}}`},
		{"missing name", subj("toy", messages.OpStart), `{}`},
		// Meaning is checked by the manager (Decode checks shape only).
		{"path name", subj("toy", messages.OpStart), `{"name":"../etc"}`},
		{"dot name", subj("toy", messages.OpDelete), `{"name":".."}`},
		{"space name", subj("toy", messages.OpGet), `{"name":"a b"}`},
		{"newline name", subj("toy", messages.OpGet), `{"name":"a\nb"}`},
		{"long name", subj("toy", messages.OpStop), `{"name":"` + strings.Repeat("a", 64) + `"}`},
		{"template name", subj("toy", messages.OpCreate), `{"template":{"name":"-x","base_image":"/bin/true"}}`},
		{"no image", subj("toy", messages.OpCreate), `{"template":{"name":"x"}}`},
		{"empty command", subj("toy", messages.OpExec), `{"name":"a","command":[]}`},
		{"negative lines", subj("toy", messages.OpLogs), `{"name":"a","lines":-1}`},
		{"trailing data", subj("toy", messages.OpCreate), `{"template":{"name":"a","base_image":"x"}}{}`},
		{"huge payload", subj("toy", messages.OpCreate), `{"template":{"name":"a","base_image":"` + strings.Repeat("x", messages.MaxRequestBytes) + `"}}`},
		{"unknown op", "substrate.toy.explode", `{}`},
		{"unknown op on host", "substrate.toy.h1.explode", `{}`},
		{"bad deadline", subj("toy", messages.OpList), ``},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hdr := map[string]string{messages.HeaderRequestID: "req-" + strings.ReplaceAll(tt.name, " ", "-")}
			if tt.name == "bad deadline" {
				hdr[messages.HeaderDeadline] = "soon"
			}
			r := wantErr(t, nc, tt.subject, tt.body, hdr, drivers.InvalidArgument)
			if r.RequestID != hdr[messages.HeaderRequestID] || r.Host != "h1" {
				t.Fatalf("reply request id %q host %q", r.RequestID, r.Host)
			}
		})
	}
	if n := d.creates.Load(); n != 0 {
		t.Fatalf("%d instances created by bad requests", n)
	}
	if n := d.execs.Load(); n != 0 {
		t.Fatalf("%d execs running after bad requests", n)
	}
}

func TestErrorPaths(t *testing.T) {
	s := startNATS(t)
	d := newToy()
	startWorker(t, s, []*manager.Manager{toyManager(d)}, nil)
	nc := connect(t, s.ClientURL())

	t.Run("no responders", func(t *testing.T) {
		_, err := callErr(nc, subj("nosuchdriver", messages.OpList), nil, nil, 5*time.Second)
		if !errors.Is(err, nats.ErrNoResponders) {
			t.Fatalf("err = %v, want no responders", err)
		}
		_, err = callErr(nc, hostSubj("toy", "otherhost", messages.OpList), nil, nil, 5*time.Second)
		if !errors.Is(err, nats.ErrNoResponders) {
			t.Fatalf("other host: err = %v, want no responders", err)
		}
	})
	t.Run("not found", func(t *testing.T) {
		wantErr(t, nc, subj("toy", messages.OpGet), messages.NameRequest{Name: "ghost"}, nil, drivers.NotFound)
	})
	t.Run("unsupported", func(t *testing.T) {
		r := wantErr(t, nc, subj("toy", messages.OpSnapshotList), messages.NameRequest{Name: "x"}, nil, drivers.Unsupported)
		if r.Error.Retryable {
			t.Fatal("unsupported marked retryable")
		}
	})
	t.Run("expired deadline touches nothing", func(t *testing.T) {
		hdr := map[string]string{messages.HeaderDeadline: messages.FormatDeadline(time.Now().Add(-time.Second))}
		body := messages.CreateRequest{Template: messages.Template{Name: "late", BaseImage: "x"}}
		r := wantErr(t, nc, subj("toy", messages.OpCreate), body, hdr, drivers.Timeout)
		if !r.Error.Retryable {
			t.Fatal("timeout not retryable")
		}
		if _, err := d.Get(context.Background(), "late"); !errors.Is(err, drivers.ErrNotFound) {
			t.Fatalf("expired create ran: %v", err)
		}
	})
	t.Run("deadline bounds the driver call", func(t *testing.T) {
		hdr := map[string]string{messages.HeaderDeadline: messages.FormatDeadline(time.Now().Add(200 * time.Millisecond))}
		body := messages.CreateRequest{Template: messages.Template{Name: "slowpoke", BaseImage: "x", Metadata: map[string]string{"delay": "10s"}}}
		start := time.Now()
		wantErr(t, nc, subj("toy", messages.OpCreate), body, hdr, drivers.Timeout)
		if time.Since(start) > 5*time.Second {
			t.Fatalf("took %v", time.Since(start))
		}
	})
	t.Run("client timeout", func(t *testing.T) {
		body := messages.CreateRequest{Template: messages.Template{Name: "slow2", BaseImage: "x", Metadata: map[string]string{"delay": "2s"}}}
		_, err := callErr(nc, subj("toy", messages.OpCreate), body, nil, 100*time.Millisecond)
		if !errors.Is(err, nats.ErrTimeout) {
			t.Fatalf("err = %v, want timeout", err)
		}
	})
}

func TestToyOpsAndDiscovery(t *testing.T) {
	s := startNATS(t)
	d := newToy()
	w := startWorker(t, s, []*manager.Manager{toyManager(d)}, nil)
	nc := connect(t, s.ClientURL())

	var inst messages.Instance
	ok(t, nc, subj("toy", messages.OpCreate), messages.CreateRequest{Template: messages.Template{Name: "a1", BaseImage: "img"}}, &inst)
	if inst.Name != "a1" || inst.Host != "h1" || inst.Driver != "toy" {
		t.Fatalf("created %+v", inst)
	}
	var ch messages.ChangedResult
	ok(t, nc, hostSubj("toy", "h1", messages.OpStart), messages.NameRequest{Name: "a1"}, &ch)
	if !ch.Changed || ch.Instance == nil || ch.Instance.State != drivers.StateRunning {
		t.Fatalf("start: %+v", ch)
	}
	// Every instance on the wire names the driver and host serving it
	// (the driver contract's Instance has neither: the worker stamps them).
	stamped := func(what string, i messages.Instance) {
		t.Helper()
		if i.Driver != "toy" || i.Host != "h1" {
			t.Fatalf("%s: instance %s stamped %q/%q, want toy/h1", what, i.Name, i.Driver, i.Host)
		}
	}
	stamped("start", *ch.Instance)
	var got messages.Instance
	ok(t, nc, subj("toy", messages.OpGet), messages.NameRequest{Name: "a1"}, &got)
	stamped("get", got)
	var list []messages.Instance
	ok(t, nc, subj("toy", messages.OpList), nil, &list)
	if len(list) != 1 {
		t.Fatalf("list: %+v", list)
	}
	stamped("list", list[0])
	var caps messages.CapabilitiesResult
	ok(t, nc, subj("toy", messages.OpCapabilities), nil, &caps)
	if !caps.Capabilities.Exec || !caps.Capabilities.Logs || caps.Capabilities.Snapshots {
		t.Fatalf("capabilities %+v", caps)
	}

	// $SRV discovery.
	msg, err := nc.Request("$SRV.INFO.substrate", nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var info micro.Info
	if err := json.Unmarshal(msg.Data, &info); err != nil {
		t.Fatal(err)
	}
	if info.Metadata["host"] != "h1" || info.Metadata["drivers"] != "toy" || info.Metadata["version"] == "" {
		t.Fatalf("info metadata %+v", info.Metadata)
	}
	var capMap map[string]messages.Capabilities
	if err := json.Unmarshal([]byte(info.Metadata["capabilities"]), &capMap); err != nil || !capMap["toy"].Exec {
		t.Fatalf("capabilities metadata %q: %v", info.Metadata["capabilities"], err)
	}
	if _, err := nc.Request("$SRV.PING", nil, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	// An error reply: micro's own num_errors does not see it (the reply is
	// sent from the request's goroutine, docs/bus.md), the data's
	// error_replies does.
	wantErr(t, nc, subj("toy", messages.OpGet), messages.NameRequest{Name: "nope"}, nil, drivers.NotFound)
	msg, err = nc.Request("$SRV.STATS.substrate", nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var stats micro.Stats
	if err := json.Unmarshal(msg.Data, &stats); err != nil || len(stats.Endpoints) != 2 {
		t.Fatalf("stats %s: %v", msg.Data, err)
	}
	var data Stats
	if err := json.Unmarshal(stats.Endpoints[0].Data, &data); err != nil {
		t.Fatalf("stats data %s: %v", stats.Endpoints[0].Data, err)
	}
	if data.ErrorReplies < 1 || data.Replies <= data.ErrorReplies {
		t.Fatalf("stats data counts %d replies, %d error replies; want the not_found counted", data.Replies, data.ErrorReplies)
	}
	if op := data.Substrates["toy"].Ops["start"]; op.Count < 1 || data.Substrates["toy"].Breaker != "closed" {
		t.Fatalf("substrate op metrics in stats data: %+v", data.Substrates["toy"])
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		if w.stats().EventsStored == 0 {
			return errors.New("no event stored yet")
		}
		return nil
	})
}

func TestSlowCreateDoesNotBlockList(t *testing.T) {
	s := startNATS(t)
	d := newToy()
	startWorker(t, s, []*manager.Manager{toyManager(d)}, nil)
	nc := connect(t, s.ClientURL())

	done := make(chan error, 1)
	go func() {
		body := messages.CreateRequest{Template: messages.Template{Name: "slow", BaseImage: "x", Metadata: map[string]string{"delay": "5s"}}}
		_, err := callErr(nc, subj("toy", messages.OpCreate), body, nil, 20*time.Second)
		done <- err
	}()
	testenv.Eventually(t, 5*time.Second, func() error {
		if len(d.slow) == 0 {
			return errors.New("slow create not started")
		}
		return nil
	})
	// Lists and other creates are answered while the slow create runs.
	for i := range 5 {
		ok(t, nc, subj("toy", messages.OpList), nil, nil)
		ok(t, nc, subj("toy", messages.OpCreate), messages.CreateRequest{Template: messages.Template{Name: fmt.Sprintf("fast%d", i), BaseImage: "x"}}, nil)
	}
	select {
	case err := <-done:
		t.Fatalf("the slow create finished (%v) before the other requests were answered", err)
	default:
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestIdempotentCreate(t *testing.T) {
	s := startNATS(t)
	d := newToy()
	m := toyManager(d)
	var rec eventRecorder
	m.Subscribe(rec.record)
	startWorker(t, s, []*manager.Manager{m}, nil)
	nc := connect(t, s.ClientURL())

	body := messages.CreateRequest{Template: messages.Template{Name: "idem", BaseImage: "x", Metadata: map[string]string{"delay": "200ms"}}}
	hdr := map[string]string{messages.HeaderIdempotencyKey: "key-1"}
	// Concurrent duplicates and a later retry all get the first reply.
	var wg sync.WaitGroup
	replies := make([]messages.Reply, 4)
	for i := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			replies[i], _ = request(t, nc, subj("toy", messages.OpCreate), body, hdr)
		}()
	}
	wg.Wait()
	replies[3], _ = request(t, nc, subj("toy", messages.OpCreate), body, hdr)
	for i, r := range replies {
		if r.Error != nil || string(r.Result) != string(replies[0].Result) || r.RequestID != replies[0].RequestID {
			t.Fatalf("reply %d = %+v, want the first reply %+v", i, r, replies[0])
		}
	}
	if n := d.creates.Load(); n != 1 {
		t.Fatalf("created %d times", n)
	}
	// The same key with another body is refused.
	other := messages.CreateRequest{Template: messages.Template{Name: "idem2", BaseImage: "x"}}
	wantErr(t, nc, subj("toy", messages.OpCreate), other, hdr, drivers.InvalidArgument)
	// Without a key a second create is a second attempt: already_exists.
	wantErr(t, nc, subj("toy", messages.OpCreate), body, nil, drivers.AlreadyExists)
	// Events: one created event (plus the failed ones), each stored once.
	waitEventsStored(t, nc, rec.all())
}

// streamCall sends a streamed request and acknowledges chunks; stopAfter
// > 0 unsubscribes (the client goes away) after that many chunks.
func streamCall(t *testing.T, nc *nats.Conn, subject string, body any, stopAfter int) []messages.Chunk {
	t.Helper()
	chunks, err := streamChunks(nc, subject, body, stopAfter)
	if err != nil {
		t.Fatal(err)
	}
	return chunks
}

func streamChunks(nc *nats.Conn, subject string, body any, stopAfter int) ([]messages.Chunk, error) {
	inbox := nats.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, err
	}
	defer sub.Unsubscribe()
	data, _ := json.Marshal(body)
	if err := nc.PublishRequest(subject, inbox, data); err != nil {
		return nil, err
	}
	var chunks []messages.Chunk
	for {
		m, err := sub.NextMsg(10 * time.Second)
		if err != nil {
			return chunks, fmt.Errorf("after %d chunks: %w", len(chunks), err)
		}
		var c messages.Chunk
		if err := json.Unmarshal(m.Data, &c); err != nil {
			return chunks, err
		}
		chunks = append(chunks, c)
		if stopAfter > 0 && len(chunks) >= stopAfter {
			return chunks, nil // unsubscribe without acknowledging
		}
		if m.Reply != "" {
			_ = m.Respond(nil)
		}
		if c.Final {
			return chunks, nil
		}
	}
}

func TestStreamingExecAndFollowLogs(t *testing.T) {
	s := startNATS(t)
	d := newToy()
	startWorker(t, s, []*manager.Manager{toyManager(d)}, func(o *Options) { o.HeartbeatInterval = 100 * time.Millisecond })
	nc := connect(t, s.ClientURL())
	ok(t, nc, subj("toy", messages.OpCreate), messages.CreateRequest{Template: messages.Template{Name: "s1", BaseImage: "x"}}, nil)

	t.Run("exec output in order with exit code", func(t *testing.T) {
		chunks := streamCall(t, nc, subj("toy", messages.OpExec), map[string]any{"name": "s1", "command": []string{"spam", "50"}, "stream": true}, 0)
		var out strings.Builder
		for i, c := range chunks {
			if c.Seq != uint64(i+1) {
				t.Fatalf("chunk %d has seq %d", i, c.Seq)
			}
			out.Write(c.Data)
		}
		last := chunks[len(chunks)-1]
		if !last.Final || last.ExitCode == nil || *last.ExitCode != 0 || last.Error != nil {
			t.Fatalf("final chunk %+v", last)
		}
		for i := range 50 {
			if !strings.Contains(out.String(), fmt.Sprintf("line %d\n", i)) {
				t.Fatalf("output misses line %d: %q", i, out.String())
			}
		}
	})
	t.Run("exit status", func(t *testing.T) {
		chunks := streamCall(t, nc, subj("toy", messages.OpExec), map[string]any{"name": "s1", "command": []string{"fail", "3"}, "stream": true}, 0)
		last := chunks[len(chunks)-1]
		if last.ExitCode == nil || *last.ExitCode != 3 {
			t.Fatalf("final chunk %+v", last)
		}
	})
	t.Run("error before the stream", func(t *testing.T) {
		chunks := streamCall(t, nc, subj("toy", messages.OpExec), map[string]any{"name": "ghost", "command": []string{"echo"}, "stream": true}, 0)
		if len(chunks) != 1 || !chunks[0].Final || chunks[0].Error == nil || chunks[0].Error.Code != drivers.NotFound {
			t.Fatalf("chunks %+v", chunks)
		}
	})
	t.Run("non-streamed exec", func(t *testing.T) {
		var res messages.ExecResult
		ok(t, nc, subj("toy", messages.OpExec), map[string]any{"name": "s1", "command": []string{"echo", "hi", "there"}}, &res)
		if string(res.Stdout) != "hi there\n" || res.ExitCode != 0 {
			t.Fatalf("exec %+v", res)
		}
	})
	t.Run("follow logs, client goes away", func(t *testing.T) {
		chunks := streamCall(t, nc, subj("toy", messages.OpLogs), messages.LogsRequest{Name: "s1", Lines: 2, Follow: true}, 6)
		if chunks[0].Line == nil || chunks[0].Line.Line != "old 0" || chunks[2].Line == nil || chunks[2].Line.Line != "new 0" {
			t.Fatalf("chunks %+v", chunks)
		}
		testenv.Eventually(t, 10*time.Second, func() error {
			if n := d.following.Load(); n != 0 {
				return fmt.Errorf("%d followers still running on the worker", n)
			}
			return nil
		})
	})
	t.Run("exec cancelled when client goes away", func(t *testing.T) {
		go streamChunks(nc, subj("toy", messages.OpExec), map[string]any{"name": "s1", "command": []string{"sleep"}, "stream": true}, 1) //nolint:errcheck
		testenv.Eventually(t, 5*time.Second, func() error {
			if d.execs.Load() == 0 {
				return errors.New("exec not started")
			}
			return nil
		})
		// The client unsubscribed after the first heartbeat: the next
		// heartbeat finds no responder and the exec is cancelled.
		testenv.Eventually(t, 10*time.Second, func() error {
			if n := d.execs.Load(); n != 0 {
				return fmt.Errorf("%d execs still running", n)
			}
			return nil
		})
	})
}

func TestGracefulShutdown(t *testing.T) {
	s := startNATS(t)
	d := newToy()
	m := toyManager(d)
	var rec eventRecorder
	m.Subscribe(rec.record)
	w := startWorker(t, s, []*manager.Manager{m}, nil)
	nc := connect(t, s.ClientURL())

	reply := make(chan *nats.Msg, 1)
	go func() {
		body := messages.CreateRequest{Template: messages.Template{Name: "inflight", BaseImage: "x", Metadata: map[string]string{"delay": "700ms"}}}
		msg, err := callErr(nc, subj("toy", messages.OpCreate), body, nil, 10*time.Second)
		if err != nil {
			t.Error(err)
		}
		reply <- msg
	}()
	testenv.Eventually(t, 5*time.Second, func() error {
		if len(w.sem) == 0 {
			return errors.New("request not in flight yet")
		}
		return nil
	})
	if err := w.stop(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
	msg := <-reply
	var r messages.Reply
	if msg == nil || json.Unmarshal(msg.Data, &r) != nil || r.Error != nil {
		t.Fatalf("in-flight request: %+v", msg)
	}
	// The service is gone, and its events were flushed before it went.
	if _, err := callErr(nc, subj("toy", messages.OpList), nil, nil, 2*time.Second); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("after shutdown: %v", err)
	}
	waitEventsStored(t, nc, rec.all())
	if len(rec.all()) == 0 {
		t.Fatal("no events emitted")
	}
}

func TestStreamsDoNotCaptureRequests(t *testing.T) {
	s := startNATS(t)
	startWorker(t, s, []*manager.Manager{toyManager(newToy())}, nil)
	nc := connect(t, s.ClientURL())
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	for _, name := range []string{messages.EventsStream, messages.MetricsStream} {
		st, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		cfg := st.CachedInfo().Config
		if cfg.Storage != jetstream.FileStorage || cfg.MaxAge <= 0 {
			t.Fatalf("%s: %+v", name, cfg)
		}
		for _, sub := range cfg.Subjects {
			for _, req := range []string{subj("toy", messages.OpList), hostSubj("toy", "h1", messages.OpList)} {
				if subjectMatches(sub, req) {
					t.Fatalf("stream %s subject %s captures request subject %s", name, sub, req)
				}
			}
		}
	}
	// A request to a driver nobody serves is "no responders", not a stream ack.
	if _, err := callErr(nc, subj("docker", messages.OpList), nil, nil, 2*time.Second); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("err = %v", err)
	}
}

func TestCheckOnlyStreams(t *testing.T) {
	s := startNATS(t)
	opts := Options{Host: "h1", Managers: []*manager.Manager{toyManager(newToy())}, ManageStreams: false, Logger: testLogger(t),
		Connect: func(extra ...nats.Option) (*nats.Conn, error) { return nats.Connect(s.ClientURL(), extra...) }}
	w, err := New(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	select {
	case <-w.Ready():
		t.Fatal("ready without streams while manage_streams is false")
	case <-time.After(500 * time.Millisecond):
	}
	// An operator creates them: the worker becomes ready.
	nc := connect(t, s.ClientURL())
	js, _ := jetstream.New(nc)
	for _, cfg := range StreamConfigs(w.opts) {
		if _, err := js.CreateStream(context.Background(), cfg); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-w.Ready():
	case <-time.After(15 * time.Second):
		t.Fatal("not ready after the streams were created")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestMetricsPublished(t *testing.T) {
	s := startNATS(t)
	d := newToy()
	startWorker(t, s, []*manager.Manager{toyManager(d)}, func(o *Options) {
		o.EnableMetrics = true
		o.MetricsInterval = 100 * time.Millisecond
	})
	nc := connect(t, s.ClientURL())
	ok(t, nc, subj("toy", messages.OpCreate), messages.CreateRequest{Template: messages.Template{Name: "m.1", BaseImage: "x"}}, nil)
	ok(t, nc, subj("toy", messages.OpStart), messages.NameRequest{Name: "m.1"}, nil)
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	testenv.Eventually(t, 10*time.Second, func() error {
		st, err := js.Stream(ctx, messages.MetricsStream)
		if err != nil {
			return err
		}
		m, err := st.GetLastMsgForSubject(ctx, messages.MetricsSubject("toy", "h1", "m.1"))
		if err != nil {
			return err
		}
		var mm messages.MetricsMessage
		if err := json.Unmarshal(m.Data, &mm); err != nil {
			return err
		}
		if mm.Instance != "m.1" || mm.Driver != "toy" || mm.Host != "h1" || mm.Usage.MemoryMB != 2 {
			return fmt.Errorf("metrics message %+v", mm)
		}
		return nil
	})
}

// TestEmbeddedServer: the embedded server serves requests to clients
// holding the local credential it created (mode 0600), refuses everyone
// else, and stops with the worker.
func TestEmbeddedServer(t *testing.T) {
	cred := filepath.Join(t.TempDir(), "state", "client.nk")
	w := startWorker(t, nil, []*manager.Manager{toyManager(newToy())}, func(o *Options) {
		o.Embedded = EmbeddedOptions{Listen: "127.0.0.1:-1", DataDir: t.TempDir(), Credential: cred}
	})
	if w.ClientURL() == "" {
		t.Fatal("no client URL")
	}
	st, err := os.Stat(cred)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("credential mode %v, want 0600", st.Mode().Perm())
	}
	// No credential, a wrong one: authorization violation.
	if nc, err := nats.Connect(w.ClientURL()); !errors.Is(err, nats.ErrAuthorization) {
		if nc != nil {
			nc.Close()
		}
		t.Fatalf("connect without credential: %v, want authorization violation", err)
	}
	other, _ := nkeys.CreateUser()
	otherPub, _ := other.PublicKey()
	if nc, err := nats.Connect(w.ClientURL(), nats.Nkey(otherPub, other.Sign)); !errors.Is(err, nats.ErrAuthorization) {
		if nc != nil {
			nc.Close()
		}
		t.Fatalf("connect with another nkey: %v, want authorization violation", err)
	}
	opt, err := nats.NkeyOptionFromSeed(cred)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(w.ClientURL(), opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	ok(t, nc, subj("toy", messages.OpList), nil, nil)
	if _, err := nc.Request("$SRV.PING.substrate", nil, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := w.stop(t); err != nil {
		t.Fatal(err)
	}
	// The embedded server stopped with the worker.
	testenv.Eventually(t, 5*time.Second, func() error {
		if !nc.IsClosed() && nc.IsConnected() {
			return errors.New("still connected to the embedded server")
		}
		return nil
	})
}

// TestLocalCredential: the seed is created once and reused (a second
// start accepts the same clients), is 0600, or 0640 owned by the
// configured group, and an unknown group or a file that is not a seed
// are errors naming the file.
func TestLocalCredential(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "client.nk")
	kp1, err := localCredential(path, "")
	if err != nil {
		t.Fatal(err)
	}
	kp2, err := localCredential(path, "")
	if err != nil {
		t.Fatal(err)
	}
	p1, _ := kp1.PublicKey()
	p2, _ := kp2.PublicKey()
	if p1 != p2 {
		t.Fatal("a second start made a new credential")
	}
	mode := func() os.FileMode {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return st.Mode().Perm()
	}
	if m := mode(); m != 0o600 {
		t.Fatalf("mode %v, want 0600", m)
	}
	if os.Geteuid() == 0 {
		g, err := user.LookupGroupId("0")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := localCredential(path, g.Name); err != nil {
			t.Fatal(err)
		}
		if m := mode(); m != 0o640 {
			t.Fatalf("mode with a group %v, want 0640", m)
		}
		if _, err := localCredential(path, ""); err != nil || mode() != 0o600 {
			t.Fatalf("revoking the group: %v, mode %v", err, mode())
		}
	}
	if _, err := localCredential(path, "no-such-group-sc"); err == nil || !strings.Contains(err.Error(), "credential_group") {
		t.Fatalf("unknown group: %v", err)
	}
	bad := filepath.Join(dir, "bad.nk")
	if err := os.WriteFile(bad, []byte("hello\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := localCredential(bad, ""); err == nil || !strings.Contains(err.Error(), bad) {
		t.Fatalf("not a seed: %v", err)
	}
}

// subjectMatches reports whether filter (with * and >) matches subject.
func subjectMatches(filter, subject string) bool {
	f, s := strings.Split(filter, "."), strings.Split(subject, ".")
	for i, tok := range f {
		if tok == ">" {
			return len(s) > i
		}
		if i >= len(s) || (tok != "*" && tok != s[i]) {
			return false
		}
	}
	return len(f) == len(s)
}

func TestEmbeddedPortInUse(t *testing.T) {
	s := startNATS(t) // holds a port
	addr := strings.TrimPrefix(s.ClientURL(), "nats://")
	w, err := New(context.Background(), Options{Host: "h1", Managers: []*manager.Manager{toyManager(newToy())}, Logger: testLogger(t),
		Embedded: EmbeddedOptions{Listen: addr, DataDir: t.TempDir(), Credential: filepath.Join(t.TempDir(), "client.nk")}})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = w.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "cannot listen") || time.Since(start) > 5*time.Second {
		t.Fatalf("Run = %v after %v", err, time.Since(start))
	}
}

func TestShutdownEndsFollowedLogs(t *testing.T) {
	s := startNATS(t)
	d := newToy()
	w := startWorker(t, s, []*manager.Manager{toyManager(d)}, nil)
	nc := connect(t, s.ClientURL())
	ok(t, nc, subj("toy", messages.OpCreate), messages.CreateRequest{Template: messages.Template{Name: "f1", BaseImage: "x"}}, nil)
	got := make(chan []messages.Chunk, 1)
	go func() {
		chunks, _ := streamChunks(nc, subj("toy", messages.OpLogs), messages.LogsRequest{Name: "f1", Follow: true}, 0)
		got <- chunks
	}()
	testenv.Eventually(t, 5*time.Second, func() error {
		if d.following.Load() == 0 {
			return errors.New("not following yet")
		}
		return nil
	})
	start := time.Now()
	if err := w.stop(t); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Fatalf("shutdown took %v with a followed stream", el)
	}
	chunks := <-got
	if len(chunks) == 0 || !chunks[len(chunks)-1].Final || chunks[len(chunks)-1].Error != nil {
		t.Fatalf("stream did not end with a clean final chunk: %+v", chunks)
	}
}

// TestStreamRecreated: when SUBSTRATE_EVENTS is deleted under a running
// worker, the worker recreates it and keeps publishing.
func TestStreamRecreated(t *testing.T) {
	s := startNATS(t)
	m := toyManager(newToy())
	w := startWorker(t, s, []*manager.Manager{m}, nil)
	nc := connect(t, s.ClientURL())
	testenv.Eventually(t, 10*time.Second, func() error { // the connected event is stored
		if w.Pending() > 0 || w.stats().EventsStored == 0 {
			return errors.New("events pending")
		}
		return nil
	})
	js, _ := jetstream.New(nc)
	if err := js.DeleteStream(context.Background(), messages.EventsStream); err != nil {
		t.Fatal(err)
	}
	var rec eventRecorder
	m.Subscribe(rec.record)
	ok(t, nc, subj("toy", messages.OpCreate), messages.CreateRequest{Template: messages.Template{Name: "r1", BaseImage: "x"}}, nil)
	waitEventsStored(t, nc, rec.all())
}
