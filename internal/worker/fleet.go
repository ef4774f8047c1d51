package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
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
	// writes serializes record writes; touched holds when a request last
	// wrote each key, so that a resync whose list predates that write
	// neither resurrects a deleted record nor deletes a created one.
	writes  sync.Mutex
	touched map[string]time.Time
}

func newFleetState(drvs []string) *fleetState {
	f := &fleetState{started: time.Now().UTC(), dirty: map[string]chan string{}, count: map[string]int{}, touched: map[string]time.Time{}}
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

// BucketConfigs are the fleet's KV buckets for o (Replicas 0 is 1 here;
// EnsureBuckets resolves it with AutoReplicas first): one value per key
// (history 1), replicated like the streams. Heartbeats of a host that is
// gone for a day expire (TTL); inventory records never expire, they are
// removed by their owner; operation records (SUBSTRATE_OPS, first: the
// worker's inventory and heartbeat start right after the last bucket is
// there) expire OperationsTTL after their last change. With leases,
// SUBSTRATE_LEASES too (TTL LeaseTTL), which only workers serving a
// cluster-wide driver use.
func BucketConfigs(o Options, leases bool) []jetstream.KeyValueConfig {
	o = o.withDefaults()
	o.Replicas = max(o.Replicas, 1)
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
	if leases {
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

// EnsureBuckets creates the buckets of BucketConfigs(o, leases) when
// absent (create) or checks that they exist, and returns them in that
// order. Existing buckets are never changed (one with fewer replicas than
// o asks for is logged). It needs STREAM.INFO on KV_<bucket>, and
// STREAM.CREATE to create them. Without create, a missing SUBSTRATE_OPS
// is returned nil rather than an error: a fleet set up before long
// operations existed keeps its inventory and heartbeats, and no-wait
// requests are refused until an administrator creates the bucket.
func EnsureBuckets(ctx context.Context, js jetstream.JetStream, o Options, create, leases bool, log zerolog.Logger) ([]jetstream.KeyValue, error) {
	o = resolveReplicas(o, js.Conn())
	var kvs []jetstream.KeyValue
	for _, cfg := range BucketConfigs(o, leases) {
		kv, err := js.KeyValue(ctx, cfg.Bucket)
		switch {
		case errors.Is(err, jetstream.ErrBucketNotFound):
			if !create && cfg.Bucket == messages.OpsBucket {
				log.Warn().Str("bucket", cfg.Bucket).Msg("KV bucket missing and worker.manage_streams is false: long operations (no-wait) are refused until an administrator creates it (worker --create-streams)")
				kvs = append(kvs, nil)
				continue
			}
			if !create {
				return nil, fmt.Errorf("KV bucket %s does not exist and worker.manage_streams is false: create it (worker --create-streams as an administrator; docs/fleet.md)", cfg.Bucket)
			}
			kv, err = js.CreateKeyValue(ctx, cfg)
			if errors.Is(err, jetstream.ErrBucketExists) {
				kv, err = js.KeyValue(ctx, cfg.Bucket)
			}
			if err != nil {
				return nil, fmt.Errorf("creating KV bucket %s: %w", cfg.Bucket, err)
			}
			log.Info().Str("bucket", cfg.Bucket).Int("replicas", cfg.Replicas).Msg("KV bucket created")
		case err != nil:
			return nil, fmt.Errorf("KV bucket %s: %w", cfg.Bucket, err)
		default:
			if st, err := kv.Status(ctx); err == nil {
				if bs, ok := st.(*jetstream.KeyValueBucketStatus); ok && bs.StreamInfo().Config.Replicas < cfg.Replicas {
					log.Warn().Str("bucket", cfg.Bucket).Int("replicas", bs.StreamInfo().Config.Replicas).Int("want", cfg.Replicas).
						Msg("existing KV bucket has fewer replicas than configured; it is not changed (nats stream edit --replicas KV_<bucket>)")
				}
			}
		}
		kvs = append(kvs, kv)
	}
	return kvs, nil
}

// ensureBuckets creates the fleet's buckets when absent (ManageStreams) or
// checks that they exist, then makes them available to the worker.
func (w *Worker) ensureBuckets(ctx context.Context) error {
	cfgs, kvs := BucketConfigs(w.opts, w.clusterWide()), map[string]jetstream.KeyValue{}
	list, err := EnsureBuckets(ctx, w.js, w.opts, w.opts.ManageStreams, w.clusterWide(), w.log)
	if err != nil {
		return err
	}
	for i, kv := range list {
		if kv != nil {
			kvs[cfgs[i].Bucket] = kv
		}
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

// keyListTimeout bounds the listing of this host's keys in a resync,
// kvWriteTimeout one record's write.
var (
	keyListTimeout = 5 * time.Second
	kvWriteTimeout = 3 * time.Second
)

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
	listed := time.Now()
	list, err := m.List(ctx)
	if err != nil {
		w.log.Debug().Str("driver", m.Driver()).Err(err).Msg("inventory resync: list failed; records kept")
		return
	}
	defer w.fleet.forget(m.Driver()+"."+w.host+".", listed)
	now := time.Now()
	live := make(map[string]bool, len(list))
	for _, inst := range list {
		key := messages.InventoryKey(m.Driver(), w.host, inst.Name)
		live[key] = true
		w.putRecord(ctx, b, m.Driver(), inst, now, listed)
	}
	w.fleet.mu.Lock()
	w.fleet.count[m.Driver()] = len(list)
	w.fleet.mu.Unlock()
	// Listing keys runs an ordered consumer; one placed on a NATS node
	// that just died can stall until its missed heartbeats are noticed.
	// Bounded, so that the loop goes on refreshing records; the deletions
	// wait for the next resync.
	lctx, lcancel := context.WithTimeout(ctx, keyListTimeout)
	defer lcancel()
	lister, err := b.inv.ListKeysFiltered(lctx, m.Driver()+"."+w.host+".*")
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
	if lctx.Err() != nil {
		w.log.Debug().Str("driver", m.Driver()).Msg("inventory resync: listing keys timed out; records of gone instances are removed at the next resync")
		return
	}
	for _, k := range gone {
		w.fleet.write(k, listed, func() {
			if err := b.inv.Delete(ctx, k); err != nil {
				w.log.Debug().Str("key", k).Err(err).Msg("inventory: deleting a record failed")
			}
		})
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
		w.putRecord(ctx, b, m.Driver(), inst, time.Now(), time.Time{})
	case drivers.CodeOf(err) == drivers.NotFound:
		w.deleteRecord(ctx, b, m.Driver(), name)
	default:
		w.log.Debug().Str("driver", m.Driver()).Str("instance", name).Err(err).Msg("inventory: get failed; record kept")
	}
}

// putRecord and deleteRecord give each KV write at most kvWriteTimeout: a
// write sent while the bucket's stream has no leader (a NATS node just
// died) gets no answer at all, and must not hold up the records after it.
//
// A resync passes the time its list was taken as listed, and its write is
// skipped when a request wrote the key since; every other write passes
// the zero time and marks the key.
func (w *Worker) putRecord(ctx context.Context, b *fleetKV, driver string, inst drivers.Instance, now, listed time.Time) {
	rec := messages.NewInventoryRecord(driver, w.host, inst, now)
	data, err := json.Marshal(rec)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, kvWriteTimeout)
	defer cancel()
	w.fleet.write(messages.InventoryKey(driver, w.host, inst.Name), listed, func() {
		if _, err := b.inv.Put(ctx, messages.InventoryKey(driver, w.host, inst.Name), data); err != nil {
			w.log.Debug().Str("driver", driver).Str("instance", inst.Name).Err(err).Msg("inventory: put failed")
		}
	})
}

func (w *Worker) deleteRecord(ctx context.Context, b *fleetKV, driver, name string) {
	ctx, cancel := context.WithTimeout(ctx, kvWriteTimeout)
	defer cancel()
	w.fleet.write(messages.InventoryKey(driver, w.host, name), time.Time{}, func() {
		if err := b.inv.Delete(ctx, messages.InventoryKey(driver, w.host, name)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			w.log.Debug().Str("driver", driver).Str("instance", name).Err(err).Msg("inventory: delete failed")
		}
	})
}

// write runs the write of key's record. With a zero listed it marks key
// as written now; otherwise (a resync) it skips the write when key was
// written after listed.
func (f *fleetState) write(key string, listed time.Time, do func()) {
	f.writes.Lock()
	defer f.writes.Unlock()
	if listed.IsZero() {
		f.touched[key] = time.Now()
	} else if t, ok := f.touched[key]; ok && t.After(listed) {
		return
	}
	do()
}

// forget drops the marks under prefix older than before: a resync that
// listed after them has seen their effect.
func (f *fleetState) forget(prefix string, before time.Time) {
	f.writes.Lock()
	defer f.writes.Unlock()
	for k, t := range f.touched {
		if strings.HasPrefix(k, prefix) && t.Before(before) {
			delete(f.touched, k)
		}
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
		w.putRecord(ctx, b, m.Driver(), *inst, time.Now(), time.Time{})
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
