package worker

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/messages"
)

// Long operations (docs/fleet.md "Long operations"). A request of a long
// op (messages.OpSpec.Long) with the no-wait header is answered at once
// with its messages.Operation; the op then runs here in the background:
//
//   - at most MaxOperations at once (more: unavailable), counted in
//     inflight, so a shutdown waits for them for the grace period and then
//     cancels them like requests;
//   - under the worker's opCtx, never the request's: the caller may go
//     away; the manager's own time bounds (operation_timeout) apply;
//   - every change (start, end, cancel requested) is written to the
//     SUBSTRATE_OPS record and published on substrate.ops.<driver>.<host>.<id>;
//   - op-cancel cancels its context, which reaches the substrate through
//     the driver (process and supervisor waits, docker and libvirt calls,
//     LXD operations, PVE tasks).
//
// A worker that dies mid-operation leaves its records running: when it
// starts again it marks them failed (markLost); until then readers call
// them lost when the host's heartbeat is not up.

// opTracker holds the running operations of this worker.
type opTracker struct {
	max     int
	mu      sync.Mutex
	running map[string]*runningOp // by op id
}

// runningOp is one operation in the background.
type runningOp struct {
	mu     sync.Mutex
	rec    messages.Operation
	cancel context.CancelFunc
	// wmu orders the writes of the record: each writes the latest
	// version, and a version is never written after a newer one.
	wmu     sync.Mutex
	written int // the Seq last written
}

// write publishes and stores the operation's latest version, unless a
// newer or the same one was written already.
func (w *Worker) writeOp(o *runningOp) {
	o.wmu.Lock()
	defer o.wmu.Unlock()
	rec := o.snapshot()
	if rec.Seq <= o.written {
		return
	}
	w.publishOp(rec)
	o.written = rec.Seq
}

func newOpTracker(max int) *opTracker {
	return &opTracker{max: max, running: map[string]*runningOp{}}
}

func (t *opTracker) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.running)
}

// snapshot returns a copy of the record.
func (o *runningOp) snapshot() messages.Operation {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.rec
}

