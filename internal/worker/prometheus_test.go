package worker

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/testenv"
	"github.com/subbus/subbus/messages"
)

// scrape fetches url and parses the Prometheus text exposition.
func scrape(url string) ([]byte, map[string]*dto.MetricFamily, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("%s: %s", resp.Status, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	return body, fams, err
}

// sample returns the value of the series of family name with exactly
// the given labels (a histogram's sample count), and whether it exists.
func sample(fams map[string]*dto.MetricFamily, name string, labels map[string]string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		if len(m.GetLabel()) != len(labels) {
			continue
		}
		for _, l := range m.GetLabel() {
			if v, ok := labels[l.GetName()]; !ok || v != l.GetValue() {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		}
	}
	return 0, false
}

// TestPrometheusEndpoint drives a worker through requests (two that
// succeed, one not_found) and checks what /metrics reports for them, then
// has promtool lint the whole exposition.
func TestPrometheusEndpoint(t *testing.T) {
	s := startNATS(t)
	m := toyManager(newToy())
	w := startWorker(t, s, []*manager.Manager{m}, func(o *Options) {
		o.PrometheusListen = "127.0.0.1:0"
		o.EnableMetrics = true
		o.MetricsInterval = 50 * time.Millisecond
	})
	nc := connect(t, s.ClientURL())
	ok(t, nc, subj("toy", messages.OpCreate), messages.CreateRequest{Template: messages.Template{Name: "web", BaseImage: "img"}}, nil)
	ok(t, nc, subj("toy", messages.OpStart), messages.NameRequest{Name: "web"}, nil)
	wantErr(t, nc, subj("toy", messages.OpGet), messages.NameRequest{Name: "ghost"}, nil, drivers.NotFound)

	url := "http://" + w.PrometheusAddr().String() + "/metrics"
	var body []byte
	var fams map[string]*dto.MetricFamily
	// The instance gauge follows the metrics loop, and events and samples
	// are published asynchronously: wait for all three.
	testenv.Eventually(t, 20*time.Second, func() error {
		var err error
		if body, fams, err = scrape(url); err != nil {
			return err
		}
		if v, _ := sample(fams, "subbus_instances", map[string]string{"driver": "toy", "state": "running"}); v != 1 {
			return fmt.Errorf("subbus_instances{state=running} = %v, want 1", v)
		}
		if v, _ := sample(fams, "subbus_events_published_total", nil); v < 2 {
			return fmt.Errorf("subbus_events_published_total = %v, want ≥ 2 (created, started)", v)
		}
		if v, _ := sample(fams, "subbus_metrics_samples_published_total", nil); v < 1 {
			return fmt.Errorf("subbus_metrics_samples_published_total = %v, want ≥ 1 (web is running)", v)
		}
		return nil
	})

	toy := func(kv ...string) map[string]string {
		l := map[string]string{"driver": "toy"}
		for i := 0; i+1 < len(kv); i += 2 {
			l[kv[i]] = kv[i+1]
		}
		return l
	}
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"subbus_worker_info", map[string]string{"host": "h1", "version": "0.1.0", "embedded_nats": "false"}, 1},
		{"subbus_worker_ready", nil, 1},
		{"subbus_nats_connected", nil, 1},
		{"subbus_nats_reconnects_total", nil, 0},
		{"subbus_requests_in_flight", nil, 0},
		{"subbus_long_operations_running", nil, 0},
		{"subbus_replies_total", nil, 3},
		{"subbus_error_replies_total", nil, 1},
		{"subbus_operations_total", toy("op", "create"), 1},
		{"subbus_operations_total", toy("op", "start"), 1},
		{"subbus_operation_errors_total", toy("op", "get", "code", "not_found"), 1},
		{"subbus_operation_retries_total", toy("op", "get"), 0},
		{"subbus_operation_duration_seconds", toy("op", "create"), 1}, // sample count
		{"subbus_breaker_state", toy("state", "closed"), 1},
		{"subbus_breaker_state", toy("state", "open"), 0},
		{"subbus_breaker_state", toy("state", "half_open"), 0},
		{"subbus_driver_connected", toy(), 1},
		{"subbus_driver_events_total", toy("type", "created"), 1},
		{"subbus_driver_events_total", toy("type", "started"), 1},
		{"subbus_instances", toy("state", "stopped"), 0},
		{"subbus_events_dropped_total", nil, 0},
		{"subbus_events_pending", nil, 0},
		{"subbus_metrics_samples_dropped_total", nil, 0},
	} {
		got, found := sample(fams, tc.name, tc.labels)
		if !found || got != tc.want {
			t.Errorf("%s%v = %v (present: %v), want %v", tc.name, tc.labels, got, found, tc.want)
		}
	}
	// Operation counts are the manager's own (micro STATS agree); list
	// and metrics keep moving with the metrics loop.
	for op, st := range m.Stats().Ops {
		if op == string(messages.OpList) || op == string(messages.OpMetrics) {
			continue
		}
		if got, _ := sample(fams, "subbus_operations_total", toy("op", op)); got != float64(st.Count) {
			t.Errorf("subbus_operations_total{op=%q} = %v, manager counts %d", op, got, st.Count)
		}
	}
	if _, found := sample(fams, "subbus_operation_errors_total", toy("op", "create", "code", "not_found")); found {
		t.Error("an error series exists for an operation that never failed")
	}
	if fams["go_goroutines"] == nil || fams["process_resident_memory_bytes"] == nil {
		t.Error("the Go runtime and process collectors are not served")
	}

	// The histogram is the manager's: cumulative buckets in seconds.
	h := fams["subbus_operation_duration_seconds"].GetMetric()[0].GetHistogram()
	if n := len(h.GetBucket()); n != len(manager.BucketBoundsMs)+1 { // and +Inf
		t.Errorf("%d buckets, want %d", n, len(manager.BucketBoundsMs)+1)
	}
	if b := h.GetBucket()[0]; b.GetUpperBound() != manager.BucketBoundsMs[0]/1000 {
		t.Errorf("first bucket bound %v, want %v s", b.GetUpperBound(), manager.BucketBoundsMs[0]/1000)
	}

	promtool := testenv.Tool(t, "promtool", "apt-get install prometheus (bash scripts/setup/tools.sh)")
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}

