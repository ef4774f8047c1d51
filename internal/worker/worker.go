package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/rs/zerolog"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/internal/registry"
	"github.com/subbus/subbus/messages"
)

// Worker serves drivers on the bus. Create it with New, then call Run once.
type Worker struct {
	opts     Options
	host     string
	log      zerolog.Logger
	managers []*manager.Manager // sorted by driver name
	byName   map[string]*manager.Manager

	srv *server.Server // embedded server, nil when external
	nc  *nats.Conn
	js  jetstream.JetStream
	svc micro.Service

	sem          chan struct{} // unary request slots
	streams      *streamPool   // streamed request slots
	callersGone  atomic.Uint64 // unary execs cancelled: caller gone
	replies      atomic.Uint64 // replies sent (micro's stats count only what handlers answer synchronously)
	errorReplies atomic.Uint64
	inflight     *inflight
	// opCtx is the parent of every operation: cancelled when the grace
	// period ends, not when shutdown begins.
	opCtx    context.Context
	opCancel context.CancelFunc

	idem    *idemCache
	fleet   *fleetState
	ops     *opTracker // long operations in the background (ops.go)
	events  *outbox
	metrics *outbox
	ready   chan struct{} // closed once the streams exist

	// Prometheus (prometheus.go).
	instances instanceStates // by driver, from the metrics loop's lists
	promLn    net.Listener   // worker.prometheus_listen, nil when off

	clientURL string
	stopping  chan struct{} // closed when shutdown begins
	closed    chan struct{}
}

// New validates opts, resolves the host and builds the drivers' managers
// (from the registry unless opts.Managers is set). It does not connect.
func New(ctx context.Context, opts Options) (*Worker, error) {
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	host, err := ResolveHost(opts.Host)
	if err != nil {
		return nil, err
	}
	w := &Worker{
		opts:     opts,
		host:     host,
		log:      opts.Logger.With().Str("host", host).Logger(),
		byName:   map[string]*manager.Manager{},
		sem:      make(chan struct{}, opts.MaxConcurrent),
		streams:  newStreamPool(opts.MaxStreams, opts.MaxStreamsPerClient),
		inflight: newInflight(),
		idem:     newIdemCache(opts.IdempotencyTTL, opts.IdempotencyEntries),
		ops:      newOpTracker(opts.MaxOperations),
		events:   newOutbox(opts.OutboxSize),
		metrics:  newOutbox(opts.MetricsOutboxSize),
		ready:    make(chan struct{}),
		stopping: make(chan struct{}),
		closed:   make(chan struct{}),
	}
	if opts.OutboxDir != "" {
		if w.events, err = openOutbox(opts.OutboxDir, "events", opts.OutboxSize); err != nil {
			return nil, fmt.Errorf("events outbox: %w", err)
		}
		if w.metrics, err = openOutbox(opts.OutboxDir, "metrics", opts.MetricsOutboxSize); err != nil {
			w.events.close()
			return nil, fmt.Errorf("metrics outbox: %w", err)
		}
		if n := w.events.replayed + w.metrics.replayed; n > 0 {
			w.log.Info().Int("events", w.events.replayed).Int("metrics", w.metrics.replayed).Str("dir", opts.OutboxDir).
				Msg("outbox: replaying what JetStream had not acknowledged")
		}
	}
	ok := false
	defer func() {
		if !ok {
			w.events.close()
			w.metrics.close()
		}
	}()
	mgrs := opts.Managers
	if mgrs == nil {
		ds, err := selectDrivers(ctx, opts, w.log)
		if err != nil {
			return nil, err
		}
		for _, d := range ds {
			mo, err := w.managerOptions(d.Name())
			if err != nil {
				return nil, err
			}
			mgrs = append(mgrs, manager.New(d, mo))
		}
	}
	for _, m := range mgrs {
		name := m.Driver()
		if err := drivers.ValidDriverName(name); err != nil {
			return nil, fmt.Errorf("driver name %q cannot be a subject token: %w", name, err)
		}
		if _, dup := w.byName[name]; dup {
			return nil, fmt.Errorf("driver %q enabled twice", name)
		}
		w.byName[name] = m
		w.managers = append(w.managers, m)
	}
	slices.SortFunc(w.managers, func(a, b *manager.Manager) int { return strings.Compare(a.Driver(), b.Driver()) })
	if len(w.managers) == 0 {
		return nil, errors.New("no driver enabled")
	}
	w.fleet = newFleetState(w.driverNames())
	ok = true
	return w, nil
}