// startOp accepts r's request as a background operation and returns its
// record (the no-wait reply). body is the decoded request.
func (r *busRequest) startOp(body any) (any, error) {
	w := r.w
	t := w.ops
	now := time.Now().UTC()
	rec := messages.Operation{
		ID: messages.NewRequestID(), Driver: r.m.Driver(), Host: w.host, Op: r.op, Instance: r.instance,
		RequestID: r.requestID, State: messages.OpRunning, Seq: 1, Started: now, Updated: now,
		Progress: messages.ProgressStart(r.op, body, r.m.Options().StopTimeout),
	}
	if err := w.opsReady(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(w.opCtx)
	o := &runningOp{rec: rec, cancel: cancel}
	t.mu.Lock()
	if len(t.running) >= t.max {
		n := len(t.running)
		t.mu.Unlock()
		cancel()
		return nil, drivers.Errorf(drivers.Unavailable, "worker %s: %d of %d long operations running (worker.max_operations): retry later or wait",
			w.host, n, t.max)
	}
	if !w.inflight.add() {
		t.mu.Unlock()
		cancel()
		return nil, drivers.Errorf(drivers.Unavailable, "worker %s is shutting down", w.host)
	}
	t.running[rec.ID] = o
	t.mu.Unlock()

	// Written before the reply, so that the op can be looked up as soon
	// as its id is known (bounded; a KV failure is logged, the op runs).
	w.writeOp(o)
	l := r.logger().With().Str("operation", rec.ID).Logger()
	bg := &busRequest{w: w, m: r.m, op: r.op, opTok: r.opTok, requestID: r.requestID, instance: r.instance, log: &l}
	go bg.runOp(withRequestID(ctx, r.requestID), o, body)
	return rec, nil
}

// runOp runs the operation and records how it ended.
func (r *busRequest) runOp(ctx context.Context, o *runningOp, body any) {
	w := r.w
	defer func() {
		w.ops.mu.Lock()
		delete(w.ops.running, o.rec.ID)
		w.ops.mu.Unlock()
		o.cancel()
		w.inflight.done()
	}()
	start := time.Now()
	res, err := func() (res any, err error) {
		defer func() {
			if p := recover(); p != nil {
				r.log.Error().Interface("panic", p).Msg("operation panicked")
				err = drivers.Errorf(drivers.Internal, "worker panic: %v", p)
			}
		}()
		return r.serveOp(ctx, body)
	}()
	took := time.Since(start)
	o.mu.Lock()
	rec := &o.rec
	switch {
	case err == nil:
		rec.State = messages.OpSucceeded
		if b, merr := json.Marshal(res); merr == nil {
			rec.Result = b
		}
	case rec.CancelRequested && (ctx.Err() != nil || errors.Is(err, context.Canceled)):
		rec.State = messages.OpCancelled
		err = drivers.Errorf(drivers.Timeout, "cancelled by op-cancel after %s: %v", took.Round(time.Millisecond), err)
		rec.Error = messages.InfoOf(err)
	case w.opCtx.Err() != nil:
		// Shutdown: the grace period ended before the operation did.
		rec.State = messages.OpFailed
		err = drivers.Errorf(drivers.Unavailable, "the worker of host %s shut down before the operation ended (grace period %s over): %v",
			w.host, w.opts.GracePeriod, err)
		rec.Error = messages.InfoOf(err)
	default:
		rec.State = messages.OpFailed
		rec.Error = messages.InfoOf(err)
	}
	rec.Progress = messages.ProgressEnd(r.op, body, r.m.Options().StopTimeout, took, rec.State, err)
	rec.Seq++
	rec.Updated = time.Now().UTC()
	rec.Ended = rec.Updated
	state := rec.State
	o.mu.Unlock()
	w.writeOp(o)
	ev := r.log.Info()
	if err != nil {
		ev = r.log.Warn().Str("error", err.Error())
	}
	ev.Str("state", string(state)).Dur("duration", took).Msg("operation ended")
}

// cancelOp asks the running operation id of driver to stop. An operation
// that already ended is returned as it is; an unknown one is not_found.
func (w *Worker) cancelOp(ctx context.Context, driver, id, requestID string) (messages.Operation, error) {
	if !messages.ValidOpID(id) {
		return messages.Operation{}, drivers.Errorf(drivers.InvalidArgument, "id: %q is not an operation id", id)
	}
	w.ops.mu.Lock()
	o := w.ops.running[id]
	w.ops.mu.Unlock()
	if o != nil && o.rec.Driver == driver {
		o.mu.Lock()
		first := !o.rec.CancelRequested
		if first && !o.rec.State.Final() {
			o.rec.CancelRequested = true
			o.rec.Seq++
			o.rec.Updated = time.Now().UTC()
			o.rec.Progress = "cancel requested (request " + requestID + ")"
		}
		rec := o.rec
		o.mu.Unlock()
		if first && !rec.State.Final() {
			o.cancel()
			w.writeOp(o)
		}
		return rec, nil
	}
	if rec, err := w.readOp(ctx, messages.OpKey(driver, w.host, id)); err == nil {
		return rec, nil
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return messages.Operation{}, drivers.Wrap(drivers.Unavailable, err, "reading "+messages.OpsBucket)
	}
	return messages.Operation{}, drivers.Errorf(drivers.NotFound, "no %s operation %q on host %s", driver, id, w.host)
}

// opsReady makes sure SUBSTRATE_OPS can be written before an operation
// is accepted: an operation no one could follow is refused (unavailable).
// Right after start the fleet's buckets may not be set up yet: it looks
// the bucket up (creating it with worker.manage_streams), bounded to 5 s.
func (w *Worker) opsReady() error {
	if w.fleet.opsBucket() != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(w.opCtx, 5*time.Second)
	defer cancel()
	kv, err := w.js.KeyValue(ctx, messages.OpsBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) && w.opts.ManageStreams {
		kv, err = w.js.CreateKeyValue(ctx, opsBucketConfig(w.opts))
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = w.js.KeyValue(ctx, messages.OpsBucket)
		}
	}
	if err != nil {
		return drivers.Wrap(drivers.Unavailable, err, "the operations bucket "+messages.OpsBucket+" is not ready; nothing was done")
	}
	w.fleet.kv.Lock()
	if w.fleet.ops == nil {
		w.fleet.ops = kv
	}
	w.fleet.kv.Unlock()
	return nil
}

