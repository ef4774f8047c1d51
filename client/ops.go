package client

import (
	"context"
	"encoding/json"
	"errors"
	"sort"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/messages"
)

// Long operations (docs/fleet.md "Long operations"): Begin starts a long
// op (create, clone, stop, restart, delete, snapshots) that returns at
// once with a messages.Operation the worker runs in the background; Op,
// Ops, Wait and Cancel follow it by its id from anywhere, also after the
// caller that began it went away. Records are read from the KV bucket
// SUBSTRATE_OPS; a record that says running while its host's worker is
// not up (heartbeat stale or stopped) comes back with Lost set.

// Begin sends op (one of messages.LongOps) with the no-wait header and
// returns the accepted operation: the request was checked (shape, driver
// capability, the worker's operations limit) and the op now runs on the
// worker named by the operation's Host. Owner resolution and placement
// apply as for Do. What the op itself finds wrong (a bad name, a missing
// instance) ends the operation failed, with its code.
func (c *Client) Begin(ctx context.Context, driver, host string, op messages.Op, req any) (messages.Operation, error) {
	var o messages.Operation
	if !op.Long() {
		return o, drivers.Errorf(drivers.InvalidArgument, "%s does not run long: only %v can be begun without waiting", op, messages.LongOps())
	}
	err := c.Do(context.WithValue(ctx, keyNoWait, true), driver, host, op, req, &o)
	return o, err
}

// errNoOps: no worker created SUBSTRATE_OPS yet.
func noOpsBucket() error {
	return drivers.Errorf(drivers.NotFound, "no operations recorded: the KV bucket %s does not exist (no worker of this version has run on this NATS server)", messages.OpsBucket)
}

func (c *Client) opsBucket(ctx context.Context) (jetstream.KeyValue, error) {
	kv, err := c.bucket(ctx, messages.OpsBucket)
	if errors.Is(err, errNoInventory) {
		return nil, noOpsBucket()
	}
	return kv, err
}

// Op returns the operation id (not_found when no record has it: never
// begun, or expired worker.operations_ttl after it ended).
func (c *Client) Op(ctx context.Context, id string) (messages.Operation, error) {
	kv, key, err := c.opKey(ctx, id)
	if err != nil {
		return messages.Operation{}, err
	}
	o, _, err := c.readOp(ctx, kv, key)
	if err != nil {
		return o, err
	}
	return c.markLost(ctx, []messages.Operation{o})[0], nil
}

// opKey finds the key of operation id (its driver and host are not in the id).
func (c *Client) opKey(ctx context.Context, id string) (jetstream.KeyValue, string, error) {
	if !messages.ValidOpID(id) {
		return nil, "", drivers.Errorf(drivers.InvalidArgument, "operation id: %q is not an operation id", id)
	}
	kv, err := c.opsBucket(ctx)
	if err != nil {
		return nil, "", err
	}
	lister, err := kv.ListKeysFiltered(ctx, "*.*."+id)
	if err != nil {
		if errors.Is(err, jetstream.ErrNoKeysFound) {
			return nil, "", drivers.Errorf(drivers.NotFound, "no operation %q", id)
		}
		return nil, "", drivers.Wrap(drivers.Unavailable, err, "reading "+messages.OpsBucket)
	}
	defer func() { _ = lister.Stop() }()
	for k := range lister.Keys() {
		return kv, k, nil
	}
	return nil, "", drivers.Errorf(drivers.NotFound, "no operation %q (never begun, or expired)", id)
}

func (c *Client) readOp(ctx context.Context, kv jetstream.KeyValue, key string) (messages.Operation, uint64, error) {
	var o messages.Operation
	e, err := kv.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return o, 0, drivers.Errorf(drivers.NotFound, "no operation %s", key)
	case err != nil:
		return o, 0, drivers.Wrap(drivers.Unavailable, err, "reading "+messages.OpsBucket)
	}
	if err := json.Unmarshal(e.Value(), &o); err != nil {
		return o, 0, drivers.Errorf(drivers.Internal, "operation %s: malformed record: %v", key, err)
	}
	return o, e.Revision(), nil
}

// markLost sets Lost on running operations whose host's worker is not up.
func (c *Client) markLost(ctx context.Context, ops []messages.Operation) []messages.Operation {
	var hbs map[string]messages.WorkerHeartbeat
	now := time.Now()
	for i, o := range ops {
		if o.State != messages.OpRunning {
			continue
		}
		if hbs == nil {
			hbs, _ = c.Heartbeats(ctx)
			if hbs == nil {
				return ops
			}
		}
		if hb, ok := hbs[o.Host]; ok && hb.Liveness(now) != messages.LivenessUp {
			ops[i].Lost = true
		}
	}
	return ops
}

