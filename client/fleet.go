package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/subbus/subbus/internal/drivers"
	"github.com/subbus/subbus/messages"
)

// Owner resolution (docs/fleet.md, docs/bus.md "Finding an instance's
// owner"). A request that names an instance but no host is sent to the
// host whose worker owns the instance, found in SUBSTRATE_INVENTORY:
//
//  1. list the keys <driver>.*.<KeyToken(name)>;
//  2. one: its host; two or more: *AmbiguousError (invalid_argument)
//     listing the hosts, nothing is sent; none: the request goes to the
//     pooled subject substrate.<driver>.<op>, where one worker (not every
//     one) answers — not_found for a name no host has (reported as
//     "no instance … on any host"), but also no_worker when no worker
//     serves the driver, invalid_argument for a bad name, unsupported for
//     an op the driver lacks, and the instance itself when it is so new
//     (created behind subbus's back) that its record is not written yet
//     and that worker owns it;
//  3. send the request to substrate.<driver>.<host>.<op>; when that host's
//     worker does not answer, *OwnerUnavailableError (unavailable) naming
//     the host and its liveness from SUBSTRATE_WORKERS.
//
// A create without a host is placed (Place). Requests naming no instance
// (list, health, capabilities, network-list) keep the pooled subject.
// Without the inventory bucket (a fleet set up before it existed) every
// request keeps the pooled subject, as before.

// AmbiguousError: an instance name exists on several hosts; the request
// was not sent. It matches drivers.ErrInvalidArgument: the request must
// name the host.
type AmbiguousError struct {
	Driver, Name string
	Hosts        []string
}

func (e *AmbiguousError) Error() string {
	return fmt.Sprintf("%s instance %q exists on several hosts (%s): name one with --host", e.Driver, e.Name, strings.Join(e.Hosts, ", "))
}

// Unwrap makes errors.Is(err, drivers.ErrInvalidArgument) hold.
func (e *AmbiguousError) Unwrap() error { return drivers.ErrInvalidArgument }

// OwnerUnavailableError: the instance's owner (from the inventory) did not
// answer. Liveness is the host's state from its heartbeats ("up", "stale",
// "down", or "unknown" without a heartbeat). It matches
// drivers.ErrUnavailable.
type OwnerUnavailableError struct {
	Driver, Name, Host string
	Liveness           string
	LastSeen           time.Time
	Cause              error
}

func (e *OwnerUnavailableError) Error() string {
	s := fmt.Sprintf("%s instance %q is owned by host %s, which is unreachable (worker %s", e.Driver, e.Name, e.Host, e.Liveness)
	if !e.LastSeen.IsZero() {
		s += fmt.Sprintf(", last heartbeat %s ago", time.Since(e.LastSeen).Round(time.Second))
	}
	return s + ")"
}

// Unwrap makes errors.Is(err, drivers.ErrUnavailable) hold. The transport
// error is in Cause only: the code is unavailable, not no_worker.
func (e *OwnerUnavailableError) Unwrap() error { return drivers.ErrUnavailable }

// errNoInventory: the bucket does not exist; requests keep the pooled subject.
var errNoInventory = errors.New("no inventory bucket")

// bucket returns the KV bucket name, cached once found.
func (c *Client) bucket(ctx context.Context, name string) (jetstream.KeyValue, error) {
	c.fleetMu.Lock()
	defer c.fleetMu.Unlock()
	if kv := c.buckets[name]; kv != nil {
		return kv, nil
	}
	if c.js == nil {
		js, err := jetstream.New(c.nc)
		if err != nil {
			return nil, drivers.Wrap(drivers.Unavailable, err, "jetstream")
		}
		c.js = js
	}
	kv, err := c.js.KeyValue(ctx, name)
	switch {
	case errors.Is(err, jetstream.ErrBucketNotFound), errors.Is(err, jetstream.ErrJetStreamNotEnabled):
		return nil, errNoInventory
	case err != nil:
		return nil, drivers.Wrap(drivers.Unavailable, err, "KV bucket "+name)
	}
	if c.buckets == nil {
		c.buckets = map[string]jetstream.KeyValue{}
	}
	c.buckets[name] = kv
	return kv, nil
}

