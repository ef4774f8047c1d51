package worker

import (
	"errors"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/subbus/subbus/internal/config"
	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/manager"
)

// The Prometheus exposition (docs/deploy.md lists every metric). Nothing
// here keeps counters of its own: each scrape reads the worker's and the
// managers' existing statistics (the same numbers as the micro STATS
// reply), so both views always agree.

// metricDesc lists the worker's metrics. Labels: driver and op are those
// of the bus (substrate.<driver>.<op>); code is a drivers.Code name.
var metricDesc = struct {
	info, ready, inFlight, replies, errorReplies      *prometheus.Desc
	longOps                                           *prometheus.Desc
	maxInFlight, streams, maxStreams, maxPerClient    *prometheus.Desc
	streamClients, streamsRejected, callersGone       *prometheus.Desc
	ops, opErrors, opRetries, opCacheHits, opDuration *prometheus.Desc
	breaker, driverUp, driverEvents, instances        *prometheus.Desc
	eventsPublished, eventsDropped, eventsPending     *prometheus.Desc
	samplesPublished, samplesDropped, samplesPending  *prometheus.Desc
	natsConnected, natsReconnects                     *prometheus.Desc
}{
	info:         prometheus.NewDesc("subbus_worker_info", "Constant 1, labelled with the worker's host identity, version and whether it embeds its NATS server.", []string{"host", "version", "embedded_nats"}, nil),
	ready:        prometheus.NewDesc("subbus_worker_ready", "1 once the worker serves requests and its streams exist, else 0.", nil, nil),
	inFlight:     prometheus.NewDesc("subbus_requests_in_flight", "Requests being handled now (bounded by worker.max_concurrent).", nil, nil),
	replies:      prometheus.NewDesc("subbus_replies_total", "Replies sent, errors included.", nil, nil),
	longOps:      prometheus.NewDesc("subbus_long_operations_running", "Long operations (begun with no-wait) running in the background now (bounded by worker.max_operations).", nil, nil),
	errorReplies: prometheus.NewDesc("subbus_error_replies_total", "Error replies sent.", nil, nil),

	maxInFlight:     prometheus.NewDesc("subbus_requests_max_in_flight", "Unary request slots (worker.max_concurrent); a request waits when all are in use.", nil, nil),
	streams:         prometheus.NewDesc("subbus_streams_open", "Streamed requests (logs follow, exec stream) holding a stream slot now.", nil, nil),
	maxStreams:      prometheus.NewDesc("subbus_streams_max", "Stream slots (worker.max_streams).", nil, nil),
	maxPerClient:    prometheus.NewDesc("subbus_streams_max_per_client", "Stream slots one client may hold (worker.max_streams_per_client).", nil, nil),
	streamClients:   prometheus.NewDesc("subbus_stream_clients", "Clients (reply inbox prefixes) holding at least one stream slot now.", nil, nil),
	streamsRejected: prometheus.NewDesc("subbus_streams_rejected_total", "Streamed requests refused (unavailable) because every stream slot, or the client's share, was in use.", nil, nil),
	callersGone:     prometheus.NewDesc("subbus_callers_gone_total", "Unary execs cancelled because their caller went away.", nil, nil),

	ops:         prometheus.NewDesc("subbus_operations_total", "Operations run by a driver's manager, cache hits included.", []string{"driver", "op"}, nil),
	opErrors:    prometheus.NewDesc("subbus_operation_errors_total", "Failed operations by error code.", []string{"driver", "op", "code"}, nil),
	opRetries:   prometheus.NewDesc("subbus_operation_retries_total", "Extra tries made after retryable errors.", []string{"driver", "op"}, nil),
	opCacheHits: prometheus.NewDesc("subbus_operation_cache_hits_total", "Operations answered from the manager's cache.", []string{"driver", "op"}, nil),
	opDuration:  prometheus.NewDesc("subbus_operation_duration_seconds", "Duration of operations, retries included.", []string{"driver", "op"}, nil),

	breaker:      prometheus.NewDesc("subbus_breaker_state", "Circuit breaker of a driver: 1 for its current state (closed, open, half_open), 0 for the others.", []string{"driver", "state"}, nil),
	driverUp:     prometheus.NewDesc("subbus_driver_connected", "1 when the driver's substrate answered its last connect or health check, else 0.", []string{"driver"}, nil),
	driverEvents: prometheus.NewDesc("subbus_driver_events_total", "Lifecycle events emitted by a driver's manager, by type (native_echo_suppressed counts native events dropped as echoes of a mutation).", []string{"driver", "type"}, nil),
	instances:    prometheus.NewDesc("subbus_instances", "Instances by normalized state, as of the last metrics sampling (every global.metrics_interval; absent while global.enable_metrics is false or before the first sampling).", []string{"driver", "state"}, nil),

	eventsPublished:  prometheus.NewDesc("subbus_events_published_total", "Events stored in the SUBSTRATE_EVENTS stream (acknowledged by JetStream).", nil, nil),
	eventsDropped:    prometheus.NewDesc("subbus_events_dropped_total", "Events lost: dropped from the full outbox (worker.outbox_size) or unpublishable.", nil, nil),
	eventsPending:    prometheus.NewDesc("subbus_events_pending", "Events waiting in the outbox for JetStream to acknowledge them.", nil, nil),
	samplesPublished: prometheus.NewDesc("subbus_metrics_samples_published_total", "Usage samples stored in the SUBSTRATE_METRICS stream.", nil, nil),
	samplesDropped:   prometheus.NewDesc("subbus_metrics_samples_dropped_total", "Usage samples dropped from the full outbox (worker.metrics_outbox_size).", nil, nil),
	samplesPending:   prometheus.NewDesc("subbus_metrics_samples_pending", "Usage samples waiting in the outbox.", nil, nil),

	natsConnected:  prometheus.NewDesc("subbus_nats_connected", "1 while the worker's NATS connection is connected, else 0.", nil, nil),
	natsReconnects: prometheus.NewDesc("subbus_nats_reconnects_total", "Times the worker's NATS connection reconnected.", nil, nil),
}