// managerOptions reads the manager settings of driver name from the
// configuration (manager.OptionsFromConfig), with this worker's host.
func (w *Worker) managerOptions(name string) (manager.Options, error) {
	if w.opts.ManagerOptions != nil {
		return w.opts.ManagerOptions(name), nil
	}
	mo, err := manager.OptionsFromConfig(w.opts.Config, name)
	if err != nil {
		return manager.Options{}, err
	}
	mo.Host = w.host
	mo.Logger = w.log
	return mo, nil
}

// selectDrivers builds the configured drivers, or process plus every
// detected one, logging what was found and why not.
func selectDrivers(ctx context.Context, o Options, log zerolog.Logger) ([]drivers.Driver, error) {
	names := o.Drivers
	if len(names) == 0 {
		// Detect every substrate at once; log in registry order.
		fs := registry.Builtin()
		errs := make([]error, len(fs))
		var wg sync.WaitGroup
		for i, f := range fs {
			if f.Name == "process" {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				defer cancel()
				errs[i] = f.Detect(dctx, o.Config)
			}()
		}
		wg.Wait()
		for i, f := range fs {
			switch {
			case f.Name == "process":
				log.Info().Str("driver", f.Name).Msg("driver enabled (always on)")
			case errs[i] != nil:
				log.Info().Str("driver", f.Name).Str("reason", errs[i].Error()).Msg("driver not found")
				continue
			default:
				log.Info().Str("driver", f.Name).Msg("driver found")
			}
			names = append(names, f.Name)
		}
	}
	var out []drivers.Driver
	for _, n := range names {
		f, ok := registry.Lookup(n)
		if !ok {
			return nil, fmt.Errorf("unknown driver %q (built in: %s)", n, strings.Join(registry.Names(), ", "))
		}
		d, err := f.New(o.Config)
		if err != nil {
			return nil, fmt.Errorf("driver %s: %w", n, err)
		}
		out = append(out, d)
	}
	return out, nil
}

// Host returns the worker's host identity.
func (w *Worker) Host() string { return w.host }

// Managers returns the served managers, sorted by driver name.
func (w *Worker) Managers() []*manager.Manager { return w.managers }

// ClientURL is the embedded server's client URL ("" when external); valid
// once Ready is closed.
func (w *Worker) ClientURL() string { return w.clientURL }

// Ready is closed once the worker serves requests and its streams exist.
func (w *Worker) Ready() <-chan struct{} { return w.ready }

// Dropped returns how many events and metrics samples were dropped
// because the outboxes were full.
func (w *Worker) Dropped() (events, metrics uint64) {
	return w.events.dropped.Load(), w.metrics.dropped.Load()
}

// Pending returns how many events wait in the outbox.
func (w *Worker) Pending() int { return w.events.len() }