// Owners returns the hosts whose inventory holds an instance of driver
// named name, sorted.
//
// It reads them with one batched direct get of the bucket's stream (the
// last record of every key <driver>.*.<token>: one request, its replies,
// no consumer), and falls back to listing the keys with an ordered
// consumer when the server cannot (before nats-server 2.11, direct gets
// not allowed on the stream, or a credential without the permission).
func (c *Client) Owners(ctx context.Context, driver, name string) ([]string, error) {
	kv, err := c.bucket(ctx, messages.InventoryBucket)
	if err != nil {
		return nil, err
	}
	filter := driver + ".*." + messages.KeyToken(name)
	if !c.noDirect.Load() {
		hosts, err := c.ownersDirect(ctx, filter)
		if !errors.Is(err, errNoDirect) {
			return hosts, err
		}
		c.noDirect.Store(true)
	}
	entries, err := c.kvSnapshot(ctx, kv, filter, jetstream.MetaOnly())
	if err != nil {
		return nil, drivers.Wrap(drivers.Unavailable, err, "reading the inventory")
	}
	seen := map[string]bool{}
	var hosts []string
	for k := range entries {
		_, h, _, err := messages.ParseInventoryKey(k)
		if err == nil && !seen[h] {
			seen[h] = true
			hosts = append(hosts, h)
		}
	}
	sort.Strings(hosts)
	return hosts, nil
}

// kvSnapshot returns the current entries of kv's keys matching filter, by
// key (deleted keys left out). A KV watch alone is not enough while the
// fleet rewrites its keys (heartbeats every few seconds, records at each
// resync): its "initial values done" marker counts deliveries and comes
// early, and even the pending count can end the read before a key
// rewritten during it is delivered — a fleet of 1,000 hosts lost records
// both ways (docs/benchmarks.md). So the watch (every revision in stream
// order, until nothing is pending) is checked against the stream's list
// of subjects taken after it, and a key it missed is read by itself.
func (c *Client) kvSnapshot(ctx context.Context, kv jetstream.KeyValue, filter string, opts ...jetstream.WatchOpt) (map[string]jetstream.KeyValueEntry, error) {
	w, err := kv.Watch(ctx, filter, append(opts, jetstream.IncludeHistory())...)
	if err != nil {
		return nil, err
	}
	defer func() { _ = w.Stop() }()
	out := map[string]jetstream.KeyValueEntry{}
	gone := map[string]bool{}
	received := false
read:
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case e, ok := <-w.Updates():
			switch {
			case !ok:
				break read
			case e == nil && !received: // no key at all
				break read
			case e == nil:
				continue
			}
			received = true
			if e.Operation() == jetstream.KeyValuePut {
				out[e.Key()] = e
				delete(gone, e.Key())
			} else {
				delete(out, e.Key())
				gone[e.Key()] = true
			}
			if e.Delta() == 0 {
				break read
			}
		}
	}
	c.fleetMu.Lock()
	js := c.js
	c.fleetMu.Unlock()
	if js == nil {
		return out, nil
	}
	prefix := "$KV." + kv.Bucket() + "."
	st, err := js.Stream(ctx, "KV_"+kv.Bucket())
	if err != nil {
		return out, nil // no stream info (permissions): the watch's view
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(prefix+filter))
	if err != nil {
		return out, nil
	}
	for subj := range info.State.Subjects {
		k := strings.TrimPrefix(subj, prefix)
		if _, ok := out[k]; ok || gone[k] {
			continue
		}
		e, err := kv.Get(ctx, k)
		if err == nil {
			out[k] = e
		}
	}
	return out, nil
}

// errNoDirect: the server does not answer batched direct gets on the
// inventory; Owners lists keys instead.
var errNoDirect = errors.New("batched direct get not available")

// directGetSubject is the JetStream API subject of a batched direct get on
// the inventory bucket's stream.
const directGetSubject = "$JS.API.DIRECT.GET.KV_" + messages.InventoryBucket