// breakerStates are the values of subbus_breaker_state's state label.
var breakerStates = []string{"closed", "open", "half_open"}

// instanceStates counts each driver's instances by state, as of the last
// list made by the metrics loop.
type instanceStates struct {
	mu     sync.Mutex
	counts map[string]map[drivers.State]int
}

// record replaces driver's counts with those of list.
func (s *instanceStates) record(driver string, list []drivers.Instance) {
	c := make(map[drivers.State]int, len(drivers.States()))
	for _, st := range drivers.States() {
		c[st] = 0
	}
	for _, i := range list {
		c[i.State]++
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.counts == nil {
		s.counts = map[string]map[drivers.State]int{}
	}
	s.counts[driver] = c
}

func (s *instanceStates) snapshot() map[string]map[drivers.State]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]map[drivers.State]int, len(s.counts))
	for d, c := range s.counts {
		out[d] = c // never mutated after record
	}
	return out
}

// collector is the worker's prometheus.Collector.
type collector struct{ w *Worker }

// PrometheusRegistry returns a registry holding the worker's metrics and
// the Go runtime and process collectors; it is what /metrics serves.
func (w *Worker) PrometheusRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{w}, collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	prometheus.DescribeByCollect(c, ch)
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	w := c.w
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	bool01 := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}

	ready := false
	select {
	case <-w.ready:
		ready = true
	default:
	}
	gauge(metricDesc.info, 1, w.host, w.opts.Version, map[bool]string{true: "true", false: "false"}[w.opts.Connect == nil])
	gauge(metricDesc.ready, bool01(ready))
	s := w.stats()
	gauge(metricDesc.inFlight, float64(s.InFlight))
	gauge(metricDesc.longOps, float64(s.Operations))
	counter(metricDesc.replies, float64(s.Replies))
	counter(metricDesc.errorReplies, float64(s.ErrorReplies))
	gauge(metricDesc.maxInFlight, float64(s.MaxInFlight))
	gauge(metricDesc.streams, float64(s.Streams))
	gauge(metricDesc.maxStreams, float64(s.MaxStreams))
	gauge(metricDesc.maxPerClient, float64(s.MaxStreamsPerClient))
	gauge(metricDesc.streamClients, float64(s.StreamClients))
	counter(metricDesc.streamsRejected, float64(s.StreamsRejected))
	counter(metricDesc.callersGone, float64(s.CallersGone))
	counter(metricDesc.eventsPublished, float64(s.EventsStored))
	counter(metricDesc.eventsDropped, float64(s.EventsDropped))
	gauge(metricDesc.eventsPending, float64(s.EventsPending))
	counter(metricDesc.samplesPublished, float64(w.metrics.stored.Load()))
	counter(metricDesc.samplesDropped, float64(s.MetricsDropped))
	gauge(metricDesc.samplesPending, float64(s.MetricsPending))

	if nc := w.nc; nc != nil {
		gauge(metricDesc.natsConnected, bool01(nc.Status() == nats.CONNECTED))
		counter(metricDesc.natsReconnects, float64(nc.Stats().Reconnects))
	} else {
		gauge(metricDesc.natsConnected, 0)
		counter(metricDesc.natsReconnects, 0)
	}

	for _, m := range w.managers {
		d := m.Driver()
		st := s.Substrates[d]
		gauge(metricDesc.driverUp, bool01(m.IsConnected()), d)
		for _, b := range breakerStates {
			gauge(metricDesc.breaker, bool01(st.Breaker == b), d, b)
		}
		for typ, n := range st.Events {
			counter(metricDesc.driverEvents, float64(n), d, typ)
		}
		for op, o := range st.Ops {
			collectOp(ch, d, op, o)
		}
	}
	for d, counts := range w.instances.snapshot() {
		for state, n := range counts {
			gauge(metricDesc.instances, float64(n), d, string(state))
		}
	}
}

