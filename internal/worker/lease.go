package worker

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/messages"
)

// leasePoll is how often a request waiting for a lease tries again.
var leasePoll = 100 * time.Millisecond

// errLeaseLost is the cause of an operation's context cancelled because
// its worker could no longer renew the instance's lease.
var errLeaseLost = errors.New("the lease on the instance was lost")

// acquireLease (waiting for the bucket while the worker starts) takes the
// lease on driver's instance name in SUBSTRATE_LEASES before a mutation
// of a cluster-wide instance, so that two workers never change one
// instance at once. It waits while another request holds it (polling)
// until ctx ends: then timeout, naming the holder. The lease is renewed
// every LeaseTTL/3 until release is called; a holder that dies stops
// renewing and its lease expires after LeaseTTL (the bucket's TTL), so
// the instance can be operated again.
//
// The operation runs under opCtx. A holder that is alive but cannot renew
// (cut off from NATS) must not go on acting once another worker may take
// the lease: when no renewal succeeded for 2/3 of LeaseTTL, or the lease
// was taken over, opCtx is cancelled with errLeaseLost, so the driver
// call stops where the substrate can be interrupted.
func (w *Worker) acquireLease(ctx context.Context, driver, name string, op messages.Op, requestID string) (opCtx context.Context, release func(), err error) {
	b := w.fleet.get()
	for b == nil || b.leases == nil { // a worker that just started: wait for the bucket
		select {
		case <-ctx.Done():
			return nil, nil, drivers.Errorf(drivers.Unavailable, "the lease bucket %s is not ready; retry", messages.LeasesBucket)
		case <-time.After(leasePoll):
		}
		b = w.fleet.get()
	}
	key := messages.LeaseKey(driver, name)
	val, _ := json.Marshal(messages.Lease{Host: w.host, Op: op, RequestID: requestID, Since: time.Now().UTC()})
	var rev uint64
	for {
		rev, err = b.leases.Create(ctx, key, val)
		if err == nil {
			break
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			if ctx.Err() != nil {
				return nil, nil, drivers.Wrap(drivers.Timeout, ctx.Err(), "waiting for the lease on "+name)
			}
			return nil, nil, drivers.Wrap(drivers.Unavailable, err, "taking the lease on "+name)
		}
		select {
		case <-ctx.Done():
			holder := "another worker"
			if e, gerr := b.leases.Get(context.Background(), key); gerr == nil {
				var l messages.Lease
				if json.Unmarshal(e.Value(), &l) == nil {
					holder = "host " + l.Host + " (" + string(l.Op) + ", request " + l.RequestID + ")"
				}
			}
			return nil, nil, drivers.Errorf(drivers.Timeout, "instance %q is being changed by %s; its lease was not released in time", name, holder)
		case <-time.After(leasePoll):
		}
	}
	opCtx, lose := context.WithCancelCause(ctx)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(w.opts.LeaseTTL / 3)
		defer t.Stop()
		renewed := time.Now()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				rctx, cancel := context.WithTimeout(context.Background(), w.opts.LeaseTTL/3)
				r, err := b.leases.Update(rctx, key, val, rev)
				cancel()
				if err == nil {
					rev, renewed = r, time.Now()
					continue
				}
				if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || time.Since(renewed) >= w.opts.LeaseTTL*2/3 {
					w.log.Error().Str("driver", driver).Str("instance", name).Err(err).
						Msg("lease lost: stopping the operation, another worker may take the instance")
					lose(errLeaseLost)
					return
				}
				w.log.Warn().Str("driver", driver).Str("instance", name).Err(err).Msg("lease not renewed")
			}
		}
	}()
	return opCtx, func() {
		close(stop)
		<-done
		lose(nil)
		dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := b.leases.Delete(dctx, key, jetstream.LastRevision(rev)); err != nil {
			w.log.Warn().Str("driver", driver).Str("instance", name).Err(err).Msg("lease not released; it expires by itself")
		}
	}, nil
}