// ownersDirect returns the hosts of the records whose keys match filter
// (driver.*.token) with one batched direct get: {"multi_last": [subject]}
// answered by one message per key (its last revision; deleted and purged
// keys carry a KV-Operation header and are skipped), then an end-of-batch
// status 204, or status 404 when no key matches. Other statuses, and a
// permissions violation on the request subject, are errNoDirect.
func (c *Client) ownersDirect(ctx context.Context, filter string) ([]string, error) {
	prefix := "$KV." + messages.InventoryBucket + "."
	body, err := json.Marshal(struct {
		MultiLast []string `json:"multi_last"`
	}{[]string{prefix + filter}})
	if err != nil {
		return nil, drivers.Wrap(drivers.Internal, err, "inventory lookup")
	}
	inbox := c.nc.NewInbox()
	sub, err := c.nc.SubscribeSync(inbox)
	if err != nil {
		return nil, drivers.Wrap(drivers.Unavailable, err, "reading the inventory")
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := c.nc.PublishRequest(directGetSubject, inbox, body); err != nil {
		return nil, drivers.Wrap(drivers.Unavailable, err, "reading the inventory")
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	var hosts []string
	seen := map[string]bool{}
	for first := true; ; first = false {
		wait := ctx
		var cancel context.CancelFunc = func() {}
		if first {
			// A credential without the permission gets no reply, only an
			// asynchronous permissions violation: check for it after a
			// short wait instead of waiting for the whole deadline.
			wait, cancel = context.WithTimeout(ctx, 250*time.Millisecond)
		}
		msg, err := sub.NextMsgWithContext(wait)
		cancel()
		if err != nil && first && ctx.Err() == nil {
			if le := c.nc.LastError(); le != nil && errors.Is(le, nats.ErrPermissionViolation) && strings.Contains(le.Error(), directGetSubject) {
				return nil, errNoDirect
			}
			msg, err = sub.NextMsgWithContext(ctx)
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, drivers.Wrap(drivers.Timeout, ctx.Err(), "reading the inventory")
			}
			return nil, drivers.Wrap(drivers.Unavailable, err, "reading the inventory")
		}
		switch status := msg.Header.Get("Status"); status {
		case "":
		case "204": // end of batch
			sort.Strings(hosts)
			return hosts, nil
		case "404": // no key matches
			return nil, nil
		default: // 408 (an older server), 503 (direct gets not allowed), 413 (too many)
			return nil, errNoDirect
		}
		switch msg.Header.Get("KV-Operation") {
		case "DEL", "PURGE":
			continue
		}
		key, ok := strings.CutPrefix(msg.Header.Get("Nats-Subject"), prefix)
		if !ok {
			continue
		}
		if _, h, _, err := messages.ParseInventoryKey(key); err == nil && !seen[h] {
			seen[h] = true
			hosts = append(hosts, h)
		}
	}
}

// Owner returns the host owning driver's instance name (see the package's
// owner resolution): not_found when no host has it, *AmbiguousError when
// several do.
func (c *Client) Owner(ctx context.Context, driver, name string) (string, error) {
	hosts, err := c.Owners(ctx, driver, name)
	if err != nil {
		return "", err
	}
	switch len(hosts) {
	case 0:
		return "", noInstance(driver, name)
	case 1:
		return hosts[0], nil
	}
	return "", &AmbiguousError{Driver: driver, Name: name, Hosts: hosts}
}

// Heartbeats returns the last heartbeat of every host, by host.
func (c *Client) Heartbeats(ctx context.Context) (map[string]messages.WorkerHeartbeat, error) {
	kv, err := c.bucket(ctx, messages.WorkersBucket)
	if err != nil {
		return nil, err
	}
	entries, err := c.kvSnapshot(ctx, kv, ">")
	if err != nil {
		if ctx.Err() != nil {
			return nil, drivers.Wrap(drivers.Timeout, err, "reading heartbeats")
		}
		return nil, drivers.Wrap(drivers.Unavailable, err, "reading heartbeats")
	}
	out := make(map[string]messages.WorkerHeartbeat, len(entries))
	for k, e := range entries {
		var hb messages.WorkerHeartbeat
		if json.Unmarshal(e.Value(), &hb) == nil {
			out[k] = hb
		}
	}
	return out, nil
}

// heartbeat returns host's last heartbeat (ok false when there is none).
func (c *Client) heartbeat(ctx context.Context, host string) (messages.WorkerHeartbeat, bool) {
	var hb messages.WorkerHeartbeat
	kv, err := c.bucket(ctx, messages.WorkersBucket)
	if err != nil {
		return hb, false
	}
	e, err := kv.Get(ctx, host)
	if err != nil || json.Unmarshal(e.Value(), &hb) != nil {
		return hb, false
	}
	return hb, true
}

// Place picks the host a create of driver without a host goes to: among
// the hosts whose worker serves driver and is up, the one with the fewest
// instances of driver at its last heartbeat, ties broken by host name. A
// single such host is therefore always chosen. No host up is
// *NoWorkerError; a create then goes to the pooled subject (a worker that
// started a moment ago has not written its first heartbeat yet).
func (c *Client) Place(ctx context.Context, driver string) (string, error) {
	hbs, err := c.Heartbeats(ctx)
	if err != nil {
		return "", err
	}
	now := time.Now()
	best, bestN := "", 0
	for _, hb := range hbs {
		if !hb.Serves(driver) || hb.Liveness(now) != messages.LivenessUp {
			continue
		}
		n := hb.Instances[driver]
		if best == "" || n < bestN || (n == bestN && hb.Host < best) {
			best, bestN = hb.Host, n
		}
	}
	if best == "" {
		return "", &NoWorkerError{Driver: driver}
	}
	return best, nil
}

// route returns the host a request goes to and the instance it was
// resolved for ("" when the caller named the host or the op names no
// instance); miss names an instance the inventory does not know (the
// request then goes to the pooled subject).
func (c *Client) route(ctx context.Context, driver, host string, op messages.Op, req any) (to, owned, miss string, err error) {
	if host != "" || c.noResolve {
		return host, "", "", nil
	}
	name := messages.InstanceName(req)
	switch {
	case op == messages.OpCreate:
		host, err = c.Place(ctx, driver)
		name = ""
	case name != "":
		host, err = c.Owner(ctx, driver, name)
	default:
		return "", "", "", nil
	}
	var nw *NoWorkerError
	switch {
	case errors.Is(err, errNoInventory), errors.As(err, &nw):
		// No fleet buckets, or no heartbeat yet (a worker that just
		// started): the pooled subject, where no_worker is reported.
		return "", "", "", nil
	case errors.Is(err, drivers.ErrNotFound):
		return "", "", name, nil
	case err != nil:
		return "", "", "", err
	}
	return host, name, "", nil
}

// missError words the answer to a request for an instance the inventory
// does not know: a not_found means no host has it (the worker that
// answered only looked at its own); no responders on the pooled subject,
// while some worker serving the driver is up, is not_found too (a fleet
// with worker.pooled_drivers serves per-host drivers on host subjects only).
func (c *Client) missError(err error, driver, miss string) error {
	if miss == "" || err == nil {
		return err
	}
	notFound := drivers.CodeOf(err) == drivers.NotFound
	var nw *NoWorkerError
	if !notFound && errors.As(err, &nw) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		hbs, _ := c.Heartbeats(ctx)
		now := time.Now()
		for _, hb := range hbs {
			if hb.Serves(driver) && hb.Liveness(now) == messages.LivenessUp {
				notFound = true
				break
			}
		}
	}
	if !notFound {
		return err
	}
	return noInstance(driver, miss)
}

