package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/internal/manager"
	"github.com/subbus/subbus/messages"
)

// The fleet side of the worker (docs/fleet.md): it keeps this host's
// records in SUBSTRATE_INVENTORY current and writes its heartbeat to
// SUBSTRATE_WORKERS.
//
// A record changes (1) synchronously after a mutating request succeeded on
// it, before the reply goes out, so a client that got the reply finds the
// instance where it is; (2) after an event about it (the substrate's own
// feed included: an instance created or removed behind subbus's back); (3)
// at every full resync (InventoryResync), which also removes the records
// of instances that are gone and refreshes confirmed_at. Writing is best
// effort: a KV failure is logged and repaired by the next resync, never
// turned into a request error.

// fleetKV holds the buckets once they exist.
type fleetKV struct {
	inv, workers jetstream.KeyValue
	leases       jetstream.KeyValue // nil when no served driver is cluster-wide
}

// fleetState is the worker's inventory and liveness bookkeeping.
type fleetState struct {
	kv      sync.Mutex
	buckets *fleetKV
	// ops is SUBSTRATE_OPS (ops.go), set with the buckets or before them
	// by the first long operation (opsReady).
	ops     jetstream.KeyValue
	started time.Time
	// dirty receives names of instances an event was about, per driver.
	dirty map[string]chan string
	mu    sync.Mutex
	count map[string]int // instances per driver at the last resync
}

func newFleetState(drvs []string) *fleetState {
	f := &fleetState{started: time.Now().UTC(), dirty: map[string]chan string{}, count: map[string]int{}}
	for _, d := range drvs {
		f.dirty[d] = make(chan string, 1024)
	}
	return f
}

// opsBucket returns SUBSTRATE_OPS once known (nil before).
func (f *fleetState) opsBucket() jetstream.KeyValue {
	f.kv.Lock()
	defer f.kv.Unlock()
	return f.ops
}

func (f *fleetState) get() *fleetKV {
	f.kv.Lock()
	defer f.kv.Unlock()
	return f.buckets
}

// bucketConfigs are the fleet's KV buckets: one value per key (history 1),
// replicated like the streams. Heartbeats of a host that is gone for a day
// expire (TTL); inventory records never expire, they are removed by their
// owner; operation records expire OperationsTTL after their last change.
func (w *Worker) bucketConfigs() []jetstream.KeyValueConfig {
	return BucketConfigs(w.opts, w.clusterWide())
}

// BucketConfigs are the fleet's KV buckets for o; clusterWide adds
// SUBSTRATE_LEASES (needed when a served driver is cluster-wide).
func BucketConfigs(o Options, clusterWide bool) []jetstream.KeyValueConfig {
	o = o.withDefaults()
	// SUBSTRATE_OPS first: the worker's inventory and heartbeat start
	// right after the last bucket is there.
	cfgs := []jetstream.KeyValueConfig{opsBucketConfig(o), {
		Bucket:      messages.InventoryBucket,
		Description: "subbus fleet inventory: <driver>.<host>.<instance> -> record, written by the owning worker",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    o.Replicas,
	}, {
		Bucket:      messages.WorkersBucket,
		Description: "subbus worker heartbeats: <host> -> heartbeat",
		History:     1,
		TTL:         24 * time.Hour,
		Storage:     jetstream.FileStorage,
		Replicas:    o.Replicas,
	}}
	if clusterWide {
		cfgs = append(cfgs, jetstream.KeyValueConfig{
			Bucket:      messages.LeasesBucket,
			Description: "subbus leases on instances of cluster-wide drivers: <driver>.<instance> -> holder",
			History:     1,
			TTL:         o.LeaseTTL,
			Storage:     jetstream.FileStorage,
			Replicas:    o.Replicas,
		})
	}
	return cfgs
}

// opsBucketConfig is SUBSTRATE_OPS: records expire OperationsTTL after
// their last change.
func opsBucketConfig(o Options) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      messages.OpsBucket,
		Description: "subbus long operations: <driver>.<host>.<op-id> -> operation, written by the worker running it",
		History:     1,
		TTL:         o.OperationsTTL,
		Storage:     jetstream.FileStorage,
		Replicas:    o.Replicas,
	}
}

// clusterWide reports whether a served driver is cluster-wide.
func (w *Worker) clusterWide() bool {
	for _, m := range w.managers {
		if m.ClusterWide() {
			return true
		}
	}
	return false
}