// OpFilter selects operations; empty fields match everything.
type OpFilter struct {
	Driver, Host string
	State        messages.OpState
	Instance     string
}

// Ops lists the recorded operations matching f, oldest first.
func (c *Client) Ops(ctx context.Context, f OpFilter) ([]messages.Operation, error) {
	kv, err := c.opsBucket(ctx)
	if err != nil {
		return nil, err
	}
	if f.Driver != "" && drivers.ValidDriverName(f.Driver) != nil || f.Host != "" && !messages.ValidToken(f.Host) {
		return nil, drivers.Errorf(drivers.InvalidArgument, "invalid driver or host filter")
	}
	filter := or(f.Driver, "*") + "." + or(f.Host, "*") + ".*"
	w, err := kv.Watch(ctx, filter, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, drivers.Wrap(drivers.Unavailable, err, "reading "+messages.OpsBucket)
	}
	defer func() { _ = w.Stop() }()
	out := []messages.Operation{}
	for done := false; !done; {
		select {
		case <-ctx.Done():
			return nil, drivers.Wrap(drivers.Timeout, ctx.Err(), "reading "+messages.OpsBucket)
		case e, ok := <-w.Updates():
			if !ok || e == nil {
				done = true
				break
			}
			var o messages.Operation
			if json.Unmarshal(e.Value(), &o) != nil {
				continue
			}
			if f.Instance != "" && o.Instance != f.Instance {
				continue
			}
			out = append(out, o)
		}
	}
	out = c.markLost(ctx, out)
	if f.State != "" {
		kept := out[:0]
		for _, o := range out {
			if o.State == f.State {
				kept = append(kept, o)
			}
		}
		out = kept
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Started.Before(out[j].Started) })
	return out, nil
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// LostCheck is how often Wait re-reads the owner's heartbeat to notice a
// worker that died with the operation running.
var LostCheck = 2 * time.Second

// Wait follows operation id until it ends (or ctx does) and returns its
// final record. progress, when not nil, is called with the record as it
// is when Wait starts and after every change (each Seq once, in order). A
// worker that dies with the operation running (its heartbeat goes stale)
// ends the wait with the record marked Lost and an unavailable error.
func (c *Client) Wait(ctx context.Context, id string, progress func(messages.Operation)) (messages.Operation, error) {
	kv, key, err := c.opKey(ctx, id)
	if err != nil {
		return messages.Operation{}, err
	}
	w, err := kv.Watch(ctx, key)
	if err != nil {
		return messages.Operation{}, drivers.Wrap(drivers.Unavailable, err, "watching "+key)
	}
	defer func() { _ = w.Stop() }()
	t := time.NewTicker(LostCheck)
	defer t.Stop()
	var last messages.Operation
	seq := 0
	for {
		select {
		case <-ctx.Done():
			return last, ctx.Err()
		case <-t.C:
			if last.State == messages.OpRunning {
				if l := c.markLost(ctx, []messages.Operation{last})[0]; l.Lost {
					if progress != nil {
						progress(l)
					}
					return l, drivers.Errorf(drivers.Unavailable,
						"operation %s is lost: the worker of host %s is not up (it ran the operation); the instance is as the substrate left it", id, l.Host)
				}
			}
		case e, ok := <-w.Updates():
			if !ok {
				return last, drivers.Errorf(drivers.Unavailable, "watching operation %s: the watch ended", id)
			}
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			var o messages.Operation
			if json.Unmarshal(e.Value(), &o) != nil || o.Seq <= seq {
				continue
			}
			seq, last = o.Seq, o
			if progress != nil {
				progress(o)
			}
			if o.State.Final() {
				return o, OpError(o)
			}
		}
	}
}

// OpError is the error of an ended operation: nil when it succeeded.
func OpError(o messages.Operation) error {
	switch {
	case o.State == messages.OpSucceeded:
		return nil
	case o.Error != nil:
		return InfoError(o.Error)
	case o.State.Final():
		return drivers.Errorf(drivers.Internal, "operation %s %s", o.ID, o.State)
	}
	return nil
}

// Cancel asks the worker running operation id to cancel it and returns the
// record as the worker answered: CancelRequested set while the substrate
// gives up (Wait then ends with state cancelled), or the final record of
// an operation that had already ended (cancelling it changes nothing).
func (c *Client) Cancel(ctx context.Context, id string) (messages.Operation, error) {
	kv, key, err := c.opKey(ctx, id)
	if err != nil {
		return messages.Operation{}, err
	}
	o, _, err := c.readOp(ctx, kv, key)
	if err != nil {
		return o, err
	}
	if o.State.Final() {
		return o, nil
	}
	var res messages.Operation
	if err := c.Do(ctx, o.Driver, o.Host, messages.OpCancel, messages.CancelRequest{ID: id}, &res); err != nil {
		return o, err
	}
	return res, nil
}
