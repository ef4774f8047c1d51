package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/rs/zerolog"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/messages"
)

// QueueGroup is the queue group of every endpoint: among the workers
// serving a subject, one answers.
const QueueGroup = "substrate"

// addService registers the micro service: per driver, one endpoint on
// substrate.<driver>.* (any worker; see servesPooled) and one on
// substrate.<driver>.<host>.* (this host only). The op is the last
// subject token, so an unknown op is answered invalid_argument rather
// than "no responders".
func (w *Worker) addService() error {
	caps := map[string]messages.Capabilities{}
	for _, m := range w.managers {
		caps[m.Driver()] = messages.Capabilities(m.Capabilities())
	}
	capsJSON, _ := json.Marshal(caps)
	svc, err := micro.AddService(w.nc, micro.Config{
		Name:         messages.ServiceName,
		Version:      w.opts.Version,
		Description:  "subbus worker: manages instances through substrate drivers",
		QueueGroup:   QueueGroup,
		StatsHandler: func(*micro.Endpoint) any { return w.stats() },
		Metadata: map[string]string{
			"host":         w.host,
			"drivers":      strings.Join(w.driverNames(), ","),
			"capabilities": string(capsJSON),
			"version":      w.opts.Version,
		},
	})
	if err != nil {
		return fmt.Errorf("micro service: %w", err)
	}
	for _, m := range w.managers {
		d := m.Driver()
		meta := map[string]string{"driver": d, "host": w.host, "ops": strings.Join(messages.OpNames(messages.OpsFor(m.Capabilities())), ",")}
		h := w.handler(m)
		if !w.servesPooled(m) {
			w.log.Info().Str("driver", d).Msg("serving this host's subjects only (per-host driver not in worker.pooled_drivers)")
		} else if err := svc.AddEndpoint(d, h, micro.WithEndpointSubject(messages.SubjectRoot+"."+d+".*"),
			micro.WithEndpointMetadata(meta)); err != nil {
			_ = svc.Stop()
			return fmt.Errorf("endpoint %s: %w", d, err)
		}
		if err := svc.AddEndpoint(d+"-"+w.host, h, micro.WithEndpointSubject(messages.SubjectRoot+"."+d+"."+w.host+".*"),
			micro.WithEndpointMetadata(meta)); err != nil {
			_ = svc.Stop()
			return fmt.Errorf("endpoint %s on %s: %w", d, w.host, err)
		}
	}
	w.svc = svc
	return nil
}

// servesPooled reports whether m's driver is served on its pooled subject
// substrate.<driver>.<op> (docs/fleet.md "Which subjects a worker
// serves"): always when the driver is cluster-wide (drivers.ClusterWide:
// any of its workers may answer, that is the point of several); for a
// per-host driver when worker.pooled_drivers is absent (the single-host
// default) or lists it.
func (w *Worker) servesPooled(m *manager.Manager) bool {
	return m.ClusterWide() || !w.opts.RestrictPooled || slices.Contains(w.opts.PooledDrivers, m.Driver())
}