// EnsureBuckets creates the fleet's KV buckets that are missing, leases
// included (worker --create-streams, for an administrator when workers run
// with worker.manage_streams: false).
func EnsureBuckets(ctx context.Context, js jetstream.JetStream, o Options, log zerolog.Logger) error {
	for _, cfg := range BucketConfigs(o, true) {
		_, err := js.KeyValue(ctx, cfg.Bucket)
		switch {
		case errors.Is(err, jetstream.ErrBucketNotFound):
			if _, err := js.CreateKeyValue(ctx, cfg); err != nil && !errors.Is(err, jetstream.ErrBucketExists) {
				return fmt.Errorf("creating KV bucket %s: %w", cfg.Bucket, err)
			}
			log.Info().Str("bucket", cfg.Bucket).Msg("KV bucket created")
		case err != nil:
			return fmt.Errorf("KV bucket %s: %w", cfg.Bucket, err)
		}
	}
	return nil
}

// ensureBuckets creates the fleet's buckets when absent (ManageStreams) or
// checks that they exist, then makes them available to the worker.
func (w *Worker) ensureBuckets(ctx context.Context) error {
	kvs := map[string]jetstream.KeyValue{}
	for _, cfg := range w.bucketConfigs() {
		kv, err := w.js.KeyValue(ctx, cfg.Bucket)
		switch {
		case errors.Is(err, jetstream.ErrBucketNotFound):
			if !w.opts.ManageStreams && cfg.Bucket == messages.OpsBucket {
				// A fleet set up before long operations existed keeps its
				// inventory and heartbeats; no-wait requests are refused
				// until an administrator creates the bucket.
				w.log.Warn().Str("bucket", cfg.Bucket).Msg("KV bucket missing and worker.manage_streams is false: long operations (no-wait) are refused until an administrator creates it (worker --create-streams)")
				continue
			}
			if !w.opts.ManageStreams {
				return fmt.Errorf("KV bucket %s does not exist and worker.manage_streams is false: create it (docs/fleet.md)", cfg.Bucket)
			}
			kv, err = w.js.CreateKeyValue(ctx, cfg)
			if errors.Is(err, jetstream.ErrBucketExists) {
				kv, err = w.js.KeyValue(ctx, cfg.Bucket)
			}
			if err != nil {
				return fmt.Errorf("creating KV bucket %s: %w", cfg.Bucket, err)
			}
			w.log.Info().Str("bucket", cfg.Bucket).Int("replicas", cfg.Replicas).Msg("KV bucket created")
		case err != nil:
			return fmt.Errorf("KV bucket %s: %w", cfg.Bucket, err)
		}
		kvs[cfg.Bucket] = kv
	}
	w.fleet.kv.Lock()
	w.fleet.buckets = &fleetKV{inv: kvs[messages.InventoryBucket], workers: kvs[messages.WorkersBucket],
		leases: kvs[messages.LeasesBucket]}
	w.fleet.ops = kvs[messages.OpsBucket]
	w.fleet.kv.Unlock()
	return nil
}

// runFleet creates or waits for the buckets (retrying with backoff: with
// manage_streams false an operator creates them), then keeps the
// inventory and the heartbeat until ctx ends. Events and requests do not
// wait for it.
func (w *Worker) runFleet(ctx context.Context) {
	delay := 250 * time.Millisecond
	for {
		bctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := w.ensureBuckets(bctx)
		cancel()
		if err == nil {
			break
		}
		w.log.Warn().Err(err).Msg("fleet buckets not ready: no inventory or heartbeat yet")
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(delay*2, 30*time.Second)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		w.markLost(lctx)
	}()
	for _, m := range w.managers {
		if m.ClusterWide() {
			continue // several workers see its instances: no owner
		}
		wg.Add(1)
		go func() { defer wg.Done(); w.inventoryLoop(ctx, m) }()
	}
	w.heartbeatLoop(ctx)
	wg.Wait()
}

// noteEvent marks the instance of an event for a record refresh. It never
// blocks: when the queue is full the next resync catches up.
func (w *Worker) noteEvent(e messages.Event) {
	if e.Instance == "" {
		return
	}
	if ch, ok := w.fleet.dirty[e.Driver]; ok {
		select {
		case ch <- e.Instance:
		default:
		}
	}
}

// inventoryLoop keeps m's records current: a full resync at start and
// every InventoryResync, single records after events in between.
func (w *Worker) inventoryLoop(ctx context.Context, m *manager.Manager) {
	t := time.NewTicker(w.opts.InventoryResync)
	defer t.Stop()
	w.resync(ctx, m)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			w.resync(ctx, m)
		case name := <-w.fleet.dirty[m.Driver()]:
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			w.refreshRecord(rctx, m, name)
			cancel()
		}
	}
}