// Run connects (starting the embedded server when no connection is
// configured), serves until ctx ends, then shuts down gracefully: stop
// taking requests, wait up to GracePeriod for in-flight ones, publish the
// events still in the outbox, drain the connection, stop the embedded
// server. It returns nil after a clean shutdown.
func (w *Worker) Run(ctx context.Context) (err error) {
	defer close(w.closed)
	w.opCtx, w.opCancel = context.WithCancel(context.WithoutCancel(ctx))
	defer w.opCancel()

	if err := w.listenPrometheus(); err != nil {
		return err
	}
	if err := w.connect(); err != nil {
		if w.promLn != nil {
			w.promLn.Close()
		}
		return err
	}
	defer w.stopServer()
	defer w.servePrometheus()() // served until the very end of shutdown

	js, err := jetstream.New(w.nc, jetstream.WithPublishAsyncTimeout(5*time.Second),
		jetstream.WithPublishAsyncMaxPending(4096), jetstream.WithDefaultTimeout(5*time.Second))
	if err != nil {
		w.nc.Close()
		return fmt.Errorf("jetstream: %w", err)
	}
	w.js = js

	unsubs := w.subscribeEvents() // before Connect: its events count too
	for _, m := range w.managers {
		// Bounded by the manager's connection_timeout; keepConnected
		// retries a driver that is not connected yet.
		if err := m.Connect(ctx); err != nil {
			w.log.Warn().Str("driver", m.Driver()).Err(err).Msg("driver not connected yet; retrying in the background, requests report it meanwhile")
		}
	}

	if err := w.addService(); err != nil {
		for _, u := range unsubs {
			u()
		}
		w.nc.Close()
		return err
	}

	// Background work: stream setup, publishers, metrics.
	bg, stopBG := context.WithCancel(context.WithoutCancel(ctx))
	var bgWG sync.WaitGroup
	bgWG.Add(3)
	go func() { defer bgWG.Done(); w.keepStreams(bg) }()
	go func() { defer bgWG.Done(); w.publishLoop(bg, w.events) }()
	go func() { defer bgWG.Done(); w.publishLoop(bg, w.metrics) }()
	if w.opts.EnableMetrics {
		bgWG.Add(1)
		go func() { defer bgWG.Done(); w.metricsLoop(bg) }()
	}
	for _, m := range w.managers {
		bgWG.Add(1)
		go func() { defer bgWG.Done(); w.keepConnected(bg, m) }()
	}
	bgWG.Add(1)
	go func() { defer bgWG.Done(); w.afterReady(bg, func() { w.runFleet(bg) }) }()
	w.log.Info().Strs("drivers", w.driverNames()).Str("version", w.opts.Version).Str("nats", w.nc.ConnectedUrlRedacted()).
		Msg("worker serving")

	<-ctx.Done()
	w.log.Info().Msg("shutting down: no new requests")
	close(w.stopping) // ends followed log streams
	if err := w.svc.Stop(); err != nil {
		w.log.Warn().Err(err).Msg("stopping the service")
	}
	if !w.inflight.wait(w.opts.GracePeriod) {
		w.log.Warn().Dur("grace_period", w.opts.GracePeriod).Msg("grace period over: cancelling in-flight requests")
		w.opCancel()
		w.inflight.wait(5 * time.Second)
	}
	w.inflight.close()
	w.inflight.wait(5 * time.Second)
	// Background loops stop first, so that only flush publishes from here.
	stopBG()
	bgWG.Wait()
	// Closing a driver may emit events (disconnected): still subscribed.
	for _, m := range w.managers {
		if err := m.Close(); err != nil {
			w.log.Warn().Str("driver", m.Driver()).Err(err).Msg("closing driver")
		}
	}
	for _, u := range unsubs {
		u()
	}
	w.flush(5 * time.Second)
	if w.nc.IsConnected() {
		hctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		w.heartbeat(hctx, true) // records stay; readers see the host down
		cancel()
	}
	if n := w.events.len(); n > 0 {
		w.log.Error().Int("events", n).Str("outbox", w.opts.OutboxDir).Msg("events not published before shutdown (a durable outbox replays them at the next start)")
	}
	w.events.close()
	w.metrics.close()
	w.drain()
	w.log.Info().Msg("worker stopped")
	return nil
}

// afterReady runs fn once the streams and buckets exist, unless ctx ends first.
func (w *Worker) afterReady(ctx context.Context, fn func()) {
	select {
	case <-w.ready:
		fn()
	case <-ctx.Done():
	}
}

// Done is closed when Run has returned.
func (w *Worker) Done() <-chan struct{} { return w.closed }

func (w *Worker) driverNames() []string {
	out := make([]string, len(w.managers))
	for i, m := range w.managers {
		out[i] = m.Driver()
	}
	return out
}

// connect starts the embedded server when no Connect is configured, then
// connects (reconnecting forever with backoff).
func (w *Worker) connect() error {
	name := "subbus-worker-" + w.host
	handlers := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.CustomReconnectDelay(func(attempts int) time.Duration {
			return min(time.Duration(attempts)*250*time.Millisecond, 5*time.Second)
		}),
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			if nc.IsDraining() || nc.IsClosed() {
				return
			}
			w.log.Warn().AnErr("reason", err).Msg("NATS disconnected; events are kept until it is back")
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			w.log.Info().Str("url", nc.ConnectedUrlRedacted()).Msg("NATS reconnected")
			w.events.wake()
			w.metrics.wake()
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			ev := w.log.Warn().Err(err)
			if sub != nil {
				ev = ev.Str("subject", sub.Subject)
			}
			ev.Msg("NATS async error")
		}),
	}
	if w.opts.Connect != nil {
		nc, err := w.opts.Connect(handlers...)
		if err != nil {
			return fmt.Errorf("connecting to NATS: %w", err)
		}
		w.nc = nc
		return nil
	}
	kp, err := localCredential(w.opts.Embedded.Credential, w.opts.Embedded.CredentialGroup)
	if err != nil {
		return err
	}
	srv, err := startEmbedded(w.opts.Embedded, name, kp, w.log)
	if err != nil {
		return err
	}
	w.srv = srv
	w.clientURL = srv.ClientURL()
	w.log.Info().Str("url", w.clientURL).Str("data_dir", w.opts.Embedded.DataDir).
		Str("credential", w.opts.Embedded.Credential).Msg("embedded NATS server started; clients authenticate with the credential")
	pub, _ := kp.PublicKey()
	nc, err := nats.Connect(w.clientURL, append(handlers, nats.InProcessServer(srv), nats.Nkey(pub, kp.Sign))...)
	if err != nil {
		srv.Shutdown()
		return fmt.Errorf("connecting to the embedded server: %w", err)
	}
	w.nc = nc
	return nil
}