// Stats is the worker-wide data in each endpoint's micro stats
// (`nats micro stats substrate`).
type Stats struct {
	// InFlight is the unary slots in use, of MaxInFlight (max_concurrent).
	InFlight    int `json:"in_flight"`
	MaxInFlight int `json:"max_in_flight"`
	// Streams in use (logs follow, exec stream), of MaxStreams; how many
	// clients hold them; streams refused because the pool or the client's
	// share (MaxStreamsPerClient) was full.
	Streams             int    `json:"streams"`
	MaxStreams          int    `json:"max_streams"`
	MaxStreamsPerClient int    `json:"max_streams_per_client"`
	StreamClients       int    `json:"stream_clients"`
	StreamsRejected     uint64 `json:"streams_rejected"`
	// Operations are the long operations running in the background, of
	// MaxOperations (worker.max_operations).
	Operations    int `json:"operations"`
	MaxOperations int `json:"max_operations"`
	// CallersGone counts unary execs cancelled because their caller went away.
	CallersGone    uint64 `json:"callers_gone"`
	Replies        uint64 `json:"replies"`
	ErrorReplies   uint64 `json:"error_replies"`
	EventsPending  int    `json:"events_pending"`
	EventsStored   uint64 `json:"events_stored"`
	EventsDropped  uint64 `json:"events_dropped"`
	MetricsPending int    `json:"metrics_pending"`
	MetricsDropped uint64 `json:"metrics_dropped"`
	// The durable outbox (worker.outbox_dir): bytes of its event and
	// metrics logs, items replayed at start, and failed disk writes/fsyncs
	// (such items are kept in memory only).
	OutboxBytes      int64  `json:"outbox_bytes"`
	OutboxReplayed   int    `json:"outbox_replayed"`
	OutboxDiskErrors uint64 `json:"outbox_disk_errors"`
	// Goroutines and RSSBytes describe the worker process (leak watch).
	Goroutines int   `json:"goroutines"`
	RSSBytes   int64 `json:"rss_bytes"`
	// Substrates holds each driver's operation metrics: counts, errors by
	// code, retries, cache hits, durations, breaker state and events by type.
	Substrates map[string]manager.OpStats `json:"substrates"`
}

func (w *Worker) stats() Stats {
	streams, clients := w.streams.stats()
	return Stats{
		InFlight:            len(w.sem),
		MaxInFlight:         cap(w.sem),
		Streams:             streams,
		MaxStreams:          w.streams.max,
		MaxStreamsPerClient: w.streams.perClient,
		StreamClients:       clients,
		StreamsRejected:     w.streams.rejected.Load(),
		Operations:          w.ops.count(),
		MaxOperations:       w.ops.max,
		CallersGone:         w.callersGone.Load(),
		Replies:             w.replies.Load(),
		ErrorReplies:        w.errorReplies.Load(),
		EventsPending:       w.events.len(),
		EventsStored:        w.events.stored.Load(),
		EventsDropped:       w.events.dropped.Load(),
		MetricsPending:      w.metrics.len(),
		MetricsDropped:      w.metrics.dropped.Load(),
		OutboxBytes:         w.events.diskBytes() + w.metrics.diskBytes(),
		OutboxReplayed:      w.events.replayed + w.metrics.replayed,
		OutboxDiskErrors:    w.events.diskErrs.Load() + w.metrics.diskErrs.Load(),
		Goroutines:          runtime.NumGoroutine(),
		RSSBytes:            selfRSS(),
		Substrates:          w.substrateStats(),
	}
}

// selfRSS is the resident set size of this process (0 when unknown).
func selfRSS() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize())
}

func (w *Worker) substrateStats() map[string]manager.OpStats {
	out := make(map[string]manager.OpStats, len(w.managers))
	for _, m := range w.managers {
		out[m.Driver()] = m.Stats()
	}
	return out
}

// handler hands each request to a goroutine, admitted as described in
// admission.go: a unary request waits for one of MaxConcurrent slots, a
// streamed one takes a stream slot or is refused at once.
func (w *Worker) handler(m *manager.Manager) micro.Handler {
	return micro.HandlerFunc(func(req micro.Request) {
		received := time.Now()
		if !w.inflight.add() {
			// Dispatched by the final drain after the drivers closed.
			w.respondError(req, "", drivers.Errorf(drivers.Unavailable, "worker %s is shutting down", w.host))
			return
		}
		if w.serveCached(m, req, received) {
			w.inflight.done()
			return
		}
		release := func() { <-w.sem }
		if isStream(req) {
			client := clientOf(req.Reply())
			if !w.streams.acquire(client) {
				inUse, _ := w.streams.stats()
				w.respondError(req, req.Headers().Get(messages.HeaderRequestID), drivers.Errorf(drivers.Unavailable,
					"worker %s: too many streams (%d of %d in use; at most %d per client): retry later",
					w.host, inUse, w.streams.max, w.streams.perClient))
				w.inflight.done()
				return
			}
			release = func() { w.streams.release(client) }
		} else {
			w.sem <- struct{}{}
		}
		go func() {
			defer func() {
				if p := recover(); p != nil {
					w.log.Error().Interface("panic", p).Str("subject", req.Subject()).Msg("request handler panicked")
					w.respondError(req, "", drivers.Errorf(drivers.Internal, "worker panic: %v", p))
				}
				release()
				w.inflight.done()
			}()
			w.serve(m, req, received)
		}()
	})
}