// resync writes a record for every instance m lists and deletes this
// host's records of m's driver that name no listed instance. When the
// list fails, nothing is deleted.
func (w *Worker) resync(ctx context.Context, m *manager.Manager) {
	b := w.fleet.get()
	if b == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, max(w.opts.InventoryResync, 30*time.Second))
	defer cancel()
	list, err := m.List(ctx)
	if err != nil {
		w.log.Debug().Str("driver", m.Driver()).Err(err).Msg("inventory resync: list failed; records kept")
		return
	}
	now := time.Now()
	live := make(map[string]bool, len(list))
	for _, inst := range list {
		key := messages.InventoryKey(m.Driver(), w.host, inst.Name)
		live[key] = true
		w.putRecord(ctx, b, m.Driver(), inst, now)
	}
	w.fleet.mu.Lock()
	w.fleet.count[m.Driver()] = len(list)
	w.fleet.mu.Unlock()
	lister, err := b.inv.ListKeysFiltered(ctx, m.Driver()+"."+w.host+".*")
	if err != nil {
		w.log.Debug().Str("driver", m.Driver()).Err(err).Msg("inventory resync: listing keys failed")
		return
	}
	var gone []string
	for k := range lister.Keys() {
		if !live[k] {
			gone = append(gone, k)
		}
	}
	_ = lister.Stop()
	for _, k := range gone {
		if err := b.inv.Delete(ctx, k); err != nil {
			w.log.Debug().Str("key", k).Err(err).Msg("inventory: deleting a record failed")
		}
	}
}

// refreshRecord asks m for name and writes or deletes its record.
func (w *Worker) refreshRecord(ctx context.Context, m *manager.Manager, name string) {
	b := w.fleet.get()
	if b == nil {
		return
	}
	inst, err := m.Get(ctx, name)
	switch {
	case err == nil:
		w.putRecord(ctx, b, m.Driver(), inst, time.Now())
	case drivers.CodeOf(err) == drivers.NotFound:
		w.deleteRecord(ctx, b, m.Driver(), name)
	default:
		w.log.Debug().Str("driver", m.Driver()).Str("instance", name).Err(err).Msg("inventory: get failed; record kept")
	}
}

func (w *Worker) putRecord(ctx context.Context, b *fleetKV, driver string, inst drivers.Instance, now time.Time) {
	rec := messages.NewInventoryRecord(driver, w.host, inst, now)
	data, err := json.Marshal(rec)
	if err != nil {
		return
	}
	if _, err := b.inv.Put(ctx, messages.InventoryKey(driver, w.host, inst.Name), data); err != nil {
		w.log.Debug().Str("driver", driver).Str("instance", inst.Name).Err(err).Msg("inventory: put failed")
	}
}

func (w *Worker) deleteRecord(ctx context.Context, b *fleetKV, driver, name string) {
	if err := b.inv.Delete(ctx, messages.InventoryKey(driver, w.host, name)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		w.log.Debug().Str("driver", driver).Str("instance", name).Err(err).Msg("inventory: delete failed")
	}
}

// recordAfter updates the inventory after a mutating request on instance
// succeeded with result, before the reply is sent. It waits at most 2s.
func (w *Worker) recordAfter(ctx context.Context, m *manager.Manager, op messages.Op, instance string, result any) {
	b := w.fleet.get()
	if b == nil || op == messages.OpExec || m.ClusterWide() {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	var inst *drivers.Instance
	switch r := result.(type) {
	case drivers.Instance:
		inst = &r
	case *drivers.Instance:
		inst = r
	}
	switch {
	case op == messages.OpDelete:
		w.deleteRecord(ctx, b, m.Driver(), instance)
	case inst != nil && inst.Name != "":
		w.putRecord(ctx, b, m.Driver(), *inst, time.Now())
		if op == messages.OpClone && instance != "" && instance != inst.Name {
			w.refreshRecord(ctx, m, instance)
		}
	case instance != "":
		w.refreshRecord(ctx, m, instance)
	}
}

// heartbeatLoop writes this host's heartbeat every LivenessInterval.
func (w *Worker) heartbeatLoop(ctx context.Context) {
	t := time.NewTicker(w.opts.LivenessInterval)
	defer t.Stop()
	for {
		hctx, cancel := context.WithTimeout(ctx, w.opts.LivenessInterval)
		w.heartbeat(hctx, false)
		cancel()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// heartbeat writes this host's heartbeat; stopped marks a clean shutdown.
func (w *Worker) heartbeat(ctx context.Context, stopped bool) {
	b := w.fleet.get()
	if b == nil {
		return
	}
	w.fleet.mu.Lock()
	counts := make(map[string]int, len(w.fleet.count))
	for d, n := range w.fleet.count {
		counts[d] = n
	}
	w.fleet.mu.Unlock()
	hb := messages.WorkerHeartbeat{Host: w.host, Version: w.opts.Version, Drivers: w.driverNames(), Instances: counts,
		Started: w.fleet.started, Time: time.Now().UTC(), Interval: w.opts.LivenessInterval, Stopped: stopped}
	data, err := json.Marshal(hb)
	if err != nil {
		return
	}
	if _, err := b.workers.Put(ctx, w.host, data); err != nil {
		w.log.Debug().Err(err).Msg("heartbeat not written")
	}
}