// drain drains the connection and waits for it to close.
func (w *Worker) drain() {
	done := make(chan struct{})
	w.nc.SetClosedHandler(func(*nats.Conn) { close(done) })
	if err := w.nc.Drain(); err != nil {
		w.nc.Close()
		return
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		w.nc.Close()
	}
}

func (w *Worker) stopServer() {
	if w.srv == nil {
		return
	}
	w.srv.Shutdown()
	w.srv.WaitForShutdown()
	w.log.Info().Msg("embedded NATS server stopped")
}

// keepStreams creates or checks the streams, retrying until it works, then
// marks the worker ready.
func (w *Worker) keepStreams(ctx context.Context) {
	delay := 250 * time.Millisecond
	for {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := w.ensureStreams(sctx)
		cancel()
		if err == nil {
			close(w.ready)
			return
		}
		w.log.Warn().Err(err).Msg("streams not ready; events wait in the outbox")
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(delay*2, 10*time.Second)
	}
}

// subscribeEvents puts every manager event into the outbox.
func (w *Worker) subscribeEvents() []func() {
	var unsubs []func()
	for _, m := range w.managers {
		unsubs = append(unsubs, m.Subscribe(w.enqueueEvent), m.Subscribe(w.noteEvent))
	}
	return unsubs
}

// enqueueEvent queues e for publishing. It never blocks.
func (w *Worker) enqueueEvent(e messages.Event) {
	if e.ID == "" {
		e.ID = messages.NewRequestID()
	}
	if e.Host == "" {
		e.Host = w.host
	}
	if !messages.ValidToken(e.Driver) || !messages.ValidToken(e.Host) || !messages.ValidToken(string(e.Type)) {
		// Such an event could never be stored; keep it from clogging the outbox.
		w.log.Error().Str("event", e.ID).Str("driver", e.Driver).Str("type", string(e.Type)).Msg("event with an invalid driver, host or type dropped")
		w.events.dropped.Add(1)
		return
	}
	data, err := json.Marshal(messages.NewCloudEvent(e))
	if err != nil {
		w.log.Error().Err(err).Str("event", e.ID).Msg("encoding event")
		return
	}
	w.events.push(messages.EventSubject(e.Driver, e.Host, e.Instance, string(e.Type)), e.ID, data)
}

