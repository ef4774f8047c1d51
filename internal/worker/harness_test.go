package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/messages"
)

// toy is a tiny in-memory driver for tests of the worker's own behaviour
// (slow operations, streaming, cancellation) that a real substrate cannot
// trigger on demand. Behaviour through a real substrate is tested with the
// process driver (process_test.go).
//
// Template metadata "delay" (a duration) makes Create slow. Exec runs
// "echo ARGS" (stdout), "fail N" (exit N), "spam N" (N lines) and "sleep"
// (until cancelled). Logs emits lines; with follow it adds one every 20ms.
type toy struct {
	mu        sync.Mutex
	instances map[string]drivers.Instance
	creates   atomic.Int64  // Create calls that ran
	following atomic.Int64  // followed log streams in progress
	execs     atomic.Int64  // execs in progress
	slow      chan struct{} // receives when a slow Create starts
}

func newToy() *toy {
	return &toy{instances: map[string]drivers.Instance{}, slow: make(chan struct{}, 100)}
}

func (d *toy) Name() string                     { return "toy" }
func (d *toy) Connect(context.Context) error    { return nil }
func (d *toy) Close() error                     { return nil }
func (d *toy) ErrorCode(err error) drivers.Code { return drivers.Internal }
func (d *toy) Health(context.Context) (drivers.Health, error) {
	return drivers.Health{Healthy: true, Version: "toy-1"}, nil
}

func (d *toy) List(context.Context) ([]drivers.Instance, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := []drivers.Instance{}
	for _, i := range d.instances {
		out = append(out, i)
	}
	return out, nil
}

func (d *toy) Get(_ context.Context, name string) (drivers.Instance, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	i, ok := d.instances[name]
	if !ok {
		return drivers.Instance{}, drivers.Errorf(drivers.NotFound, "instance %q not found", name)
	}
	return i, nil
}

func (d *toy) Create(ctx context.Context, t drivers.InstanceTemplate) (drivers.Instance, error) {
	if s := t.Metadata["delay"]; s != "" {
		select {
		case d.slow <- struct{}{}:
		default:
		}
		dl, _ := time.ParseDuration(s)
		select {
		case <-time.After(dl):
		case <-ctx.Done():
			return drivers.Instance{}, drivers.Wrap(drivers.Timeout, ctx.Err(), "create")
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.instances[t.Name]; ok {
		return drivers.Instance{}, drivers.Errorf(drivers.AlreadyExists, "instance %q exists", t.Name)
	}
	d.creates.Add(1)
	i := drivers.Instance{Name: t.Name, ID: t.Name, State: drivers.StateStopped, Image: t.BaseImage, Created: time.Now(), Managed: true}
	d.instances[t.Name] = i
	return i, nil
}

func (d *toy) setState(name string, st drivers.State) (bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	i, ok := d.instances[name]
	if !ok {
		return false, drivers.Errorf(drivers.NotFound, "instance %q not found", name)
	}
	changed := i.State != st
	i.State = st
	d.instances[name] = i
	return changed, nil
}

func (d *toy) Start(_ context.Context, name string) (bool, error) {
	return d.setState(name, drivers.StateRunning)
}

func (d *toy) Stop(_ context.Context, name string, _ drivers.StopOptions) (bool, error) {
	return d.setState(name, drivers.StateStopped)
}

func (d *toy) Delete(_ context.Context, name string, o drivers.DeleteOptions) (bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.instances[name]; !ok {
		if o.Force {
			return false, nil
		}
		return false, drivers.Errorf(drivers.NotFound, "instance %q not found", name)
	}
	delete(d.instances, name)
	return true, nil
}

func (d *toy) Metrics(_ context.Context, name string) (drivers.ResourceUsage, error) {
	if _, err := d.Get(context.Background(), name); err != nil {
		return drivers.ResourceUsage{}, err
	}
	return drivers.ResourceUsage{Time: time.Now(), CPUPercent: 1, MemoryMB: 2, Measured: drivers.MeasureCPU | drivers.MeasureMemory}, nil
}

func (d *toy) Exec(ctx context.Context, name string, req drivers.ExecRequest, stdout, stderr drivers.Writer) (int, error) {
	d.execs.Add(1)
	defer d.execs.Add(-1)
	if _, err := d.Get(ctx, name); err != nil {
		return 0, err
	}
	switch req.Command[0] {
	case "echo":
		_, err := fmt.Fprintln(stdout, strings.Join(req.Command[1:], " "))
		return 0, err
	case "fail":
		var n int
		fmt.Sscan(req.Command[1], &n)
		fmt.Fprintln(stderr, "failing")
		return n, nil
	case "spam":
		var n int
		fmt.Sscan(req.Command[1], &n)
		for i := range n {
			if _, err := fmt.Fprintf(stdout, "line %d\n", i); err != nil {
				return 0, err
			}
		}
		return 0, nil
	case "sleep":
		<-ctx.Done()
		return 0, drivers.Wrap(drivers.Timeout, ctx.Err(), "exec")
	}
	return 127, nil
}

func (d *toy) Logs(ctx context.Context, name string, o drivers.LogOptions, emit func(drivers.LogLine) error) error {
	if _, err := d.Get(ctx, name); err != nil {
		return err
	}
	for i := range o.Lines {
		if err := emit(drivers.LogLine{Stream: "stdout", Line: fmt.Sprintf("old %d", i)}); err != nil {
			return err
		}
	}
	if !o.Follow {
		return nil
	}
	d.following.Add(1)
	defer d.following.Add(-1)
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(20 * time.Millisecond):
		}
		if err := emit(drivers.LogLine{Stream: "stdout", Line: fmt.Sprintf("new %d", i)}); err != nil {
			return err
		}
	}
}