// noInstance is the not_found of a name no host's inventory has, in the
// manager's wording for not_found (docs/manager.md), the fleet's account
// as the detail.
func noInstance(driver, name string) error {
	return &drivers.Error{Code: drivers.NotFound, Message: fmt.Sprintf("instance %q not found", name),
		Detail: fmt.Sprintf("%s: on no host (fleet inventory)", driver)}
}

// ownerError explains a transport error of a request sent to the owner
// of name: the owner did not answer.
func (c *Client) ownerError(err error, driver, host, name string) error {
	var nw *NoWorkerError
	var to *TimeoutError
	if name == "" || (!errors.As(err, &nw) && !errors.As(err, &to)) {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	e := &OwnerUnavailableError{Driver: driver, Name: name, Host: host, Liveness: "unknown", Cause: err}
	if hb, ok := c.heartbeat(ctx, host); ok {
		e.Liveness, e.LastSeen = hb.Liveness(time.Now()), hb.Time
	}
	return e
}

// InventoryEntry is one record of the fleet view, with its owner's
// liveness.
type InventoryEntry struct {
	messages.InventoryRecord
	// Stale is set when the owner's worker is not up: the record is what
	// the host last reported.
	Stale bool `json:"stale"`
}

// HostStatus is a host of the fleet view whose records may be out of date.
type HostStatus struct {
	Host     string    `json:"host"`
	Liveness string    `json:"liveness"` // stale, down or unknown
	LastSeen time.Time `json:"last_seen,omitzero"`
}

// Inventory returns every record of driver (all drivers when "") sorted by
// name then host, the owners' liveness applied, and the hosts holding
// records whose worker is not up.
func (c *Client) Inventory(ctx context.Context, driver string) ([]InventoryEntry, []HostStatus, error) {
	kv, err := c.bucket(ctx, messages.InventoryBucket)
	if errors.Is(err, errNoInventory) {
		return nil, nil, drivers.Errorf(drivers.Unavailable, "the fleet inventory (KV bucket %s) does not exist: no worker created it yet", messages.InventoryBucket)
	}
	if err != nil {
		return nil, nil, err
	}
	filter := ">"
	if driver != "" {
		filter = driver + ".>"
	}
	entries, err := c.kvSnapshot(ctx, kv, filter)
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil, drivers.Wrap(drivers.Timeout, err, "reading the inventory")
		}
		return nil, nil, drivers.Wrap(drivers.Unavailable, err, "reading the inventory")
	}
	recs := make([]InventoryEntry, 0, len(entries))
	for _, e := range entries {
		var r messages.InventoryRecord
		if json.Unmarshal(e.Value(), &r) == nil {
			recs = append(recs, InventoryEntry{InventoryRecord: r})
		}
	}
	hbs, err := c.Heartbeats(ctx)
	if err != nil && !errors.Is(err, errNoInventory) {
		return nil, nil, err
	}
	now := time.Now()
	bad := map[string]HostStatus{}
	for i := range recs {
		h := recs[i].Host
		hb, ok := hbs[h]
		live := "unknown"
		if ok {
			live = hb.Liveness(now)
		}
		if live != messages.LivenessUp {
			recs[i].Stale = true
			bad[h] = HostStatus{Host: h, Liveness: live, LastSeen: hb.Time}
		}
	}
	sort.Slice(recs, func(i, j int) bool {
		if recs[i].Name != recs[j].Name {
			return recs[i].Name < recs[j].Name
		}
		return recs[i].Host < recs[j].Host
	})
	var hosts []HostStatus
	for _, s := range bad {
		hosts = append(hosts, s)
	}
	sort.Slice(hosts, func(i, j int) bool { return hosts[i].Host < hosts[j].Host })
	return recs, hosts, nil
}

// fleetFields are the Client's fleet caches.
type fleetFields struct {
	fleetMu sync.Mutex
	js      jetstream.JetStream
	buckets map[string]jetstream.KeyValue
	// noResolve turns owner resolution off (WithoutOwnerResolution).
	noResolve bool
	// noDirect: the server answered no batched direct get (errNoDirect);
	// Owners lists keys.
	noDirect atomic.Bool
}

// WithoutOwnerResolution returns a copy of c whose requests without a
// host go to the pooled subject substrate.<driver>.<op>, as before the
// inventory existed (tests, benchmarks).
func (c *Client) WithoutOwnerResolution() *Client {
	return &Client{nc: c.nc, timeout: c.timeout, fleetFields: fleetFields{noResolve: true}}
}