// collectOp emits one operation's counters and its duration histogram,
// rebuilt from the manager's millisecond buckets.
func collectOp(ch chan<- prometheus.Metric, driver, op string, o manager.OpStat) {
	ch <- prometheus.MustNewConstMetric(metricDesc.ops, prometheus.CounterValue, float64(o.Count), driver, op)
	ch <- prometheus.MustNewConstMetric(metricDesc.opRetries, prometheus.CounterValue, float64(o.Retries), driver, op)
	ch <- prometheus.MustNewConstMetric(metricDesc.opCacheHits, prometheus.CounterValue, float64(o.CacheHits), driver, op)
	for code, n := range o.Errors {
		ch <- prometheus.MustNewConstMetric(metricDesc.opErrors, prometheus.CounterValue, float64(n), driver, op, code)
	}
	buckets := make(map[float64]uint64, len(o.BucketBoundsMs))
	var cum uint64
	for i, bound := range o.BucketBoundsMs {
		if i < len(o.Buckets) {
			cum += uint64(o.Buckets[i])
		}
		buckets[bound/1000] = cum
	}
	sum := o.MeanMs * float64(o.Count) / 1000
	ch <- prometheus.MustNewConstHistogram(metricDesc.opDuration, uint64(o.Count), sum, buckets, driver, op)
}

// listenPrometheus binds the /metrics listener when configured, so a bad
// address fails Run before anything else starts.
func (w *Worker) listenPrometheus() error {
	if w.opts.PrometheusListen == "" {
		return nil
	}
	ln, err := net.Listen("tcp", w.opts.PrometheusListen)
	if err != nil {
		return &config.Error{Key: "worker.prometheus_listen", Msg: err.Error()}
	}
	w.promLn = ln
	return nil
}

// servePrometheus serves /metrics on the bound listener until stop is
// called. Call it once the NATS connection exists.
func (w *Worker) servePrometheus() (stop func()) {
	if w.promLn == nil {
		return func() {}
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(w.PrometheusRegistry(), promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(w.promLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			w.log.Error().Err(err).Msg("prometheus endpoint stopped")
		}
	}()
	w.log.Info().Str("url", "http://"+w.promLn.Addr().String()+"/metrics").Msg("prometheus endpoint serving")
	return func() {
		_ = srv.Close()
		<-done
	}
}

// PrometheusAddr is the address /metrics is served on (nil when
// worker.prometheus_listen is empty); valid once Ready is closed.
func (w *Worker) PrometheusAddr() net.Addr {
	if w.promLn == nil {
		return nil
	}
	return w.promLn.Addr()
}