// TestPrometheusListenErrors: a bad address is a configuration error
// naming the key, and a taken port fails Run before it connects.
func TestPrometheusListenErrors(t *testing.T) {
	for _, listen := range []string{"nowhere", "127.0.0.1:-1", "127.0.0.1:http"} {
		o := Options{Host: "h1", Managers: []*manager.Manager{toyManager(newToy())}, PrometheusListen: listen}
		if _, err := New(t.Context(), o); err == nil || !strings.Contains(err.Error(), "worker.prometheus_listen") {
			t.Errorf("listen %q: err = %v, want one naming worker.prometheus_listen", listen, err)
		}
	}

	s := startNATS(t)
	taken := startWorker(t, s, []*manager.Manager{toyManager(newToy())}, func(o *Options) { o.PrometheusListen = "127.0.0.1:0" })
	w, err := New(t.Context(), Options{Host: "h2", Managers: []*manager.Manager{toyManager(newToy())},
		PrometheusListen: taken.PrometheusAddr().String(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Run(t.Context()); err == nil || !strings.Contains(err.Error(), "worker.prometheus_listen") {
		t.Fatalf("Run on a taken port: err = %v, want one naming worker.prometheus_listen", err)
	}
}

// TestPrometheusAdmission: the stream-admission numbers of $SRV.STATS
// (slots, streams open, clients, refusals) are on /metrics too, and move
// with them: one client over its share and one over the pool are refused,
// and a stream whose client went away frees its slot.
func TestPrometheusAdmission(t *testing.T) {
	d := quietToy{newToy()}
	m := manager.New(d, manager.Options{Host: "h1", CacheTTL: -1, RetryAttempts: 1})
	if _, err := m.Create(t.Context(), drivers.InstanceTemplate{Name: "x", BaseImage: "x"}); err != nil {
		t.Fatal(err)
	}
	s := startNATS(t)
	w := startWorker(t, s, []*manager.Manager{m}, func(o *Options) {
		o.PrometheusListen = "127.0.0.1:0"
		o.MaxConcurrent = 5
		o.MaxStreams = 2
		o.MaxStreamsPerClient = 1
		o.HeartbeatInterval = 200 * time.Millisecond
	})
	url := "http://" + w.PrometheusAddr().String() + "/metrics"
	client := func(i int) *nats.Conn {
		c, err := nats.Connect(s.ClientURL(), nats.CustomInboxPrefix(fmt.Sprintf("_INBOX_pa%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		return c
	}
	want := func(streams, clients int, rejected uint64) {
		t.Helper()
		testenv.Eventually(t, 20*time.Second, func() error {
			if st := w.stats(); st.Streams != streams || st.StreamClients != clients || st.StreamsRejected != rejected {
				return fmt.Errorf("stats: %d streams of %d clients, %d rejected; want %d, %d, %d",
					st.Streams, st.StreamClients, st.StreamsRejected, streams, clients, rejected)
			}
			return nil
		})
	}
	a := client(1)
	first, second := openFollow(t, a), openFollow(t, a)
	var refused string
	select { // one of the two is over a's share
	case refused = <-first:
	case refused = <-second:
	case <-time.After(20 * time.Second):
		t.Fatal("neither stream of one client was refused")
	}
	if refused != drivers.Unavailable.String() {
		t.Fatalf("stream over the client's share ended with %q, want unavailable", refused)
	}
	want(1, 1, 1)
	openFollow(t, client(2))
	want(2, 2, 1)
	if code := <-openFollow(t, client(3)); code != drivers.Unavailable.String() {
		t.Fatalf("stream over the pool ended with %q, want unavailable", code)
	}
	want(2, 2, 2)

	check := func(streams, clients, rejected float64) []byte {
		t.Helper()
		body, fams, err := scrape(url)
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name string
			want float64
		}{
			{"subbus_requests_max_in_flight", 5},
			{"subbus_streams_max", 2},
			{"subbus_streams_max_per_client", 1},
			{"subbus_streams_open", streams},
			{"subbus_stream_clients", clients},
			{"subbus_streams_rejected_total", rejected},
			{"subbus_callers_gone_total", 0},
		} {
			if got, found := sample(fams, tc.name, nil); !found || got != tc.want {
				t.Errorf("%s = %v (present: %v), want %v", tc.name, got, found, tc.want)
			}
		}
		return body
	}
	body := check(2, 2, 2)
	a.Close() // its stream ends within a heartbeat interval
	want(1, 1, 2)
	check(1, 1, 2)

	promtool := testenv.Tool(t, "promtool", "apt-get install prometheus (bash scripts/setup/tools.sh)")
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}