// serveCached answers, on micro's goroutine, a get whose instance the
// manager's cache holds and reports whether it did; anything else (another
// op, a body other than {"name":"…"}, a cache miss, a deadline that
// passed, a no-wait header, an event waiting for its fsync) is left to the goroutine of the
// normal path, which may block on the driver. Such a get takes no unary
// slot and answers exactly what the normal path would (the manager's Get
// returns the cached instance too): it saves the hand-off to a goroutine,
// which at 16 concurrent clients was the largest cost left in the worker
// (docs/benchmarks.md).
func (w *Worker) serveCached(m *manager.Manager, req micro.Request, received time.Time) (served bool) {
	defer func() {
		if p := recover(); p != nil {
			w.log.Error().Interface("panic", p).Str("subject", req.Subject()).Msg("request handler panicked")
			w.respondError(req, "", drivers.Errorf(drivers.Internal, "worker panic: %v", p))
			served = true
		}
	}()
	subj := req.Subject()
	if !strings.HasSuffix(subj, "."+string(messages.OpGet)) {
		return false
	}
	name, ok := messages.PlainName(req.Data())
	if !ok {
		return false
	}
	hdr := req.Headers()
	if deadline, has, err := messages.ParseDeadline(hdr.Get(messages.HeaderDeadline)); err != nil || has && !deadline.After(time.Now()) {
		return false
	}
	if hdr.Get(messages.HeaderNoWait) != "" || !w.events.idle() {
		return false // a get is never long: the normal path refuses no-wait
	}
	inst, ok := m.Cached(name)
	if !ok {
		return false
	}
	id := hdr.Get(messages.HeaderRequestID)
	if !messages.ValidRequestID(id) {
		id = messages.NewRequestID()
	}
	data := messages.ResultReply(id, w.host, messages.InstanceFrom(inst, m.Driver(), w.host))
	ev := w.log.Info()
	if err := w.send(req, id, data, "", ""); err != nil {
		ev = w.log.Warn().Str("error", "sending the reply failed: "+err.Error())
	}
	ev.Str("request_id", id).Str("driver", m.Driver()).Str("op", string(messages.OpGet)).Str("instance", name).
		Dur("duration", time.Since(received)).Msg("request")
	return true
}

// busRequest is one bus request being served.
type busRequest struct {
	w         *Worker
	m         *manager.Manager
	req       micro.Request
	op        messages.Op
	requestID string
	instance  string
	opTok     string
	noWait    bool            // a long op asked to run in the background (ops.go)
	log       *zerolog.Logger // see logger()
}

func (w *Worker) serve(m *manager.Manager, req micro.Request, received time.Time) {
	c := &busRequest{w: w, m: m, req: req}
	c.requestID = req.Headers().Get(messages.HeaderRequestID)
	if !messages.ValidRequestID(c.requestID) {
		c.requestID = messages.NewRequestID()
	}
	subj := req.Subject()
	c.opTok = subj[strings.LastIndexByte(subj, '.')+1:]

	code, err := c.run(c.opTok)
	// The request's line, with the fields of logger() written directly
	// (no per-request logger on the hot path).
	ev := w.log.Info()
	if err != nil {
		ev = w.log.Warn().Str("code", code.String()).Str("error", err.Error())
	}
	ev = ev.Str("request_id", c.requestID).Str("driver", m.Driver()).Str("op", c.opTok)
	if c.instance != "" {
		ev = ev.Str("instance", c.instance)
	}
	ev.Dur("duration", time.Since(received)).Msg("request")
}