// readOp reads an operation record of the bucket.
func (w *Worker) readOp(ctx context.Context, key string) (messages.Operation, error) {
	kv := w.fleet.opsBucket()
	if kv == nil {
		return messages.Operation{}, jetstream.ErrKeyNotFound
	}
	e, err := kv.Get(ctx, key)
	if err != nil {
		return messages.Operation{}, err
	}
	var rec messages.Operation
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return messages.Operation{}, err
	}
	return rec, nil
}

// publishOp publishes rec on its subject and writes it to SUBSTRATE_OPS
// (when the bucket is ready; bounded to 2 s). Failures are logged: the
// operation goes on.
func (w *Worker) publishOp(rec messages.Operation) {
	data, err := json.Marshal(rec)
	if err != nil {
		return
	}
	if err := w.nc.Publish(messages.OpSubject(rec.Driver, rec.Host, rec.ID), data); err != nil {
		w.log.Debug().Err(err).Str("operation", rec.ID).Msg("publishing an operation change failed")
	}
	kv := w.fleet.opsBucket()
	if kv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := kv.Put(ctx, rec.Key(), data); err != nil {
		w.log.Warn().Err(err).Str("operation", rec.ID).Msg("writing the operation record failed")
	}
}

// markLost marks this host's operation records that still say running as
// failed: they were running when this host's worker stopped without
// finishing them (killed, crashed, or its grace period and the final
// cancellation were not enough). It runs once, when the buckets exist;
// operations this process runs are skipped, and a record is changed only
// if it did not change since it was read.
func (w *Worker) markLost(ctx context.Context) {
	kv := w.fleet.opsBucket()
	if kv == nil {
		return
	}
	lister, err := kv.ListKeysFiltered(ctx, "*."+w.host+".*")
	if err != nil {
		w.log.Debug().Err(err).Msg("operations: listing this host's records failed")
		return
	}
	var keys []string
	for k := range lister.Keys() {
		keys = append(keys, k)
	}
	_ = lister.Stop()
	for _, k := range keys {
		e, err := kv.Get(ctx, k)
		if err != nil {
			continue
		}
		var rec messages.Operation
		if json.Unmarshal(e.Value(), &rec) != nil || rec.State != messages.OpRunning {
			continue
		}
		w.ops.mu.Lock()
		_, mine := w.ops.running[rec.ID]
		w.ops.mu.Unlock()
		if mine {
			continue
		}
		now := time.Now().UTC()
		rec.State = messages.OpFailed
		rec.Error = messages.InfoOf(drivers.Errorf(drivers.Unavailable,
			"lost: the worker of host %s stopped while the operation ran (restarted %s); the instance is as the substrate left it",
			w.host, now.Format(time.RFC3339)))
		rec.Progress = "lost: the worker stopped while it ran"
		rec.Seq++
		rec.Updated, rec.Ended = now, now
		data, _ := json.Marshal(rec)
		// Only if unchanged since read: never overwrite a newer record.
		if _, err := kv.Update(ctx, k, data, e.Revision()); err != nil {
			w.log.Debug().Err(err).Str("operation", rec.ID).Msg("operations: marking a lost operation failed")
			continue
		}
		_ = w.nc.Publish(messages.OpSubject(rec.Driver, rec.Host, rec.ID), data)
		w.log.Warn().Str("operation", rec.ID).Str("op", string(rec.Op)).Str("instance", rec.Instance).
			Msg("operation lost by an earlier run of this worker marked failed")
	}
}