var (
	_ drivers.Execer    = (*toy)(nil)
	_ drivers.LogReader = (*toy)(nil)
)

// startNATS runs a JetStream server on a random loopback port.
func startNATS(t testing.TB) *server.Server {
	t.Helper()
	return startNATSAt(t, -1, t.TempDir())
}

func startNATSAt(t testing.TB, port int, dir string) *server.Server {
	t.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: dir,
		JetStreamMaxMemory: 64 << 20, JetStreamMaxStore: 1 << 30, NoSigs: true, NoLog: true,
		MaxPayload: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

// testLogger writes worker logs to the test log when -v, else nowhere.
func testLogger(t testing.TB) zerolog.Logger {
	if testing.Verbose() || os.Getenv("WORKER_TEST_LOGS") != "" {
		return zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr, NoColor: true}).Level(zerolog.DebugLevel).With().Timestamp().Logger()
	}
	return zerolog.Nop()
}

// runningWorker is a worker started by startWorker.
type runningWorker struct {
	*Worker
	cancel context.CancelFunc
	err    chan error
}

// stop shuts the worker down and returns Run's error.
func (r *runningWorker) stop(t testing.TB) error {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.err:
		r.err <- err
		return err
	case <-time.After(60 * time.Second):
		t.Fatal("worker did not stop")
		return nil
	}
}