// logger returns the worker's logger with this request's id, driver and
// op, built on first use.
func (c *busRequest) logger() *zerolog.Logger {
	if c.log == nil {
		l := c.w.log.With().Str("request_id", c.requestID).Str("driver", c.m.Driver()).Str("op", c.opTok).Logger()
		c.log = &l
	}
	return c.log
}

// run serves the request and returns the error it answered with, if any.
func (c *busRequest) run(opTok string) (drivers.Code, error) {
	w := c.w
	fail := func(err error) (drivers.Code, error) {
		w.respondError(c.req, c.requestID, err)
		return drivers.CodeOf(err), err
	}
	op, err := messages.ParseOp(opTok)
	if err != nil {
		return fail(err)
	}
	c.op = op
	deadline, hasDeadline, err := messages.ParseDeadline(c.req.Headers().Get(messages.HeaderDeadline))
	if err != nil {
		return fail(err)
	}
	if hasDeadline && !deadline.After(time.Now()) { // checked after waiting for a slot
		return fail(drivers.Errorf(drivers.Timeout, "deadline %s passed before the request was handled; nothing was done",
			messages.FormatDeadline(deadline)))
	}
	body, err := messages.Decode(op, c.req.Data())
	if err != nil {
		return fail(err)
	}
	c.instance = messages.InstanceName(body)
	if err := op.Supported(c.m.Driver(), c.m.Capabilities()); err != nil {
		return fail(err)
	}
	if c.req.Headers().Get(messages.HeaderNoWait) != "" {
		if !op.Long() {
			return fail(drivers.Errorf(drivers.InvalidArgument, "header %s: %s does not run long; only %s accept it",
				messages.HeaderNoWait, op, longOpsList))
		}
		c.noWait = true
	}

	ctx, cancel := context.WithCancel(w.opCtx)
	defer cancel()
	if hasDeadline {
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	ctx = withRequestID(ctx, c.requestID)

	if spec, _ := messages.Spec(op); spec.Streams && streamed(body) {
		return c.stream(ctx, body)
	}

	if op == messages.OpExec {
		// The one unary op that can run for long on the caller's behalf.
		defer c.watchCaller(cancel)()
	}
	key := c.req.Headers().Get(messages.HeaderIdempotencyKey)
	if key == "" || !op.Mutating() {
		result, err := c.dispatch(ctx, body)
		if err != nil {
			return fail(err)
		}
		return 0, c.respondResult(result)
	}
	return c.idempotent(ctx, key, body)
}

// idempotent serves a mutating request with an idempotency key: the first
// reply is kept and returned to retries.
func (c *busRequest) idempotent(ctx context.Context, key string, body any) (drivers.Code, error) {
	w := c.w
	k := c.m.Driver() + "\x00" + string(c.op) + "\x00" + key
	for range 3 {
		cached, found, conflict, err := w.idem.begin(ctx, k, c.req.Data())
		if errors.Is(err, errAbandoned) {
			continue
		}
		if err != nil {
			err = drivers.Errorf(drivers.Timeout, "waiting for the first request with this idempotency key: %v", err)
			w.respondError(c.req, c.requestID, err)
			return drivers.Timeout, err
		}
		if conflict {
			err := drivers.Errorf(drivers.InvalidArgument, "header %s: key %q was used for a different request", messages.HeaderIdempotencyKey, key)
			w.respondError(c.req, c.requestID, err)
			return drivers.InvalidArgument, err
		}
		if found {
			c.logger().Debug().Str("idempotency_key", key).Msg("replaying the reply of the first request")
			return replayCode(cached), c.respondCached(cached)
		}
		result, err := c.dispatch(ctx, body)
		if err != nil {
			if drivers.CodeOf(err).Retryable() {
				w.idem.abandon(k)
			} else {
				msg, code := messages.ErrorHeaders(err)
				w.idem.finish(k, cachedReply{data: messages.ErrorReply(c.requestID, w.host, err), errMsg: msg, errCode: code})
			}
			w.respondError(c.req, c.requestID, err)
			return drivers.CodeOf(err), err
		}
		data := messages.ResultReply(c.requestID, w.host, result)
		w.idem.finish(k, cachedReply{data: data})
		return 0, c.respondBytes(data)
	}
	err := drivers.Errorf(drivers.Unavailable, "idempotency key %q: earlier attempts failed; retry", key)
	w.respondError(c.req, c.requestID, err)
	return drivers.Unavailable, err
}

func replayCode(r cachedReply) drivers.Code {
	if r.errCode == "" {
		return 0
	}
	var n int
	_, _ = fmt.Sscan(r.errCode, &n)
	return drivers.Code(n)
}

func (c *busRequest) respondCached(r cachedReply) error {
	return c.w.send(c.req, c.requestID, r.data, r.errMsg, r.errCode)
}

func (c *busRequest) respondResult(result any) error {
	return c.respondBytes(messages.ResultReply(c.requestID, c.w.host, result))
}

func (c *busRequest) respondBytes(data []byte) error {
	if max := c.w.nc.MaxPayload(); max > 0 && int64(len(data)) > max {
		err := drivers.Errorf(drivers.Internal, "result of %d bytes exceeds the NATS max payload of %d (for exec, use stream)", len(data), max)
		c.w.respondError(c.req, c.requestID, err)
		return err
	}
	if err := c.w.send(c.req, c.requestID, data, "", ""); err != nil {
		c.logger().Warn().Err(err).Msg("sending the reply failed")
		return err
	}
	return nil
}

// respondError answers with an error reply and micro's error headers.
func (w *Worker) respondError(req micro.Request, requestID string, err error) {
	msg, code := messages.ErrorHeaders(err)
	if rerr := w.send(req, requestID, messages.ErrorReply(requestID, w.host, err), msg, code); rerr != nil {
		w.log.Warn().Err(rerr).Msg("sending the error reply failed")
	}
}

// send publishes a reply to the request's reply subject, with micro's
// error headers when errCode is set. It publishes on the connection rather
// than through req.Respond/req.Error: those record the outcome in the
// request, which micro reads for its endpoint stats when the handler
// returns, so calling them from the request's goroutine would race.
//
// Every event pushed before the reply is on disk (fsync'd) when the reply
// leaves (a durable outbox; see docs/bus.md).
func (w *Worker) send(req micro.Request, requestID string, data []byte, errMsg, errCode string) error {
	w.events.sync()
	w.replies.Add(1)
	if req.Reply() == "" {
		return errors.New("the request has no reply subject")
	}
	// A reply's body always carries the request id. An error reply also
	// has micro's error headers, and the id beside them; a success reply
	// has no header at all: a header on every reply cost 5-6 % of the
	// throughput of a cached get at 16 clients (docs/benchmarks.md).
	msg := &nats.Msg{Subject: req.Reply(), Data: data}
	if errCode != "" {
		w.errorReplies.Add(1)
		msg.Header = nats.Header{}
		if requestID != "" {
			msg.Header.Set(messages.HeaderRequestID, requestID)
		}
		msg.Header.Set(micro.ErrorHeader, errMsg)
		msg.Header.Set(micro.ErrorCodeHeader, errCode)
	}
	return w.nc.PublishMsg(msg)
}

// streamed reports whether a decoded request of a streaming op asks for a
// streamed reply.
func streamed(body any) bool {
	s, ok := body.(interface{ Streamed() bool })
	return ok && s.Streamed()
}