// publishLoop publishes the outbox's items to JetStream with async acks,
// removing each once acknowledged; unacknowledged ones are retried with
// the same Nats-Msg-Id (so the stream stores each once) after a backoff.
// It publishes only while connected and after the streams exist.
func (w *Worker) publishLoop(ctx context.Context, ob *outbox) {
	select {
	case <-w.ready:
	case <-ctx.Done():
		return
	}
	backoff := 100 * time.Millisecond
	for {
		if ob.len() == 0 || !w.nc.IsConnected() {
			select {
			case <-ctx.Done():
				return
			case <-ob.notify:
			case <-time.After(time.Second):
			}
			continue
		}
		if w.publishBatch(ob, 4000) {
			backoff = 100 * time.Millisecond
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// publishBatch publishes up to n items and waits for their acks. It
// reports whether every one was stored.
func (w *Worker) publishBatch(ob *outbox, n int) bool {
	batch := ob.peek(n)
	type pending struct {
		seq uint64
		f   jetstream.PubAckFuture
	}
	var fs []pending
	ok := true
	for _, it := range batch {
		msg := &nats.Msg{Subject: it.subject, Data: it.data, Header: nats.Header{}}
		f, err := w.js.PublishMsgAsync(msg, jetstream.WithMsgID(it.msgID))
		if err != nil {
			ok = false
			break
		}
		fs = append(fs, pending{it.seq, f})
	}
	done := map[uint64]bool{}
	var lastErr error
	for _, p := range fs {
		select {
		case <-p.f.Ok():
			done[p.seq] = true
		case err := <-p.f.Err():
			ok, lastErr = false, err
		}
	}
	ob.remove(done)
	if lastErr != nil {
		w.log.Debug().Err(lastErr).Int("pending", ob.len()).Msg("publish not acknowledged; retrying")
		if errors.Is(lastErr, jetstream.ErrNoStreamResponse) && w.opts.ManageStreams {
			// The stream vanished (deleted, or a fresh server): recreate it.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if err := w.ensureStreams(ctx); err != nil {
				w.log.Warn().Err(err).Msg("streams not ready; events wait in the outbox")
			}
			cancel()
		}
	}
	return ok
}

// flush publishes what the outboxes hold, for at most d.
func (w *Worker) flush(d time.Duration) {
	deadline := time.Now().Add(d)
	select {
	case <-w.ready:
	case <-time.After(d):
		return
	}
	for time.Now().Before(deadline) && (w.events.len() > 0 || w.metrics.len() > 0) {
		if !w.nc.IsConnected() {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		a := w.publishBatch(w.events, 512)
		b := w.publishBatch(w.metrics, 512)
		if !a || !b {
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// metricsLoop samples every running instance every MetricsInterval.
func (w *Worker) metricsLoop(ctx context.Context) {
	t := time.NewTicker(w.opts.MetricsInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, m := range w.managers {
			w.sampleMetrics(ctx, m)
		}
	}
}

// reconnectMin and reconnectMax bound the backoff between reconnection
// attempts of a driver whose substrate is unreachable.
var (
	reconnectMin = time.Second
	reconnectMax = 30 * time.Second
)

// keepConnected is the manager's ensure_connected loop: while a driver is
// disconnected it reconnects with exponential backoff (reconnectMin up to
// reconnectMax); while connected it re-checks the substrate's health every
// health_check_interval, reconnecting when that check finds it down. A
// substrate that was down when the worker started is therefore served as
// soon as it answers, its native event feed included.
func (w *Worker) keepConnected(ctx context.Context, m *manager.Manager) {
	opts := m.Options()
	backoff := reconnectMin
	for {
		wait := opts.HealthCheckInterval
		if !m.IsConnected() {
			wait = backoff
			backoff = min(2*backoff, reconnectMax)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		was := m.IsConnected()
		cctx, cancel := context.WithTimeout(ctx, opts.ConnectionTimeout)
		err := m.EnsureConnected(cctx)
		cancel()
		switch {
		case err == nil && !was:
			backoff = reconnectMin
			w.log.Info().Str("driver", m.Driver()).Msg("driver connected")
		case err != nil && ctx.Err() == nil:
			w.log.Debug().Str("driver", m.Driver()).Err(err).Dur("retry_in", backoff).Msg("driver still not connected")
		}
	}
}

func (w *Worker) sampleMetrics(ctx context.Context, m *manager.Manager) {
	lctx, cancel := context.WithTimeout(ctx, w.opts.MetricsInterval)
	defer cancel()
	list, err := m.List(lctx)
	if err != nil {
		w.log.Debug().Str("driver", m.Driver()).Err(err).Msg("metrics: list failed")
		return
	}
	w.instances.record(m.Driver(), list)
	var running []string
	for _, inst := range list {
		if inst.State == drivers.StateRunning {
			running = append(running, inst.Name)
		}
	}
	if len(running) == 0 {
		return
	}
	// One batch: drivers with a bulk API (docker, lxc) sample every
	// instance at once; the others are sampled with bounded parallelism.
	samples, failed, err := m.MetricsBatch(lctx, running)
	if err != nil {
		w.log.Debug().Str("driver", m.Driver()).Err(err).Msg("metrics: batch failed")
		return
	}
	for name, err := range failed {
		w.log.Debug().Str("driver", m.Driver()).Str("instance", name).Err(err).Msg("metrics: sample failed")
	}
	for _, name := range running {
		u, ok := samples[name]
		if !ok {
			continue
		}
		msg := messages.MetricsMessage{Driver: m.Driver(), Host: w.host, Instance: name, Time: time.Now().UTC(), Usage: messages.UsageFrom(u)}
		if !u.Time.IsZero() {
			msg.Time = u.Time
		}
		data, err := json.Marshal(msg)
		if err != nil {
			continue
		}
		subj := messages.MetricsSubject(m.Driver(), w.host, name)
		w.metrics.pushNoSync(subj, fmt.Sprintf("%s@%d", subj, msg.Time.UnixNano()), data)
	}
	w.metrics.sync() // one fsync per sampling pass
	w.metrics.wake()
}