// startWorker runs a worker with host "h1" connected to s, serving mgrs.
func startWorker(t testing.TB, s *server.Server, mgrs []*manager.Manager, mutate func(*Options)) *runningWorker {
	t.Helper()
	opts := Options{
		Host:          "h1",
		Managers:      mgrs,
		ManageStreams: true,
		Logger:        testLogger(t),
		EnableMetrics: false,
	}
	if s != nil {
		url := s.ClientURL()
		opts.Connect = func(extra ...nats.Option) (*nats.Conn, error) { return nats.Connect(url, extra...) }
	}
	if mutate != nil {
		mutate(&opts)
	}
	w, err := New(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &runningWorker{Worker: w, cancel: cancel, err: make(chan error, 1)}
	go func() { r.err <- w.Run(ctx) }()
	select {
	case <-w.Ready():
	case err := <-r.err:
		t.Fatalf("worker stopped: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("worker not ready")
	}
	t.Cleanup(func() { _ = r.stop(t) })
	return r
}

// toyManager wraps a toy driver in a manager without caching or retries,
// so tests see every call.
func toyManager(d drivers.Driver) *manager.Manager {
	return manager.New(d, manager.Options{Host: "h1", CacheTTL: -1, RetryAttempts: 1})
}

// connect returns a client connection to s.
func connect(t testing.TB, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// request sends a request and decodes the reply. hdr adds headers.
func request(t testing.TB, nc *nats.Conn, subject string, body any, hdr map[string]string) (messages.Reply, *nats.Msg) {
	t.Helper()
	msg, err := callErr(nc, subject, body, hdr, 10*time.Second)
	if err != nil {
		t.Fatalf("%s: %v", subject, err)
	}
	var r messages.Reply
	if err := json.Unmarshal(msg.Data, &r); err != nil {
		t.Fatalf("%s: reply %q: %v", subject, msg.Data, err)
	}
	return r, msg
}

func callErr(nc *nats.Conn, subject string, body any, hdr map[string]string, timeout time.Duration) (*nats.Msg, error) {
	var data []byte
	switch b := body.(type) {
	case nil:
	case string:
		data = []byte(b)
	case []byte:
		data = b
	default:
		data, _ = json.Marshal(b)
	}
	m := nats.NewMsg(subject)
	m.Data = data
	for k, v := range hdr {
		m.Header.Set(k, v)
	}
	return nc.RequestMsg(m, timeout)
}

// ok calls and requires a result, decoding it into out (if non-nil).
func ok(t testing.TB, nc *nats.Conn, subject string, body any, out any) messages.Reply {
	t.Helper()
	r, msg := request(t, nc, subject, body, nil)
	if r.Error != nil {
		t.Fatalf("%s: error %+v", subject, r.Error)
	}
	if msg.Header.Get(messages.HeaderErrorCode) != "" {
		t.Fatalf("%s: error header on a result", subject)
	}
	if out != nil {
		if err := json.Unmarshal(r.Result, out); err != nil {
			t.Fatalf("%s: result %s: %v", subject, r.Result, err)
		}
	}
	return r
}

// wantErr calls and requires an error reply with code (body and headers).
func wantErr(t testing.TB, nc *nats.Conn, subject string, body any, hdr map[string]string, code drivers.Code) messages.Reply {
	t.Helper()
	r, msg := request(t, nc, subject, body, hdr)
	if r.Error == nil || r.Error.Code != code {
		t.Fatalf("%s %v: reply %+v, want error %s", subject, body, r, code)
	}
	if got := msg.Header.Get(messages.HeaderErrorCode); got != fmt.Sprint(int(code)) {
		t.Fatalf("%s: %s = %q, want %d", subject, messages.HeaderErrorCode, got, code)
	}
	if msg.Header.Get(messages.HeaderError) == "" {
		t.Fatalf("%s: no %s header", subject, messages.HeaderError)
	}
	return r
}

// streamEvents returns every event stored in SUBSTRATE_EVENTS, each checked
// with checkCloudEvent.
func streamEvents(t testing.TB, nc *nats.Conn) []messages.CloudEvent {
	t.Helper()
	out, err := streamEventsErr(nc)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func streamEventsErr(nc *nats.Conn) ([]messages.CloudEvent, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, messages.EventsStream)
	if err != nil {
		return nil, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, err
	}
	var out []messages.CloudEvent
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if err := checkCloudEvent(m.Data); err != nil {
			return nil, err
		}
		var ce messages.CloudEvent
		if err := json.Unmarshal(m.Data, &ce); err != nil {
			return nil, fmt.Errorf("event %s: %w", m.Data, err)
		}
		if got := m.Header.Get(jetstream.MsgIDHeader); got != ce.ID {
			return nil, fmt.Errorf("Nats-Msg-Id %q != event id %q", got, ce.ID)
		}
		out = append(out, ce)
	}
	return out, nil
}

// eventRecorder counts the events a manager emits.
type eventRecorder struct {
	mu  sync.Mutex
	ids []string
}

func (r *eventRecorder) record(e messages.Event) {
	r.mu.Lock()
	r.ids = append(r.ids, e.ID)
	r.mu.Unlock()
}

func (r *eventRecorder) all() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.ids...)
}

// waitEventsStored waits until the stream holds exactly the recorded
// events, each once.
func waitEventsStored(t testing.TB, nc *nats.Conn, want []string) {
	t.Helper()
	waitEvents(t, nc, want, true)
}

// waitEvents waits until the stream holds each wanted event once and no
// event twice; with exact, nothing else either.
func waitEvents(t testing.TB, nc *nats.Conn, want []string, exact bool) {
	t.Helper()
	testenv.Eventually(t, 20*time.Second, func() error {
		got, err := streamEventsErr(nc)
		if err != nil {
			return err
		}
		count := map[string]int{}
		for _, e := range got {
			count[e.ID]++
		}
		for id, n := range count {
			if n != 1 {
				return fmt.Errorf("event %s stored %d times", id, n)
			}
		}
		for _, id := range want {
			if count[id] != 1 {
				return fmt.Errorf("event %s not stored (%d of %d stored)", id, len(got), len(want))
			}
		}
		if exact && len(got) != len(want) {
			return fmt.Errorf("%d events stored, %d emitted", len(got), len(want))
		}
		return nil
	})
}

func subj(driver string, op messages.Op) string { return messages.RequestSubject(driver, "", op) }
func hostSubj(driver, host string, op messages.Op) string {
	return messages.RequestSubject(driver, host, op)
}
